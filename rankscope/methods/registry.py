"""Method name -> Method class. A new method is one file with ``@register("name")``."""

from __future__ import annotations

from rankscope.methods.base import Method
from rankscope.plugins import Registry

_METHODS: Registry[Method] = Registry("method", "rankscope.methods",
                                      ("base", "registry", "dense", "memory", "layers"))

register = _METHODS.register
available = _METHODS.available


def get_method(name: str) -> type[Method]:
    return _METHODS.get(name)
