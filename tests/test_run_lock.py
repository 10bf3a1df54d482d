"""One writer per run folder (issue 12, item 3) and failed starts that leave nothing behind (item 5).

Refusals go through the installed console script: exit 2, one paragraph on stderr, folder byte-identical.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import textwrap
from dataclasses import replace

import pytest
from helpers_fs import assert_clean_failure, assert_unchanged, run_cli, snapshot

from rankscope.errors import UserError
from rankscope.training import checkpoint as ckpt
from rankscope.training import lock as lock_mod
from rankscope.training.lock import LOCK_NAME, RunLock, RunLocked
from rankscope.training.loop import train


def _write_config(cfg, path):
    path.write_text(json.dumps(cfg.to_dict()))
    return path


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _holder(run_dir):
    """A separate process that takes the run's lock and keeps it until killed."""
    code = textwrap.dedent(f"""
        import sys, time
        from rankscope.training.lock import RunLock
        RunLock({str(run_dir)!r}).acquire()
        print("held", flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_refused_then_dead_holders_lock_taken_over(make_smoke_config, tmp_path, one_thread):
    cfg = make_smoke_config("locked", steps=2, save_every=1)
    train(cfg, progress=False, stop_after=1)
    config = _write_config(cfg, tmp_path / "locked.json")
    holder = _holder(cfg.run_dir)
    try:
        before = snapshot(cfg.run_dir)
        proc = run_cli("train", "--config", config, "--resume", "--quiet")
        assert_clean_failure(proc, 2)
        assert f"pid {holder.pid} on host {socket.gethostname()}" in proc.stderr
        assert LOCK_NAME in proc.stderr  # names the file to delete if the holder is gone
        assert_unchanged(before, cfg.run_dir)
    finally:
        holder.kill()
        holder.wait()
    # kill -9 left the lock file naming a dead process: the next resume takes it over and finishes the run.
    assert json.loads((cfg.run_dir / LOCK_NAME).read_text())["pid"] == holder.pid
    proc = run_cli("train", "--config", config, "--resume", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert ckpt.list_checkpoints(cfg.run_dir) == [1, 2]
    assert not (cfg.run_dir / LOCK_NAME).exists()


def test_training_holds_the_lock(make_smoke_config, monkeypatch, one_thread):
    """While the loop runs, any other writer (another open of the lock file) is refused with our pid."""
    from rankscope.training import logging as logging_mod

    cfg = make_smoke_config("holds", steps=2)
    seen = []
    real_write = logging_mod.MetricsLog.write

    def write(self, kind, step, **values):
        with pytest.raises(RunLocked, match=f"pid {os.getpid()} "):
            RunLock(cfg.run_dir).acquire()
        seen.append(json.loads((cfg.run_dir / LOCK_NAME).read_text())["pid"])
        return real_write(self, kind, step, **values)

    monkeypatch.setattr(logging_mod.MetricsLog, "write", write)
    train(cfg, progress=False)
    assert len(seen) == 3 and set(seen) == {os.getpid()}  # train records at steps 1, 2 and the final eval
    assert not (cfg.run_dir / LOCK_NAME).exists()


@pytest.mark.parametrize("flock", [True, False], ids=["flock", "no-flock"])
def test_stale_and_foreign_locks(tmp_path, monkeypatch, flock):
    """Same host + dead pid: taken over. Live pid or another host: refused. Also without flock (Lustre)."""
    if not flock:
        def no_flock(fd, op):
            raise OSError(errno.ENOLCK, "No locks available")
        monkeypatch.setattr(lock_mod.fcntl, "flock", no_flock)
    run = tmp_path / "run"
    run.mkdir()
    path = run / LOCK_NAME
    host = socket.gethostname()
    path.write_text(json.dumps({"pid": _dead_pid(), "host": host, "started": "then"}))
    with RunLock(run):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists()
    path.write_text(json.dumps({"pid": 1, "host": "node-17", "started": "then"}))
    with pytest.raises(RunLocked, match="pid 1 on host node-17"):
        RunLock(run).acquire()
    if not flock:  # with flock, a live holder is the kernel's business (tested above through the CLI)
        path.write_text(json.dumps({"pid": os.getppid(), "host": host, "started": "then"}))
        with pytest.raises(RunLocked, match=f"pid {os.getppid()} "):
            RunLock(run).acquire()


# --- failed starts leave nothing behind -------------------------------------------------------------

SMOKE = ("--model", "smoke", "--steps", "2", "--micro-batch-size", "2", "--seq-len", "64", "--eval-every", "0",
         "--eval-tokens", "1024", "--warmup-steps", "1", "--quiet")


@pytest.mark.parametrize("bad, resume", [
    (("--source", "files", "--train-files", "/no/such/train.txt"), False),
    (("--source", "files", "--train-files", "/no/such/train.txt"), True),
    (("--tokenizer", "/no/such/tokenizer.json"), False),
    (("--tokenizer", "someorg/no-such-tokenizer"), True),  # a hub name, offline
], ids=["missing-data-file", "missing-data-file-resume", "bad-tokenizer", "offline-hub-tokenizer-resume"])
def test_failed_start_writes_nothing(tmp_path, bad, resume):
    proc = run_cli("train", *SMOKE, "--out-dir", tmp_path / "out", "--name", "never", *bad,
                   *(["--resume"] if resume else []))
    assert_clean_failure(proc, 2)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content", [None, b"\xff\xfe\x00garbage", b"   \n\n"], ids=["missing", "undecodable", "blank"])
def test_data_errors_in_the_loop_write_nothing(make_smoke_config, tmp_path, content):
    """The loop itself (not only the CLI's checks) loads data before it creates the folder."""
    from rankscope.config import DataConfig

    path = tmp_path / "train.txt"
    if content is not None:
        path.write_bytes(content)
    cfg = replace(make_smoke_config("never"), data=DataConfig(source="files", train_files=(str(path),),
                                                               val_files=(str(path),), seq_len=64))
    with pytest.raises(UserError):
        train(cfg, progress=False)
    assert not cfg.run_dir.exists()


def test_failed_resume_of_damaged_checkpoint_changes_nothing(make_smoke_config, tmp_path, one_thread):
    cfg = make_smoke_config("damaged", steps=4, save_every=2)
    train(cfg, progress=False, stop_after=2)
    (ckpt.step_dir(cfg.run_dir, 2) / "train_state.json").write_text(json.dumps([2, "not an object"]))
    config = _write_config(cfg, tmp_path / "damaged.json")
    before = snapshot(cfg.run_dir)
    proc = run_cli("train", "--config", config, "--resume", "--quiet")
    assert_clean_failure(proc, 2)
    assert "train_state.json" in proc.stderr and "holds a list" in proc.stderr
    assert_unchanged(before, cfg.run_dir)


def test_new_run_failing_before_its_first_update_is_removed(make_smoke_config, monkeypatch):
    from rankscope.training import loop

    def broken(*args, **kwargs):
        raise RuntimeError("device fell over")

    monkeypatch.setattr(loop, "lm_loss", broken)
    cfg = make_smoke_config("fragile", steps=2)
    with pytest.raises(RuntimeError, match="fell over"):
        train(cfg, progress=False)
    assert not cfg.run_dir.exists()


def test_resuming_a_finished_run_changes_nothing(make_smoke_config, one_thread):
    cfg = make_smoke_config("finished", steps=2)
    first = train(cfg, progress=False)
    before = snapshot(cfg.run_dir)
    again = train(cfg, resume=True, progress=False)
    assert_unchanged(before, cfg.run_dir)
    assert again.step == 2 and again.val_loss == first.val_loss


@pytest.mark.slow
def test_two_real_trainers_one_folder(make_smoke_config, tmp_path):
    """A real trainer (held inside its first checkpoint write, so that it is surely still running) owns the
    folder; a second `rankscope train --resume` is refused; after kill -9 of the first, a resume completes."""
    from helpers_fs import cli_env

    cfg = make_smoke_config("busy", steps=40, save_every=20, log_every=5)
    config = _write_config(cfg, tmp_path / "busy.json")
    code = textwrap.dedent(f"""
        import time
        from rankscope.training import checkpoint as ckpt
        def paused(tensors, path, metadata=None):
            print("inside-checkpoint", flush=True)
            time.sleep(300)
        ckpt.save_file = paused
        from rankscope.cli import main
        main(["train", "--config", {str(config)!r}, "--quiet"])
    """)
    first = subprocess.Popen([sys.executable, "-c", code], env=cli_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "inside-checkpoint", first.stderr.read()
        before = snapshot(cfg.run_dir)
        second = run_cli("train", "--config", config, "--resume", "--quiet")
        assert_clean_failure(second, 2)
        assert f"pid {first.pid} " in second.stderr
        assert_unchanged(before, cfg.run_dir)
    finally:
        first.kill()
        first.wait()
    done = run_cli("train", "--config", config, "--resume", "--quiet")
    assert done.returncode == 0, done.stderr
    assert ckpt.list_checkpoints(cfg.run_dir) == [20, 40]
    steps = [r["step"] for r in map(json.loads, (cfg.run_dir / "metrics.jsonl").read_text().splitlines())
             if r["kind"] == "train"]
    assert steps == list(range(5, 41, 5))
