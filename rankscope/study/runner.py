"""``run_study``: train every method × seed, then analyze, eval, predict and report, resumably.

    from rankscope.study import load_study_config, run_study
    run_study(load_study_config("smoke"), "out/smoke")

Study folder (the report's contract):

    <out>/study.json  status.json  report.html
    <out>/runs/<method>_s<seed>.json    the run config each training job is started with
    <out>/runs/<method>_s<seed>/        run folders
    <out>/logs/                         one log per training job and per failed stage
    <out>/results/                      diagnostics.parquet, downstream[_items].parquet, prediction.*, timings.json

Re-running skips finished runs, resumes interrupted ones from their last checkpoint (bit-exact), and
repeats a later stage only when its inputs changed. A failing job is recorded and the rest go on; the
caller gets ``StudyResult.failed`` to set the exit code once everything else is done.
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rankscope.config import RunConfig
from rankscope.study import parity_stage, stages
from rankscope.study.config import StudyConfig
from rankscope.study.execute import run_stage, study_progress, train_jobs
from rankscope.study.guide_arms import describe_arms, needs_reference
from rankscope.study.jobs import STAGES, Job, StatusBook, train_command, write_json_atomic
from rankscope.study.progress import StudyProgress


@dataclass
class StudyResult:
    out_dir: Path
    jobs: list[Job]
    timings: dict[str, float] = field(default_factory=dict)
    report: Path | None = None

    @property
    def failed(self) -> list[Job]:
        return [j for j in self.jobs if j.state == "failed"]


def plan(cfg: StudyConfig, out_dir: Path) -> tuple[list[RunConfig], list[Job]]:
    """The study's runs and jobs, in execution order (training first, one job per run)."""
    runs = cfg.to_run_configs(out_dir)
    for r in runs:  # fail fast on a bad method option, not hours later when that job starts
        r.build_method()
    jobs = [Job(f"train:{r.name}", "train", r.name, train_command(_config_path(out_dir, r), cfg.launcher))
            for r in runs]
    jobs += [Job(stage, stage) for stage in STAGES[1:]]
    return runs, jobs


def _config_path(out_dir: Path, run: RunConfig) -> Path:
    return (out_dir / "runs" / f"{run.name}.json").resolve()


def describe_plan(cfg: StudyConfig, out_dir: Path, jobs: list[Job]) -> str:
    """What ``--dry-run`` prints: every job and the exact command of each training job."""
    results = out_dir / "results"
    a, d = cfg.analysis, cfg.downstream
    in_process = {
        "analyze": f"in process: rankscope.diagnostics.analyze.analyze(<{cfg.name} runs>, metrics="
                   f"{list(a.metrics) if a.metrics else 'headline'}, n_tokens={a.n_tokens}, out={results})",
        "eval": f"in process: rankscope.downstream.evaluate.evaluate_runs(<{cfg.name} runs>, steps='final', "
                f"max_items={d.max_items}, out={results / 'downstream'})",
        "ood": (f"in process: rankscope.downstream.ppl.ppl_runs(<{cfg.name} runs>, texts=val + ood.texts"
                f"{' + shift' if cfg.data.holdout_source else ''}) -> {results / 'heldout.parquet'}"
                if cfg.ood.enabled(cfg.data) else "not configured (study config: ood)"),
        "finetune": (f"in process: rankscope.downstream.finetune.finetune_runs(<{cfg.name} runs>, "
                     f"{cfg.ood.finetune}) -> {results / 'finetune.parquet'}"
                     if cfg.ood.finetune is not None else "not configured (study config: ood.finetune)"),
        "predict": (f"skipped, {stages.predict_not_applicable(len(cfg.methods) * len(cfg.seeds))}"
                    if stages.predict_not_applicable(len(cfg.methods) * len(cfg.seeds)) else
                    f"in process: rankscope.downstream.predict.predict_from_tables(...) -> {results}/prediction.json"),
        "report": f"in process: rankscope.report.render.render_report({out_dir}) -> {out_dir / 'report.html'}",
    }
    lines = [f"study {cfg.name} ({cfg.preset or 'custom'}): {len(cfg.methods)} method(s) × {len(cfg.seeds)} "
             f"seed(s) on model {cfg.model}, {cfg.steps} steps, checkpoints {list(cfg.save_steps)}, "
             f"launcher {cfg.launcher.kind}"]
    if cfg.siblings.data_seeds:
        s = cfg.siblings
        lines.append(f"siblings: {', '.join(s.methods)} × data seeds {list(s.data_seeds)} per init seed "
                     f"({len(s.methods) * len(s.data_seeds) * len(cfg.seeds)} run(s), checkpoints: {s.checkpoints}"
                     f"{', also eval/ood/finetune' if s.evaluate else ''}): the within-method nulls")
    else:
        lines.append("siblings: none (every finding will say 'no null: run siblings')")
    for job in jobs:
        lines.append(job.describe() + (f"\n    {in_process[job.stage]}" if job.stage in in_process else ""))
    lines += describe_arms([rec for _, rec in cfg.guide_arms(cfg.to_run_configs(out_dir))])
    lines += _parity_plan(cfg, out_dir)
    return "\n".join(lines)


