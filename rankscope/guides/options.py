"""Guide options (``--set guide.KEY=VALUE``, ``guide_options`` in a config) typed and checked like method options.

Values typed on the command line arrive as strings and are converted to the type of the guide's ``Config``
field with the same rules as method options (rankscope/method_options.py); unknown keys are errors listing
the valid ones.
"""

from __future__ import annotations

import types
import typing
from dataclasses import fields, replace
from typing import Any

from rankscope.errors import UserError
from rankscope.method_options import _convert, _describe

#: Prefix of a guide option among ``--set`` items.
PREFIX = "guide."


def split_guide_options(items: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``{"rank": "8", "guide.rho": "0.1"}`` -> ({"rank": "8"}, {"rho": "0.1"})."""
    method = {k: v for k, v in items.items() if not k.startswith(PREFIX)}
    guide = {k[len(PREFIX):]: v for k, v in items.items() if k.startswith(PREFIX)}
    return method, guide


def guide_class(name: str):
    from rankscope.guides.registry import get_guide

    try:
        return get_guide(name)
    except KeyError as exc:
        raise UserError(f"{exc.args[0]}. Fix --guide (or `guide` in the config file).") from None


def coerce_guide_options(guide: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with every value converted to its field's type; unknown keys and bad values are UserErrors."""
    cls = guide_class(guide).Config
    hints = typing.get_type_hints(cls)
    defaults = {f.name: f.default for f in fields(cls)}
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise UserError(f"guide {guide!r}: unknown option(s) {unknown}; valid options: {', '.join(sorted(defaults))} "
                        f"(--set guide.KEY=VALUE; `rankscope guides` lists them)")
    return {k: _coerce(guide, k, v, hints[k], defaults[k]) for k, v in options.items()}


def _coerce(guide: str, key: str, value: Any, hint: Any, default: Any) -> Any:
    union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    candidates = sorted(typing.get_args(hint) if union else [hint], key=lambda t: t is not type(None))
    for typ in candidates:
        try:
            return _convert(value, typ)
        except (ValueError, TypeError):
            continue
    raise UserError(f"guide {guide!r}: option {key}={value!r} is not valid: {key} must be {_describe(hint)} "
                    f"(default {default!r}). Fix the value (--set guide.{key}=VALUE or guide_options in the config "
                    f"file); `rankscope guides` lists every option")


def build_guide(run_cfg):
    """The run's Guide instance, or None when ``run_cfg.guide`` is empty (then the loop is today's)."""
    if not run_cfg.guide:
        return None
    cls = guide_class(run_cfg.guide)
    try:
        config = replace(cls.Config(), **coerce_guide_options(run_cfg.guide, dict(run_cfg.guide_options)))
        return cls(config, run_cfg)
    except ValueError as exc:
        raise UserError(f"guide {run_cfg.guide!r}: {exc}") from None


def guided_run_name(name: str, guide: str) -> str:
    """The name of a guided arm next to its unguided run (``galore_s0`` -> ``galore_s0_sam``)."""
    return f"{name}_{guide}" if guide else name
