"""A study over several model sizes: ``models: [smoke, tiny]`` (or ``[60m, 130m, 350m]``) in a study config.

Each size is an ordinary one-size study in ``<out>/<size>/`` (training, parity per size, analysis with pairs only
within the size, eval, predict, its own report), built from the shared config plus that size's ``sizes.<size>``
block; then the sizes are combined in ``<out>`` exactly as ``rankscope report A B C --out <out>`` combines
finished single-size folders (``rankscope/report/combine.py``): stacked tables, the pooled predictor with
leave-one-size-out CV, and the report across sizes.

    models: [60m, 130m, 350m]        # model presets, any order (the report orders them by parameters)
    sizes:                           # per-size options, deep-merged over the shared ones
      350m: {steps: 60000, micro_batch_size: 64}

Choices: learning rates and method hyperparameters (ranks, ...) are the methods' study defaults for each size
(PRESET_DEFAULTS, as in a one-size study with lr = -1); steps, batch and evaluation cadence per size are written in
the preset's ``sizes`` block (``paper``: the paper's 10K/20K/60K steps). ``methods``, ``seeds``, ``siblings`` and
``data`` are shared: a size block may not change them (the sizes must stay comparable and combinable). Each size is a
separate group of jobs: a size that fails does not stop the others, and re-running resumes every size.
"""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rankscope.errors import UserError

SHARED = ("methods", "seeds", "siblings", "data")  # one value for every size
NOT_PER_SIZE = (*SHARED, "models", "sizes", "model", "name", "runs")


@dataclass(frozen=True)
class MultiSizeStudy:
    """The sizes of one study, smallest first, each a complete one-size StudyConfig."""

    name: str
    configs: dict[str, Any]  # size -> StudyConfig
    preset: str = ""

    @property
    def sizes(self) -> list[str]:
        return list(self.configs)


def _models(value: Any, source: str) -> list[str]:
    from rankscope.models.presets import PRESETS

    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise UserError(f"{source}: models must be a non-empty list of model sizes, e.g. models: [smoke, tiny]")
    seen: list[str] = []
    for size in map(str, value):
        if size not in PRESETS:
            raise UserError(f"{source}: models: unknown size {size!r}; choose from: {', '.join(PRESETS)}")
        if size in seen:
            raise UserError(f"{source}: models: size {size!r} is given twice; list each size once")
        seen.append(size)
    return seen


def multi_size_from_dict(d: dict[str, Any], source: str = "study config") -> MultiSizeStudy:
    """Validate ``models`` and ``sizes`` and build every size's StudyConfig (all checked before anything runs)."""
    from rankscope.report.scale_findings import order_sizes
    from rankscope.study.config_file import _merge, study_from_dict

    d = dict(d)
    models = _models(d.pop("models"), source)
    per_size = d.pop("sizes", None) or {}
    if not isinstance(per_size, dict):
        raise UserError(f"{source}: sizes must map a size to its options, e.g. sizes: {{tiny: {{steps: 120}}}}")
    for size, opts in per_size.items():
        if str(size) not in models:
            raise UserError(f"{source}: sizes.{size}: per-size options for a size not in the study (models: "
                            f"{', '.join(models)}); add {size} to models or drop sizes.{size}")
        if not isinstance(opts, dict):
            raise UserError(f"{source}: sizes.{size} must be a mapping of study fields, got {type(opts).__name__}")
        bad = sorted(set(opts) & set(NOT_PER_SIZE))
        if bad:
            raise UserError(f"{source}: sizes.{size}.{bad[0]} cannot differ between sizes ({', '.join(SHARED)} are "
                            "shared so that the sizes stay comparable); set it at the top level")
    d.pop("model", None)  # models replaces model (a base preset's model)
    if d.get("runs"):
        raise UserError(f"{source}: models (several sizes) and runs (existing runs) cannot be combined")
    name = str(d.get("name") or "study")
    configs = {}
    for size in order_sizes(models):
        one = _merge(d, per_size.get(size) or {})
        one.update(model=size, name=f"{name}-{size}")
        configs[size] = study_from_dict(one, source=f"{source} (size {size})")
    return MultiSizeStudy(name, configs, str(d.get("preset") or ""))


@dataclass
class MultiSizeResult:
    out_dir: Path
    failed_jobs: list[str] = field(default_factory=list)  # "<size>/<job id>"
    failed_sizes: dict[str, str] = field(default_factory=dict)  # size -> why the size itself broke
    report: Path | None = None

    @property
    def failed(self) -> list[str]:
        return self.failed_jobs + [f"{s} (whole size)" for s in self.failed_sizes]


STUDY_ENTRIES = {"study.json", "report.html", "results", "logs"}