def _parity_plan(cfg: StudyConfig, out_dir: Path) -> list[str]:
    """The parity models the study will train once the main runs finish (their folders do not exist yet)."""
    from rankscope.study.parity_stage import planned_jobs

    if cfg.parity.protocol == "off":
        return []
    planned = planned_jobs(cfg, cfg.main_runs(cfg.to_run_configs(out_dir)))
    head = (f"parity ({cfg.parity.protocol}, target {cfg.parity.target}): after the main runs, "
            f"{len(planned)} cooled model(s) in {out_dir / 'parity_runs'}, plus at most one per run at a "
            f"predicted crossing; then analyze/eval/ood/finetune/predict on the parity models")
    return [head] + [f"  train {run.name}: {n} update(s)" + (f" (decay from step {run.train.steps - n} of its parent)"
                                                          if cfg.parity.protocol == "wsd-branches" else "")
                     for run, n in planned]


def run_study(cfg: StudyConfig, out_dir: str | Path, dry_run: bool = False, progress: bool = True,
              stop_signals: tuple[int, ...] = ()) -> StudyResult:
    """Run (or with ``dry_run`` only print) the whole study into ``out_dir``.

    SIGTERM and ``stop_signals`` raise :class:`Stopped` (exit 143): the running training jobs get SIGTERM,
    finish their update and checkpoint, and a re-run resumes them.
    """
    if cfg.runs:  # analysis-only: the runs exist already (rankscope/study/existing.py)
        from rankscope.study.existing import run_existing

        return run_existing(cfg, out_dir, dry_run=dry_run, progress=progress, stop_signals=stop_signals)
    out_dir = Path(out_dir)
    runs, jobs = plan(cfg, out_dir)
    if dry_run:
        print(describe_plan(cfg, out_dir, jobs))
        return StudyResult(out_dir, jobs)
    results = out_dir / "results"
    results.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "study.json", cfg.to_dict())
    for r in runs:
        write_json_atomic(_config_path(out_dir, r), r.to_dict())
    book = StatusBook(out_dir / "status.json", jobs)
    book.write()
    with _terminate_as_exit(stop_signals), study_progress(cfg, runs, progress) as bar:
        t0 = time.perf_counter()
        waiting = {r.name for r in runs if needs_reference(r)}  # guided arms that read a study run as reference
        train_jobs(cfg, out_dir, runs, [j for j in jobs if j.run not in waiting], book, bar)
        train_jobs(cfg, out_dir, runs, [j for j in jobs if j.run in waiting], book, bar)
        # siblings get no parity models; their final perplexity enters the target's seed mean
        parity_models = parity_stage.train_and_choose(cfg, out_dir, runs, book, bar)  # baselines; parity.*
        ran = any(j.stage == "train" and j.state in ("done", "failed") for j in book.jobs.values())
        train_wall = time.perf_counter() - t0 if ran else None
        finished = [r for r in runs if book.jobs[f"train:{r.name}"].state in ("done", "skipped")]
        parity_stage.later_stages(cfg, out_dir, parity_models, book, bar)
        later_stages(cfg, out_dir, finished, book, bar, train_wall)
    return finish(out_dir, book, train_wall, progress)


def finish(out_dir: Path, book: StatusBook, train_wall: float | None, progress: bool) -> StudyResult:
    """The study's result (timings written, the report if it was made) and its closing lines."""
    result = StudyResult(out_dir, list(book.jobs.values()), _write_timings(out_dir / "results", book, train_wall))
    report = out_dir / "report.html"
    result.report = report if report.is_file() and book.jobs["report"].state == "done" else None
    if progress:
        for job in result.failed:
            print(f"FAILED {job.id}: {job.error.splitlines()[0] if job.error else ''}")
        print(f"report: {result.report}" if result.report else "report: not written (see status.json)")
    return result


class Stopped(SystemExit):
    """The study was asked to stop (SIGTERM or a --stop-signal): exit 143 once its jobs have checkpointed."""

    def __init__(self, signum: int) -> None:
        super().__init__(143)
        self.signal = signal.Signals(signum).name


