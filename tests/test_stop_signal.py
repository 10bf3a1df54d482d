"""SIGTERM (a scheduler's stop) and a user-named early-warning signal during ``rankscope train`` (issue 23,
item 5): finish the update, checkpoint at that boundary, one line, exit 143; --resume continues bit-exactly.

The signal lands at a known point: the training process is paused (SIGSTOP) once it has logged update k,
signalled, and continued, so it cannot run to the end first however loaded the machine is. It then stops
after update k + 1 (k + 2 if the pause fell between the stop check of k + 1 and that update's log line).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers_fs import RANKSCOPE, assert_clean_failure, cli_env, run_cli
from safetensors.torch import load_file

from rankscope.training import checkpoint as ckpt
from rankscope.training.logging import read_metrics

pytestmark = pytest.mark.skipif(not RANKSCOPE.exists() or not hasattr(signal, "SIGSTOP"),
                                reason="needs the console script and POSIX signals")

STEPS = 12
TRAIN = ("--model", "smoke", "--micro-batch-size", "2", "--seq-len", "64", "--eval-every", "0", "--eval-tokens",
         "1024", "--warmup-steps", "1", "--log-every", "1", "--quiet", "--steps", str(STEPS))


def _last_logged(run: Path) -> int:
    try:
        return max((r["step"] for r in read_metrics(run) if r.get("kind") == "train"), default=0)
    except ValueError:  # a line being written
        return 0


def signal_mid_run(cmd: list[str], run: Path, sig: int, targets=None) -> tuple[subprocess.CompletedProcess, int, str]:
    """Start ``cmd``, pause it once update 1 is logged, send ``sig``, continue; (finished process, k, stderr).

    ``targets(proc)`` lists the pids to pause and signal (default: the process itself)."""
    proc = subprocess.Popen(cmd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while _last_logged(run) < 1:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.time() < deadline, "no update logged"
            time.sleep(0.05)
        pids = targets(proc) if targets else {proc.pid: True}
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(0.2)  # a write in flight reaches the file
        k = _last_logged(run)
        for pid, signalled in pids.items():
            if signalled:
                os.kill(pid, sig)
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), k, err


def assert_stopped_at_the_next_boundary(proc, err: str, run: Path, k: int, name: str) -> int:
    assert_clean_failure(proc, 143)
    assert len(err.strip().splitlines()) == 1, err
    steps = ckpt.list_checkpoints(run)
    assert len(steps) == 1, steps
    s = steps[0]
    assert k < s <= k + 2 and s < STEPS, (k, s)  # the update under way was finished, nothing more
    assert _last_logged(run) == s  # no update ran after the checkpoint
    assert err.startswith(f"stopped by {name} after update {s}: checkpoint {ckpt.step_dir(run, s)} written")
    assert "--resume" in err
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    return s


def _train_losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(run) if r.get("kind") == "train"]


def test_sigterm_checkpoints_at_the_update_boundary_and_resumes_bit_exactly(tmp_path, make_smoke_config, one_thread):
    from rankscope.training.loop import train

    run = tmp_path / "runs" / "r"
    cmd = [str(RANKSCOPE), "train", *TRAIN, "--out-dir", str(run.parent), "--name", "r"]
    proc, k, err = signal_mid_run(cmd, run, signal.SIGTERM)
    assert_stopped_at_the_next_boundary(proc, err, run, k, "SIGTERM")
    resumed = run_cli("train", *TRAIN, "--out-dir", run.parent, "--name", "r", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    straight = make_smoke_config("straight", steps=STEPS)  # the same run, uninterrupted, in this process
    train(straight, progress=False)
    assert ckpt.read_run_config(run).fingerprint() == straight.fingerprint()
    for name in ("model.safetensors", "optimizer.safetensors"):
        a = load_file(ckpt.step_dir(straight.run_dir, STEPS) / name)
        b = load_file(ckpt.step_dir(run, STEPS) / name)
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a), name
    assert _train_losses(run) == _train_losses(straight.run_dir)  # the log too


def test_a_named_early_warning_signal_stops_the_same_way(tmp_path):
    run = tmp_path / "r"
    cmd = [str(RANKSCOPE), "train", *TRAIN, "--out-dir", str(tmp_path), "--name", "r", "--stop-signal", "USR1"]
    proc, k, err = signal_mid_run(cmd, run, signal.SIGUSR1)
    assert_stopped_at_the_next_boundary(proc, err, run, k, "SIGUSR1")


def test_a_signal_that_cannot_stop_a_run_is_a_user_error(tmp_path):
    proc = run_cli("train", *TRAIN, "--out-dir", tmp_path, "--name", "r", "--stop-signal", "USR1,KILL")
    assert_clean_failure(proc, 2)
    assert "--stop-signal 'KILL'" in proc.stderr and not any(tmp_path.iterdir())


def test_signal_names():
    from rankscope.errors import UserError
    from rankscope.training.stop import parse_signals

    assert parse_signals("USR1, sigusr2") == (signal.SIGUSR1, signal.SIGUSR2) and parse_signals(None) == ()
    for bad in ("INT", "STOP", "NOPE", "9"):
        with pytest.raises(UserError, match="--stop-signal"):
            parse_signals(bad)


def _workers(torchrun: subprocess.Popen) -> dict[int, bool]:
    """The two training ranks under torchrun: {pid: signal it?}; only rank 1 gets the signal."""
    deadline = time.time() + 60
    while True:
        ranks = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != torchrun.pid:
                    continue
                env = (stat.parent / "environ").read_bytes().split(b"\0")
            except (OSError, ValueError, IndexError):
                continue
            rank = next((e[5:].decode() for e in env if e.startswith(b"RANK=")), None)
            if rank is not None:
                ranks[int(stat.parent.name)] = rank == "1"
        if len(ranks) == 2:
            return ranks
        assert time.time() < deadline, f"torchrun workers not found: {ranks}"
        time.sleep(0.1)


@pytest.mark.slow  # three 2-process torchrun trainings
@pytest.mark.skipif(not Path("/proc/self/environ").is_file(), reason="finds the ranks through /proc")
def test_under_torchrun_every_rank_stops_after_the_same_update(tmp_path):
    """SIGTERM to rank 1 only: the ranks' all-reduced stop flag makes both checkpoint the same step; the
    2-process resume equals an uninterrupted 2-process run bit for bit."""
    def torchrun(name: str, *extra: str) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                "rankscope", "train", *TRAIN, "--out-dir", str(tmp_path), "--name", name, *extra]

    run = tmp_path / "r"
    proc, k, err = signal_mid_run(torchrun("r"), run, signal.SIGTERM, targets=_workers)
    assert proc.returncode != 0, err[-3000:]
    steps = ckpt.list_checkpoints(run)
    assert len(steps) == 1 and k < steps[0] < STEPS, (k, steps, err[-3000:])
    s = steps[0]
    assert f"stopped by SIGTERM after update {s}: checkpoint" in err, err[-3000:]  # rank 0; torchrun reports 143
    assert _last_logged(run) == s
    env = cli_env()
    for name, extra in (("r", ("--resume",)), ("straight", ())):
        done = subprocess.run(torchrun(name, *extra), env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    for name in ("model.safetensors", "optimizer.safetensors"):
        a = load_file(ckpt.step_dir(tmp_path / "straight", STEPS) / name)
        b = load_file(ckpt.step_dir(run, STEPS) / name)
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a), name