def check_out_folder(multi: MultiSizeStudy, out: Path) -> None:
    """Refuse an ``--out`` that is a file or a non-empty folder that is not this kind of study."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the study (a new one, or an earlier study's)")
    if not out.is_dir() or (out / "study.json").is_file():
        return
    foreign = sorted(p.name for p in out.iterdir() if p.name not in STUDY_ENTRIES | set(multi.sizes))
    if foreign:
        raise UserError(f"--out {out} is a non-empty folder that is not a study (it holds {', '.join(foreign[:5])}); "
                        "give a new folder, or the --out of an earlier study to resume it")


def run_multi_size(multi: MultiSizeStudy, out_dir: str | Path, dry_run: bool = False, progress: bool = True,
                   stop_signals: tuple[int, ...] = ()) -> MultiSizeResult:
    """Every size's study in ``<out>/<size>``, one after another, then the combined folder and report in ``<out>``."""
    from rankscope.study.runner import Stopped, run_study

    out = Path(out_dir)
    result = MultiSizeResult(out)
    if dry_run:
        print(f"study {multi.name} over {len(multi.sizes)} model sizes: {', '.join(multi.sizes)}; each size is a "
              f"study in {out}/<size>, then the sizes are combined in {out} (stacked tables, pooled predictor "
              "with leave-one-size-out CV, report across sizes)")
    for size, cfg in multi.configs.items():
        if dry_run:
            print(f"\n=== size {size} ===")
        try:
            res = run_study(cfg, out / size, dry_run=dry_run, progress=progress, stop_signals=stop_signals)
        except Stopped:
            raise
        except Exception as exc:  # noqa: BLE001 - one broken size must not stop the others
            result.failed_sizes[size] = f"{type(exc).__name__}: {exc}"
            log = out / "logs" / f"{size}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(traceback.format_exc())
            print(f"size {size} failed: {exc} (details in {log}); the other sizes go on", file=sys.stderr)
            continue
        result.failed_jobs += [f"{size}/{j.id}" for j in res.failed]
    if dry_run:
        return result
    done = [out / s for s in multi.sizes if (out / s / "study.json").is_file() and (out / s / "results").is_dir()]
    if len(done) < 2:
        print(f"only {len(done)} size(s) produced results: no combined report (re-run to retry)", file=sys.stderr)
        return result
    from rankscope.report.combine import combine_studies
    from rankscope.report.render import render_report

    combine_studies(done, out, multi.name)
    result.report = render_report(out)
    if progress:
        print(f"report across sizes: {result.report}")
    return result


def dry_run_costs(multi: MultiSizeStudy, out: Path, gpu: str, gpu_check_json: str | Path | None) -> str:
    """Each size's cost table (its main runs, siblings and planned parity models), then the total over sizes."""
    from rankscope.study.cost import design_summary, format_costs, study_costs
    from rankscope.study.parity_stage import planned_jobs

    blocks, totals = [], []
    for size, cfg in multi.configs.items():
        runs = cfg.to_run_configs(out / size)
        rows = study_costs(runs, cfg.launcher.nproc, gpu, gpu_check_json,
                           planned=planned_jobs(cfg, cfg.main_runs(runs)))
        gpu_h, wall_h = sum(r["gpu_hours"] for r in rows), sum(r["wall_hours"] for r in rows)
        totals.append((size, len(rows), sum(r["tokens"] for r in rows), gpu_h, wall_h))
        blocks.append(f"--- size {size}: {cfg.steps} steps, {cfg.accumulation() * cfg.micro_batch_size * cfg.launcher.nproc}"
                      f" sequences per update ---\n{format_costs(rows)}\n{design_summary(cfg, rows)}")
    lines = [f"cost over {len(totals)} sizes:"]
    lines += [f"  {size:<6} {n:>4} training job(s), {tok / 1e9:,.2f}B tokens, {g:,.1f} GPU-h, {w:,.1f} wall-h"
              for size, n, tok, g, w in totals]
    lines.append(f"  total  {sum(t[1] for t in totals):>4} training job(s), {sum(t[2] for t in totals) / 1e9:,.2f}B "
                 f"tokens, {sum(t[3] for t in totals):,.1f} GPU-h, {sum(t[4] for t in totals):,.1f} wall-h")
    return "\n\n".join(blocks) + "\n\n" + "\n".join(lines)


def cmd_multi_size(multi: MultiSizeStudy, out: Path, dry_run: bool, quiet: bool, gpu: str | None,
                   gpu_check_json: str | Path | None, stop_signals: tuple[int, ...]) -> int:
    """``rankscope study`` for a config with ``models``; the exit code (1 when a job or a size failed)."""
    from rankscope.study.runner import Stopped

    if not dry_run:
        check_out_folder(multi, out)
    costs = dry_run_costs(multi, out, gpu or "h100", gpu_check_json) if dry_run else ""
    try:
        result = run_multi_size(multi, out, dry_run=dry_run, progress=not quiet, stop_signals=stop_signals)
    except Stopped as stop:
        print(f"stopped by {stop.signal}: running training jobs wrote a checkpoint first; re-run the same command "
              "to resume every size", file=sys.stderr)
        raise
    if costs:
        print("\n" + costs)
    if result.failed:
        print(f"{len(result.failed)} job(s) failed: {', '.join(result.failed)} (details in each size's "
              f"status.json under {out}); re-run the same command to retry them", file=sys.stderr)
        return 1
    return 0