@contextlib.contextmanager
def _terminate_as_exit(extra: tuple[int, ...] = ()):
    """SIGTERM (e.g. a scheduler or `kill`) unwinds like Ctrl-C, so the running job is stopped, not orphaned:
    run_jobs_local passes SIGTERM on to it, and a training job then checkpoints before it exits."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Stopped(signum)

    sigs = tuple(dict.fromkeys((int(signal.SIGTERM), *extra)))
    old = {sig: signal.signal(sig, handler) for sig in sigs}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def later_stages(cfg: StudyConfig, out_dir: Path, runs: list[RunConfig], book: StatusBook,
                  bar: StudyProgress, train_wall: float | None = None) -> None:
    results = out_dir / "results"
    not_trained = [j.run for j in book.jobs.values() if j.stage == "train" and j.state == "failed"]
    everything, mains = runs, cfg.main_runs(runs)  # analyze sees the siblings; the others only if asked
    scored = everything if cfg.siblings.evaluate else mains
    steps: list[tuple[str, Callable[[], stages.Stamp | None], Callable[[], object], tuple[str, ...]]] = [
        ("analyze", lambda: stages.analysis_stamp(cfg, everything, results),
         lambda: stages.run_analyze(cfg, everything, results, progress=False), ()),
        ("eval", lambda: stages.eval_stamp(cfg, scored, results), lambda: stages.run_eval(cfg, scored, results), ()),
        ("ood", lambda: stages.ood_stamp(cfg, scored, results), lambda: stages.run_ood(cfg, scored, results), ()),
        ("finetune", lambda: stages.finetune_stamp(cfg, scored, results),
         lambda: stages.run_finetune(cfg, scored, results), ()),
        ("predict", lambda: stages.predict_stamp(cfg, mains, results), lambda: stages.run_predict(cfg, mains, results),
         ("analyze", "eval")),
    ]
    off = {"ood": not cfg.ood.enabled(cfg.data), "finetune": cfg.ood.finetune is None}
    for stage, make_stamp, work, needs in steps:
        job = book.jobs[stage]
        what = f"{len(runs)} run(s)"
        bar.start(stage, what, bar.stage_units(stage))
        if off.get(stage):
            book.update(job, "skipped", 0.0, "not configured (study config: ood)")
            bar.finish_job(what, job.state)
            continue
        if stage == "predict" and runs and stages.predict_not_applicable(len(mains)):  # siblings are not fitted
            stages.clear_predict(results)
            book.update(job, "skipped", 0.0, stages.predict_not_applicable(len(mains)))
            bar.finish_job(what, job.state)
            continue
        blocked = [n for n in needs if book.jobs[n].state not in ("done", "skipped")]
        if not runs or blocked:
            why = f"needs {', '.join(blocked)}, which failed" if blocked else "no run finished training"
            book.update(job, "failed", 0.0, f"not run: {why}")
        else:
            run_stage(job, make_stamp(), work, book, out_dir)
        bar.finish_job(what, job.state)
    if not_trained:
        note = f"runs {', '.join(not_trained)} failed to train and are left out"
        for stage in ("analyze", "eval", "predict"):
            job = book.jobs[stage]
            if job.state in ("done", "skipped") and note not in job.error:
                book.update(job, job.state, None, note)
    _write_timings(results, book, train_wall)
    bar.start("report", "report.html", bar.stage_units("report"))
    run_stage(book.jobs["report"], None, lambda: stages.run_report(out_dir), book, out_dir)
    bar.finish_job("report.html", book.jobs["report"].state)


def _write_timings(results: Path, book: StatusBook, train_wall: float | None = None) -> dict[str, float]:
    """Wall seconds per stage of the work behind the current results (skipped jobs keep their earlier cost).

    ``train`` is the stage's wall time; with ``launcher.parallel`` > 1 it is less than ``train_jobs``, the
    sum of the jobs' own times. A re-run that trained nothing keeps the recorded wall time.
    """
    path = results / "timings.json"
    timings = book.stage_seconds()
    jobs_sum = timings["train"]
    if train_wall is None:
        try:
            train_wall = float(json.loads(path.read_text()).get("train", jobs_sum))
        except (OSError, ValueError):
            train_wall = jobs_sum
    timings["train"] = round(min(train_wall, jobs_sum) if jobs_sum else train_wall, 3)
    timings["total"] = round(sum(timings.values()), 3)
    timings["train_jobs"] = jobs_sum
    write_json_atomic(path, timings)
    return timings
