"""Study jobs die with the study: SIGKILL or Ctrl-C of the study process leaves no training job running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers_fs import RANKSCOPE, cli_env

from rankscope.cli import INTERRUPTED

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")


def descendants(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (from /proc/<pid>/task/*/children)."""
    out: set[int] = set()
    todo = [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            todo += [k for k in kids if k not in out]
            out.update(kids)
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has exited (the container's init may never reap it)


def wait_until(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"exited early ({proc.returncode}) while waiting for {what}")
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


PARENT = """
import subprocess, sys, time
from rankscope.study.guard import guarded
subprocess.Popen(guarded([sys.executable, "-c", "import time; time.sleep(600)"]))
print("started", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("mode", ["prctl", "poll"])
def test_guarded_child_dies_when_its_parent_is_killed(mode):
    if mode == "prctl" and not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux only")
    env = cli_env(RANKSCOPE_GUARD=mode)
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert parent.stdout.readline().strip() == "started"
        # prctl: the guard exec'd into the sleeper (one process); poll: the guard and its child
        want = 1 if mode == "prctl" else 2
        wait_until(lambda: len(descendants(parent.pid)) >= want, 30, "the guarded child", parent)
        time.sleep(0.3)  # the guard has called prctl / started polling before exec'ing or spawning
        kids = descendants(parent.pid)
        assert kids and all(alive(k) for k in kids)
        parent.kill()
        parent.wait()
        wait_until(lambda: not any(alive(k) for k in kids), 20, f"children {kids} to die")
    finally:
        for k in descendants(parent.pid):
            os.kill(k, signal.SIGKILL)
        parent.kill()


def _long_study(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    cfg = tmp_path / "study.yaml"
    cfg.write_text("base: smoke\nmethods: [full_rank]\nsteps: 100000\ncheckpoint_steps: [100000]\n"
                   "parity: {protocol: 'off', branch_steps: []}\n")
    out = tmp_path / "out"
    proc = subprocess.Popen([str(RANKSCOPE), "study", "--config", str(cfg), "--out", str(out), "--quiet"],
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "runs" / "full_rank_s0" / "metrics.jsonl"
    wait_until(lambda: metrics.is_file() and metrics.stat().st_size > 0, 300, "the training job", proc)
    return proc, out


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killing_the_study_ends_its_training_job(tmp_path, sig):
    proc, out = _long_study(tmp_path)
    jobs = descendants(proc.pid)
    try:
        assert jobs, "no training process found under the study"
        os.kill(proc.pid, sig)  # the study process only, not its process group
        _, err = proc.communicate(timeout=120)
        wait_until(lambda: not any(alive(j) for j in jobs), 30, f"training job(s) {jobs} to die")
    finally:
        for j in jobs:
            if alive(j):
                os.kill(j, signal.SIGKILL)
    if sig == signal.SIGINT:
        assert proc.returncode == 130, err
        assert INTERRUPTED in err and "Traceback" not in err
        status = {j["id"]: j for j in json.loads((out / "status.json").read_text())["jobs"]}
        assert status["train:full_rank_s0"]["state"] == "stopped"  # Ctrl-C stops the job like SIGTERM does
    else:
        assert proc.returncode == -signal.SIGKILL


SHORT_STUDY = """base: smoke
methods: [full_rank]
steps: 12
checkpoint_steps: [12]
parity: {protocol: 'off', branch_steps: []}
siblings: {methods: [], data_seeds: []}
analysis: {metrics: [w_erank], n_tokens: 64}
downstream: {max_items: 4, bootstrap_iters: 5}
ood: {texts: [], finetune: null}
"""


@pytest.mark.slow  # a short study, stopped and re-run, and the same run trained straight
def test_sigterm_stops_the_study_after_its_job_checkpoints_and_a_rerun_resumes(tmp_path, one_thread, monkeypatch):
    """The study passes SIGTERM on to its training job, which finishes its update, checkpoints and exits 143;
    the study exits 143 with one line; re-running it resumes the job to the same weights as a straight run."""
    import torch
    from safetensors.torch import load_file

    from rankscope.config import RunConfig
    from rankscope.study import load_study_config, run_study
    from rankscope.training import checkpoint as ckpt
    from rankscope.training.loop import train

    cfg = tmp_path / "study.yaml"
    cfg.write_text(SHORT_STUDY)
    out = tmp_path / "out"
    run = out / "runs" / "full_rank_s0"
    proc = subprocess.Popen([str(RANKSCOPE), "study", "--config", str(cfg), "--out", str(out), "--quiet"],
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        metrics = run / "metrics.jsonl"
        wait_until(lambda: metrics.is_file() and metrics.stat().st_size > 0, 300, "the training job", proc)
        jobs = descendants(proc.pid)
        for j in jobs:  # paused, so the job cannot finish before the study's SIGTERM reaches it
            os.kill(j, signal.SIGSTOP)
        os.kill(proc.pid, signal.SIGTERM)  # the study process only: it passes SIGTERM on
        time.sleep(1.0)
        for j in jobs:
            os.kill(j, signal.SIGCONT)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("stopped by SIGTERM") and "re-run the same command" in err
    steps = ckpt.list_checkpoints(run)
    assert len(steps) == 1 and 0 < steps[0] < 12, steps  # the job checkpointed where it stopped
    assert "stopped by SIGTERM after update" in (out / "logs" / "full_rank_s0.log").read_text()
    status = {j["id"]: j for j in json.loads((out / "status.json").read_text())["jobs"]}
    job = status["train:full_rank_s0"]
    assert job["state"] == "stopped" and job["checkpoint"] == steps[0], job  # not "running": the job has exited
    assert f"last checkpoint is step {steps[0]}, where re-running the study resumes it" in job["error"], job
    assert "exit code 143" in job["error"]
    # the re-run's job is a subprocess of this one: one thread like the stopped job (cli_env) and the straight
    # run (one_thread), or float sums are reduced in another order and the weights differ in the last bits
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    result = run_study(load_study_config(cfg), out, progress=False)
    assert not result.failed, [(j.id, j.error) for j in result.failed]
    assert ckpt.list_checkpoints(run) == [steps[0], 12]  # resumed from the stop, not restarted
    job = {j["id"]: j for j in json.loads((out / "status.json").read_text())["jobs"]}["train:full_rank_s0"]
    assert job["state"] == "done" and job["checkpoint"] is None and job["error"] == "", job
    straight = RunConfig.from_dict({**json.loads((out / "runs" / "full_rank_s0.json").read_text()),
                                    "out_dir": str(tmp_path / "straight")})
    train(straight, progress=False)
    for name in ("model.safetensors", "optimizer.safetensors"):
        a, b = load_file(ckpt.step_dir(straight.run_dir, 12) / name), load_file(ckpt.step_dir(run, 12) / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


STOPPABLE = ("import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(143)); "
             "print('up', flush=True); time.sleep(60)")


def test_jobs_running_when_the_study_stops_are_reported_stopped_and_stages_too(tmp_path):
    """The launcher's stop path (no study run): the running job gets SIGTERM, exits 143 and is reported
    "stopped" before the stop unwinds; an in-process stage interrupted likewise is "stopped" in status.json."""
    from rankscope.study.execute import run_stage
    from rankscope.study.jobs import Job, StatusBook
    from rankscope.study.launch import run_jobs_local

    job = Job("train:j0", "train", "j0", (sys.executable, "-c", STOPPABLE))
    reported = []

    def poll(_job):
        if "up" in (tmp_path / "j0.log").read_text():
            raise KeyboardInterrupt  # what the study's SIGTERM handler raises (Stopped), in the same place

    with pytest.raises(KeyboardInterrupt):
        run_jobs_local([job], tmp_path, lambda j, state, sec, err: reported.append((j.run, state, err)),
                       lambda j: None, poll)
    assert reported == [("j0", "stopped", "exit code 143")]

    stage = Job("analyze", "analyze")
    book = StatusBook(tmp_path / "status.json", [stage])

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_stage(stage, None, interrupted, book, tmp_path)
    saved = json.loads((tmp_path / "status.json").read_text())["jobs"][0]
    assert saved["state"] == "stopped" and "runs it again" in saved["error"]
    from rankscope.report.load import load_study

    assert any(m.startswith("job analyze (analyze, run ) is stopped") for m in load_study(tmp_path).missing)
