"""CLI glue for ``rankscope study [--preset NAME | --config FILE] --out DIR [--dry-run]``.

A plain keyword function the typer app wraps, so the CLI layer stays a thin shell.
"""

from __future__ import annotations

import sys
from pathlib import Path

from rankscope.errors import UserError


def cmd_study(preset: str | None = None, config: str | Path | None = None, out: str | Path | None = None,
              dry_run: bool = False, quiet: bool = False, gpu: str | None = None,
              gpu_check_json: str | Path | None = None, stop_signal: str | None = None,
              runs: list[str | Path] | None = None, val_text: str | None = None) -> int:
    """Run a study from a preset (default ``demo``) or a YAML file; returns the exit code.

    The code is 1 when any job failed, but only after every other job and the report are done.
    ``--dry-run`` also prints each training job's cost (rankscope/study/cost.py) on ``gpu`` (default h100),
    with the MFU measured by ``make gpu-check`` when ``gpu_check_json`` is given.
    """
    from rankscope.study.config_file import load_study_config
    from rankscope.study.runner import Stopped, run_study
    from rankscope.training.stop import parse_signals

    if preset and config:
        raise UserError("give either --preset or --config, not both (a config file can start from a preset "
                        "with 'base: NAME')")
    if out is None:
        raise UserError("--out DIR is required: the study folder (re-run the same command to resume)")
    if not dry_run and (gpu or gpu_check_json):
        raise UserError("--gpu and --gpu-check-json choose the cost estimate, which only --dry-run prints; "
                        "add --dry-run (nothing is trained then)")
    signals = parse_signals(stop_signal)
    cfg = load_study_config(config if config else (preset or "demo"))
    from rankscope.study.multiscale import MultiSizeStudy, cmd_multi_size

    if isinstance(cfg, MultiSizeStudy):  # models: [...]: one study per size, then combined
        if runs or val_text:
            raise UserError("--runs/--val-text make an analysis-only study of existing runs; a study over several "
                            "model sizes (models: in the config) trains its runs")
        return cmd_multi_size(cfg, Path(out), dry_run, quiet, gpu, gpu_check_json, signals)
    if runs or val_text:  # `--runs A B C`: an analysis-only study over existing runs (study/existing.py)
        from dataclasses import replace

        if val_text and not (runs or cfg.runs):
            raise UserError("--val-text names the validation text of an analysis-only study: give the runs too "
                            "(rankscope study --runs RUN [RUN ...] --val-text TEXT), or runs: in the config")
        cfg = replace(cfg, runs=tuple(str(r) for r in runs) if runs else cfg.runs,
                      validation=val_text or cfg.validation)
    if not dry_run:
        _check_out_folder(Path(out))
    costs = None
    if dry_run and not cfg.runs:  # computed first: a bad --gpu or JSON fails before anything is printed
        from rankscope.study.cost import design_summary, format_costs, study_costs
        from rankscope.study.parity_stage import planned_jobs

        runs = cfg.to_run_configs(Path(out))
        rows = study_costs(runs, cfg.launcher.nproc, gpu or "h100", gpu_check_json,
                           planned=planned_jobs(cfg, cfg.main_runs(runs)))
        costs = format_costs(rows) + "\n" + design_summary(cfg, rows)
    try:
        result = run_study(cfg, out, dry_run=dry_run, progress=not quiet, stop_signals=signals)
    except Stopped as stop:
        print(f"stopped by {stop.signal}: running training jobs wrote a checkpoint first; re-run the same command "
              f"to resume the study", file=sys.stderr)
        raise
    if costs:
        print(costs)
    if result.failed:
        print(f"{len(result.failed)} job(s) failed: {', '.join(j.id for j in result.failed)} "
              f"(details in {Path(out) / 'status.json'}); re-run the same command to retry them", file=sys.stderr)
        return 1
    return 0


# What a study folder holds (runner.py); anything else in a folder without study.json is someone else's.
STUDY_ENTRIES = {"study.json", "status.json", "report.html", "runs", "results", "logs", "submitit"}


def _check_out_folder(out: Path) -> None:
    """Refuse an ``--out`` that is a file or a non-empty folder that is not a study (nothing is written)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the study (a new one, or an earlier study's)")
    if not out.is_dir() or (out / "study.json").is_file():
        return
    foreign = sorted(p.name for p in out.iterdir() if p.name not in STUDY_ENTRIES)
    if foreign:
        raise UserError(f"--out {out} is a non-empty folder that is not a study (it holds {', '.join(foreign[:5])}"
                        f"{', ...' if len(foreign) > 5 else ''}); give a new folder, or the --out of an earlier "
                        f"study to resume it")
