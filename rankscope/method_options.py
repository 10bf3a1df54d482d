"""Method options (``--set KEY=VALUE``, ``method_options`` in a run or study config) checked against the types of
the method's ``Config`` fields.

Values typed on the command line arrive as strings and are converted here (``"64"`` -> 64, ``"1e-3"`` -> 0.001,
``"none"`` -> None for optional fields); values from JSON/YAML already have a type and are only checked (an int
is a valid float, a bool is never a number). A bad value is one :class:`UserError` naming the method, the key,
the value and the expected type, instead of a TypeError deep inside the training loop.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import fields
from typing import Any

from rankscope.errors import UserError

_NONE_WORDS = {"none", "null", "~", ""}
_TRUE_WORDS = {"true", "yes", "on", "1"}
_FALSE_WORDS = {"false", "no", "off", "0"}


def _describe(hint: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "none"}
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    return " or ".join(names.get(a, getattr(a, "__name__", str(a))) for a in args)


def _convert(value: Any, typ: type) -> Any:
    """``value`` as ``typ``, or raise ValueError. Strings are parsed; typed values are only checked."""
    if typ is type(None):
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS):
            return None
        raise ValueError
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE_WORDS | _FALSE_WORDS:
            return value.strip().lower() in _TRUE_WORDS
        raise ValueError
    if typ is int:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            return int(value.strip().replace("_", ""))  # "2.5" and "abc" raise
        raise ValueError
    if typ is float:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, (int, float)):
            out = value
        elif isinstance(value, str):
            text = value.strip()
            # "32" stays the int 32, as the YAML parsing of earlier versions gave: same config.json, same hash
            out = int(text) if text.lstrip("+-").isdigit() else float(text)
        else:
            raise ValueError
        if not math.isfinite(out):
            raise ValueError
        return out
    if typ is str:
        if isinstance(value, str):
            return value
        raise ValueError
    return value  # a type this checker does not know: left to the Config itself


def coerce_option(method: str, key: str, value: Any, hint: Any, default: Any = None) -> Any:
    """One option converted to the field's annotated type; a UserError names key, value and expected type."""
    union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    candidates = list(typing.get_args(hint)) if union else [hint]
    candidates.sort(key=lambda t: t is not type(None))  # "none" means None before it could mean a string
    for typ in candidates:
        try:
            return _convert(value, typ)
        except (ValueError, TypeError):
            continue
    raise UserError(
        f"method {method!r}: option {key}={value!r} is not valid: {key} must be {_describe(hint)} "
        f"(default {default!r}). Fix the value (--set {key}=VALUE or method_options in the config file); "
        f"`rankscope methods` lists every option"
    )


def coerce_method_options(method: str, config_cls: type, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with every known key converted to its field's type (unknown keys pass through unchanged:
    ``Config.for_preset`` reports them with the list of valid options)."""
    hints = typing.get_type_hints(config_cls)
    defaults = {f.name: f.default for f in fields(config_cls)}
    return {k: (coerce_option(method, k, v, hints[k], defaults[k]) if k in defaults else v)
            for k, v in options.items()}
