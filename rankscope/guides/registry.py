"""Guide name -> Guide class. A new guide is one file in this package with ``@register("name")``."""

from __future__ import annotations

from rankscope.guides.base import Guide
from rankscope.plugins import Registry

_GUIDES: Registry[Guide] = Registry("guide", "rankscope.guides",
                                    ("base", "registry", "options", "params", "cost", "reference"),
                                    hint=" (`rankscope guides` lists them with their options)")

register = _GUIDES.register
available = _GUIDES.available


def get_guide(name: str) -> type[Guide]:
    return _GUIDES.get(name)
