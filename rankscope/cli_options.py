"""Turn the config dataclasses into CLI options, so no flag is hand-written and none is silently dropped.

Each field of ``RunConfig`` / ``DataConfig`` / ``TrainConfig`` becomes ``--field-name``; its trailing source
comment becomes the help text. Unset flags stay ``None`` so values from ``--config FILE`` are not
overwritten by defaults.
"""

from __future__ import annotations

import inspect
import re
import typing
from dataclasses import MISSING, fields
from typing import Any, Optional

import typer

from rankscope.config import DataConfig, RunConfig, TrainConfig

SECTIONS: dict[str, type] = {"": RunConfig, "data": DataConfig, "train": TrainConfig}
SKIP = {"method_options", "guide_options", "data", "train", "typed_paths"}  # typed_paths is set from --train-files etc.


def _field_docs(cls: type) -> dict[str, str]:
    docs = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+): [^=]+=.*#\s*(.+)$", line)
        if m:
            docs[m.group(1)] = m.group(2).strip()
    return docs


def _cli_type(annotation: Any) -> tuple[Any, bool]:
    """(typer-compatible type, is_multiple)."""
    hints = {"int": int, "float": float, "str": str, "bool": bool}
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    if text.startswith("tuple["):
        inner = text[len("tuple["):].split(",")[0].strip()
        return hints.get(inner, str), True
    base = text.split("|")[0].strip()
    return hints.get(base, str), False


def config_parameters() -> list[inspect.Parameter]:
    """One keyword-only parameter per config field, annotated for typer."""
    params = []
    for section, cls in SECTIONS.items():
        docs = _field_docs(cls)
        for f in fields(cls):
            if f.name in SKIP:
                continue
            typ, multiple = _cli_type(f.type)
            default = f.default if f.default is not MISSING else (f.default_factory() if f.default_factory is not MISSING else None)  # type: ignore[misc]
            help_text = f"{docs.get(f.name, '')} (default: {default!r})"
            flag = "--" + f.name.replace("_", "-")
            if typ is bool:
                decls = [f"{flag}/--no-{f.name.replace('_', '-')}"]
            else:
                decls = [flag]
            annotation = Optional[list[typ]] if multiple else Optional[typ]  # noqa: UP007 - typer needs Optional
            option = typer.Option(None, *decls, help=help_text, rich_help_panel=section or "run", show_default=False)
            params.append(inspect.Parameter(f"{section}__{f.name}" if section else f.name,
                                            inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation))
    return params


def split_overrides(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Collect the given (non-None) config options into a nested dict like config.json."""
    nested: dict[str, Any] = {"data": {}, "train": {}}
    for key, value in kwargs.items():
        if value is None:
            continue
        if "__" in key:
            section, name = key.split("__", 1)
            nested[section][name] = tuple(value) if isinstance(value, list) else value
        else:
            nested[key] = value
    return nested


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict):
            out[key] = {**(out.get(key) or {}), **value}
        else:
            out[key] = value
    return out


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """``--set rank=64 --set projector=svd`` -> {"rank": "64", "projector": "svd"}.

    Values stay strings here: ``RunConfig`` converts each to the type of the method's Config field
    (``rankscope.method_options``), so ``rank=2.5`` or ``lr=abc`` is an error naming key, value and type.
    """
    from rankscope.errors import UserError

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--set expects KEY=VALUE (e.g. --set rank=64), got {item!r}")
        if key in out and out[key] != value.strip():
            raise UserError(f"--set {key} is given twice ({out[key]!r} and {value.strip()!r}); give it once")
        out[key] = value.strip()
    return out


def with_config_options(fn):
    """Decorator: append the generated config options to ``fn``'s signature (typer reads ``__signature__``)."""
    sig = inspect.signature(fn)
    own = [p for p in sig.parameters.values() if p.name != "options"]
    fn.__signature__ = sig.replace(parameters=own + config_parameters())
    return fn


_ = typing  # typing is needed by typer's annotation evaluation of Optional[list[...]]
