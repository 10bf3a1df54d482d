"""Method name -> Method class. A new method is one file with ``@register("name")``."""

from __future__ import annotations

import importlib
import pkgutil

from rankscope.methods.base import Method

_REGISTRY: dict[str, type[Method]] = {}


def register(name: str):
    def decorator(cls: type[Method]) -> type[Method]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method {name!r} is registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def _load_all() -> None:
    import rankscope.methods as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name not in ("base", "registry", "dense", "memory", "layers"):
            importlib.import_module(f"rankscope.methods.{info.name}")


def available() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get_method(name: str) -> type[Method]:
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; choose one of: {', '.join(sorted(_REGISTRY))}") from None
