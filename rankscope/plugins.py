"""Name -> class registries for packages of plug-ins (methods, guides): one file each, found by scanning.

A plug-in module registers itself with ``@registry.register("name")``; ``get``/``available`` import every
module of the package first, so a new method or guide is one new file and nothing else.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, package: str, not_plugins: tuple[str, ...], hint: str = "") -> None:
        self.kind, self.package, self.not_plugins, self.hint = kind, package, not_plugins, hint
        self._classes: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def decorator(cls: type[T]) -> type[T]:
            if name in self._classes and self._classes[name] is not cls:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            cls.name = name  # type: ignore[attr-defined]
            self._classes[name] = cls
            return cls

        return decorator

    def _load_all(self) -> None:
        pkg = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(pkg.__path__):
            if info.name not in self.not_plugins:
                importlib.import_module(f"{self.package}.{info.name}")

    def available(self) -> list[str]:
        self._load_all()
        return sorted(self._classes)

    def get(self, name: str) -> type[T]:
        self._load_all()
        try:
            return self._classes[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(sorted(self._classes))}"
                           f"{self.hint}") from None
