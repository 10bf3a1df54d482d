"""CLI glue for ``rankscope study [--preset NAME | --config FILE] --out DIR [--dry-run]``.

A plain keyword function the typer app wraps, so the CLI layer stays a thin shell.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rankscope.errors import UserError


def cmd_study(preset: str | None = None, config: str | Path | None = None, out: str | Path | None = None,
              dry_run: bool = False, quiet: bool = False) -> int:
    """Run a study from a preset (default ``demo``) or a YAML file; returns the exit code.

    The code is 1 when any job failed, but only after every other job and the report are done.
    """
    from rankscope.study.config import load_study_config
    from rankscope.study.runner import run_study

    if preset and config:
        raise UserError("give either --preset or --config, not both (a config file can start from a preset "
                        "with 'base: NAME')")
    if out is None:
        raise UserError("--out DIR is required: the study folder (re-run the same command to resume)")
    cfg = load_study_config(config if config else (preset or "demo"))
    result = run_study(cfg, out, dry_run=dry_run, progress=not quiet)
    if result.failed:
        print(f"{len(result.failed)} job(s) failed: {', '.join(j.id for j in result.failed)} "
              f"(details in {Path(out) / 'status.json'}); re-run the same command to retry them", file=sys.stderr)
        return 1
    return 0
