"""Starting training jobs: a local subprocess (optionally torchrun) or a submitit job (Slurm, local, debug).

Every training job runs in its own process, so a crash, an out-of-memory kill or a bad method option ends
that job only; the study records the error and goes on with the others.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from rankscope.study.config import LauncherConfig
from rankscope.study.guard import guarded
from rankscope.study.jobs import Job, child_env

# Called with (job, state, seconds, error) when a job finishes; the runner updates status and progress.
Report = Callable[[Job, str, float, str], None]

#: Seconds a stopped study gives each training job to finish its update and write its checkpoint (SIGTERM),
#: before it is killed.
STOP_GRACE_SECONDS = 120


def tail(text: str, lines: int = 12) -> str:
    """The last lines of a log: where a training error message is."""
    return "\n".join(text.strip().splitlines()[-lines:])


def _start(job: Job, log_path: Path, env: dict[str, str]):
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115 - closed by _finish
    log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(job.command)}\n".encode())
    log.flush()
    # Same process group as the study, so Ctrl-C in a terminal or a kill of the group reaches the job; and
    # under the guard, so even a SIGKILL of the study alone ends the job: no orphan keeps writing to a run
    # folder that the next invocation resumes.
    return subprocess.Popen(guarded(list(job.command)), stdout=log, stderr=subprocess.STDOUT, env=env), log


def _finish(code: int, log, log_path: Path) -> tuple[bool, str]:
    """(ok, error); the error starts with the job's own ``error: ...`` line (e.g. a refused run-folder lock)."""
    log.close()
    if code == 0:
        return True, ""
    text = tail(log_path.read_text(errors="replace"))
    reason = next((ln for ln in reversed(text.splitlines()) if ln.startswith("error: ")), "")
    head = f"{reason[len('error: '):]} (exit code {code})" if reason else f"exit code {code}"
    return False, f"{head}; log {log_path}:\n{text}"


def thread_env(parallel: int) -> dict[str, str]:
    """Job environment; with ``parallel`` > 1 jobs share the cores, so each gets cores // parallel threads.

    Two 1-thread tiny trainings side by side move ~25 % more tokens per second than one 2-thread training
    on a 2-core CPU (small GEMMs thread poorly), which is why the CPU demo runs two at a time.
    """
    env = child_env()
    if parallel > 1:
        threads = str(max(1, (os.cpu_count() or 1) // parallel))
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    return env


def run_jobs_local(jobs: Sequence[Job], logs: Path, report: Report, before: Callable[[Job], None],
                   poll: Callable[[Job], None] | None = None, parallel: int = 1) -> None:
    """``parallel`` jobs at a time (default one: a CPU study shares its cores, a GPU job uses all local
    GPUs). One loop in this thread starts, polls (about once a second) and reaps the processes, so the
    callbacks never race."""
    env, queue, running = thread_env(parallel), list(jobs), []
    try:
        while queue or running:
            while queue and len(running) < max(1, parallel):
                job = queue.pop(0)
                before(job)
                running.append((job, *_start(job, logs / f"{job.run}.log", env), time.perf_counter()))
            with contextlib.suppress(subprocess.TimeoutExpired):  # wake as soon as the oldest job ends
                running[0][1].wait(timeout=1.0)
            for entry in list(running):
                job, proc, log, t0 = entry
                code = proc.poll()
                if code is None:
                    if poll is not None:
                        poll(job)
                    continue
                running.remove(entry)
                ok, err = _finish(code, log, logs / f"{job.run}.log")
                report(job, "done" if ok else "failed", time.perf_counter() - t0, err)
    except BaseException:  # Ctrl-C, SIGTERM or an error in the study: stop every job this loop started
        for _, proc, _, _ in running:  # SIGTERM: the job checkpoints after its update (torchrun passes it on)
            proc.terminate()
        for _, proc, _, _ in running:
            try:
                proc.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for job, proc, log, t0 in running:  # every job has exited: record each (status.json), then go on unwinding
            ok, _ = _finish(proc.returncode, log, logs / f"{job.run}.log")
            report(job, "done" if ok else "stopped", time.perf_counter() - t0, f"exit code {proc.returncode}")
        raise


def make_executor(launcher: LauncherConfig, folder: Path):
    """A submitit AutoExecutor; ``cluster=None`` picks Slurm when available, else local processes."""
    try:
        import submitit
    except ImportError:
        from rankscope.errors import UserError

        raise UserError("launcher.kind=submitit needs submitit: pip install 'rankscope[cluster]'") from None
    executor = submitit.AutoExecutor(folder=str(folder), cluster=launcher.cluster)
    params = dict(launcher.options)
    if launcher.nproc > 1:  # one task per node; torchrun inside the job starts the per-GPU processes
        params.setdefault("gpus_per_node", launcher.nproc)
        params.setdefault("tasks_per_node", 1)
    params.setdefault("name", "rankscope")
    if params:
        executor.update_parameters(**params)
    return executor


def run_jobs_submitit(jobs: Sequence[Job], launcher: LauncherConfig, folder: Path, report: Report,
                      before: Callable[[Job], None]) -> None:
    """Submit every job at once (the cluster runs them in parallel), then wait for each in order."""
    import submitit

    executor = make_executor(launcher, folder)
    submitted = []
    for job in jobs:
        fn = submitit.helpers.CommandFunction(list(job.command), verbose=False, env=child_env())
        submitted.append((job, executor.submit(fn), time.perf_counter()))
    for job, handle, t0 in submitted:
        before(job)
        try:
            handle.result()
            report(job, "done", time.perf_counter() - t0, "")
        except Exception as exc:  # noqa: BLE001 - a failed job is recorded; the others go on
            report(job, "failed", time.perf_counter() - t0,
                   f"submitit job {handle.job_id}: {tail(str(exc))} (logs in {folder})")
