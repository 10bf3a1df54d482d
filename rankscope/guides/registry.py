"""Guide name -> Guide class. A new guide is one file in this package with ``@register("name")``."""

from __future__ import annotations

import importlib
import pkgutil

from rankscope.guides.base import Guide

_REGISTRY: dict[str, type[Guide]] = {}
_NOT_GUIDES = ("base", "registry", "options", "params", "cost", "reference")


def register(name: str):
    def decorator(cls: type[Guide]) -> type[Guide]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"guide {name!r} is registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def _load_all() -> None:
    import rankscope.guides as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name not in _NOT_GUIDES:
            importlib.import_module(f"rankscope.guides.{info.name}")


def available() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get_guide(name: str) -> type[Guide]:
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown guide {name!r}; choose one of: {', '.join(sorted(_REGISTRY))} "
                       f"(`rankscope guides` lists them with their options)") from None
