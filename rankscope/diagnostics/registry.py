"""Diagnostic name -> function. Adding a metric = one function + one ``@diagnostic`` line.

A diagnostic is a pure function of checkpoints: it receives an :class:`AnalysisContext` (which checkpoint(s)
to look at, how to load them, the fixed evaluation batch) and its settings, and returns table rows
(:class:`rankscope.diagnostics.table.Row`). It never mutates a model it did not build itself.

Kinds decide what the driver passes in ``ctx``:
* ``"checkpoint"``: one checkpoint of one run (``ctx.run``, ``ctx.step``).
* ``"consecutive"``: two consecutive checkpoints of one run (``ctx.step`` = earlier, ``ctx.step_b`` = later).
* ``"reference"``: one checkpoint and the full-rank run's checkpoint at the same step (``ctx.reference``).
* ``"pairwise"``: every pair of runs at a shared step (``ctx.run``, ``ctx.other``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rankscope.diagnostics.table import Row

KINDS = ("checkpoint", "consecutive", "reference", "pairwise")


@dataclass(frozen=True)
class Diagnostic:
    name: str  # group name, e.g. "spectra"
    kind: str  # one of KINDS
    metrics: tuple[str, ...]  # metric ids this group emits (e.g. "w_erank")
    fn: Callable[..., list[Row]]
    defaults: dict[str, Any] = field(default_factory=dict)  # default settings (become part of the cache key)
    axis: str = ""  # landscape | interpolation | spectra | activations | extra


_REGISTRY: dict[str, Diagnostic] = {}

#: Other names of one quantity. The cross-method interpolation barrier is ``imib`` in the authors' code and
#: IMBH in summaries of the paper: the same number, stored as ``imib*`` and accepted under either name.
ALIASES: dict[str, str] = {"imbh": "imib", "imbh_rel": "imib_rel", "imbh_lin": "imib_lin",
                           "imbh_curve": "imib_curve"}


def canonical_metric(name: str) -> str:
    """The stored metric id of ``name`` (``imbh`` -> ``imib``; any other name unchanged, case kept)."""
    return ALIASES.get(str(name).lower(), name)


def display_name(metric: str) -> str:
    """How tables and the report show a metric: ``imib`` as ``imib (IMBH)``, so both names are visible."""
    aka = [a for a, m in ALIASES.items() if m == metric]
    return f"{metric} (IMBH{aka[0][4:]})" if aka else metric


def diagnostic(name: str, *, kind: str, metrics: tuple[str, ...], axis: str, **defaults: Any):
    """Register ``fn(ctx, **settings) -> list[Row]`` under ``name``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")

    def decorator(fn: Callable[..., list[Row]]) -> Callable[..., list[Row]]:
        if name in _REGISTRY:
            raise ValueError(f"diagnostic {name!r} is registered twice")
        _REGISTRY[name] = Diagnostic(name, kind, tuple(metrics), fn, dict(defaults), axis)
        return fn

    return decorator


def _load_all() -> None:
    import importlib
    import pkgutil

    import rankscope.diagnostics as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name not in ("registry", "table", "context", "analyze", "cache"):
            importlib.import_module(f"rankscope.diagnostics.{info.name}")


def all_diagnostics() -> dict[str, Diagnostic]:
    _load_all()
    return dict(_REGISTRY)


def group_of_metric(metric: str) -> Diagnostic:
    """The diagnostic group that emits ``metric`` (e.g. ``w_erank`` -> spectra; ``imbh`` -> imib)."""
    metric = canonical_metric(metric)
    for diag in all_diagnostics().values():
        if metric in diag.metrics or diag.name == metric:
            return diag
    known = sorted({m for d in _REGISTRY.values() for m in d.metrics} | set(_REGISTRY) | set(ALIASES))
    raise KeyError(f"unknown metric {metric!r}; known metrics and groups: {', '.join(known)}")
