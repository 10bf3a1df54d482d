"""Runs, whoever trained them: ``open_run`` returns the one :class:`Run` interface for a rankscope run folder
or for external Hugging Face checkpoints (docs/external_runs.md)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from rankscope.runs.base import Run
from rankscope.runs.external import ExternalOptions, ExternalRun, parse_labels
from rankscope.runs.native import RankscopeRun

__all__ = ["ExternalOptions", "ExternalRun", "RankscopeRun", "Run", "is_rankscope_run", "open_run", "open_runs",
           "parse_labels"]


def is_rankscope_run(path: Path) -> bool:
    """A folder ``rankscope train`` wrote: its config.json is a RunConfig (no HF ``model_type``)."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return True  # let the run-folder reader report the damaged file
    return isinstance(data, dict) and "model_type" not in data


def open_run(path: str | Path | Run, options: ExternalOptions | None = None) -> Run:
    if isinstance(path, Run):
        return path
    path = Path(path)
    if is_rankscope_run(path):
        return RankscopeRun.open(path)
    return ExternalRun.open(path, options)


def open_runs(paths: Sequence[str | Path | Run], options: ExternalOptions | None = None) -> list[Run]:
    """Every run opened (and so checked) before a command computes or writes anything."""
    return [open_run(p, options) for p in paths]
