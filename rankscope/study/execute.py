"""Running study jobs: training jobs through the launcher, in-process stages behind their stamps.

Shared by the runner (the main runs) and the parity stage (the cooled models); it imports neither, so the
two depend on it in one direction.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from pathlib import Path

from rankscope.config import RunConfig
from rankscope.study import stages
from rankscope.study.config import StudyConfig
from rankscope.study.jobs import Job, StatusBook, run_finished
from rankscope.study.launch import run_jobs_local, run_jobs_submitit
from rankscope.study.progress import StudyProgress, last_logged_step


def train_jobs(cfg: StudyConfig, out_dir: Path, runs: list[RunConfig], jobs: list[Job], book: StatusBook,
                 bar: StudyProgress) -> None:
    by_name = {r.name: r for r in runs}
    todo = []
    for job in (j for j in jobs if j.stage == "train"):
        run = by_name[job.run]
        if run_finished(run):
            book.update(job, "skipped", book.previous_seconds(job.id))
            bar.start("train", f"{job.run} (finished, skipped)", 0)  # nothing left to train
            bar.finish_job(f"{job.run} (finished, skipped)", "skipped")
        else:
            todo.append(job)
    first: dict[str, int] = {}  # run -> the step its job starts from (a resumed run or a branch: not 0)

    def before(job: Job) -> None:
        book.update(job, "running")
        run = by_name[job.run]
        first[job.run] = min(last_logged_step(run.run_dir), run.train.steps)
        bar.start("train", job.run, run.train.steps - first[job.run])

    def poll(job: Job) -> None:
        bar.advance_to(last_logged_step(by_name[job.run].run_dir) - first[job.run], job.run)

    def report(job: Job, state: str, seconds: float, error: str) -> None:
        if state == "stopped":  # the study was stopped: the job wrote a checkpoint first (or had one before)
            from rankscope.training.checkpoint import list_checkpoints

            job.checkpoint = (list_checkpoints(by_name[job.run].run_dir) or [None])[-1]
            where = (f"its last checkpoint is step {job.checkpoint}, where re-running the study resumes it"
                     if job.checkpoint is not None else "no checkpoint yet: re-running the study starts it afresh")
            error = f"stopped with the study ({error}); {where}"
        book.update(job, state, seconds, error)
        bar.finish_job(job.run, state)
        if state == "failed":
            bar.log(f"[red]train {job.run} failed[/red]: {error.splitlines()[-1] if error else ''}")

    if not todo:
        return
    if cfg.launcher.kind == "submitit":
        folder = Path(cfg.launcher.folder) if cfg.launcher.folder else out_dir / "submitit"
        run_jobs_submitit(todo, cfg.launcher, folder, report, before)
    else:
        run_jobs_local(todo, out_dir / "logs", report, before, poll, parallel=cfg.launcher.parallel)


def steps_to_train(run: RunConfig) -> int:
    """The training steps a run's job still has to do: 0 when finished, else from its last logged step (a
    stopped run resumes; a parity branch starts with its parent's log up to the branch point)."""
    if run_finished(run):
        return 0
    return max(run.train.steps - last_logged_step(run.run_dir), 0)


def study_progress(cfg: StudyConfig, runs: list, enabled: bool, train: bool = True) -> StudyProgress:
    """The progress display with the study's plan: with ``train``, the training still to do (the runs and the
    parity models planned before training) and the study's training steps as the unit of the later stages;
    without (an analysis-only study of existing runs), the later stages alone. With parity, the parity
    models' later stages too: at most one model per main run, so their share is main runs / runs."""
    from rankscope.study import parity_stage

    units, base = 0, 1
    if train:
        planned = parity_stage.planned_jobs(cfg, cfg.main_runs(runs)) if cfg.parity.enabled else []
        units = sum(steps_to_train(r) for r in runs) + sum(0 if run_finished(r) else n for r, n in planned)
        base = sum(r.train.steps for r in runs)
    share = len(cfg.main_runs(runs)) / len(runs) if runs and cfg.parity.enabled else 0.0
    return StudyProgress(enabled, units, stage_base=base, parity_share=share)


def run_stage(job: Job, stamp: stages.Stamp | None, work: Callable[[], object], book: StatusBook,
               out_dir: Path) -> None:
    """Run one in-process stage unless its stamp is fresh; any exception fails this stage only (a stop of the
    study marks it stopped and goes on stopping)."""
    if stamp is not None and stamp.fresh():
        book.update(job, "skipped", book.previous_seconds(job.id))
        return
    book.update(job, "running")
    t0 = time.perf_counter()
    try:
        if stamp is not None:
            stamp.clear()  # outputs are about to change: never leave an old key beside new files
        work()
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C or the study's stop: not a failure, and not running either
        book.update(job, "stopped", time.perf_counter() - t0, "stopped with the study; re-running the study runs "
                    "it again")
        raise
    except Exception as exc:  # noqa: BLE001 - a failed stage is recorded; the report lists it
        log = out_dir / "logs" / f"{job.stage}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(traceback.format_exc())
        book.update(job, "failed", time.perf_counter() - t0, f"{type(exc).__name__}: {exc} (traceback: {log})")
        return
    if stamp is not None:
        stamp.save()
    book.update(job, "done", time.perf_counter() - t0)
