"""A full disk during a checkpoint write, through the console script (issue 23, item 1).

safetensors reports ENOSPC as its own ``SafetensorError``, not an ``OSError``. Two ways to get there: a real
9 MiB tmpfs (where this process may mount one: root on Linux), and everywhere a ``sitecustomize`` put on the
child's PYTHONPATH that makes safetensors fail like a full disk at one step (leaving half a file behind).
Either way: exit 1, one paragraph naming the run, the step, the free space, the last intact checkpoint and
--resume; no temp folder; and the run resumes once space is back.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_fs import RANKSCOPE, assert_clean_failure, cli_env, run_cli

from rankscope.training import checkpoint as ckpt

pytestmark = pytest.mark.skipif(not RANKSCOPE.exists(), reason=f"console script {RANKSCOPE} not installed")

TRAIN = ("train", "--model", "smoke", "--micro-batch-size", "2", "--seq-len", "64", "--eval-every", "0",
         "--eval-tokens", "1024", "--warmup-steps", "1", "--quiet", "--steps", "3", "--save-every", "1")

FULL_DISK_HOOK = '''
import os
import safetensors.torch as st
from safetensors import SafetensorError

_real = st.save_file


def save_file(tensors, filename, metadata=None):
    if "step_%06d" % int(os.environ["FAULT_STEP"]) in str(filename) and str(filename).endswith("optimizer.safetensors"):
        with open(filename, "wb") as fh:
            fh.write(b"half a file")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    return _real(tensors, filename, metadata)


st.save_file = save_file
'''


def _assert_full_disk_message(proc, run: Path, step: int, intact: int) -> None:
    assert_clean_failure(proc, 1)
    err = " ".join(proc.stderr.split())
    assert f"run {run}:" in err and f"checkpoint step {step}" in err, err
    assert "disk is full" in err and "MiB free" in err, err
    assert f"last intact checkpoint is step {intact}" in err and "--resume" in err, err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [f"step_{intact:06d}"]  # no temp folder
    assert ckpt.list_checkpoints(run) == [intact]


def test_safetensors_full_disk_error_is_one_paragraph_exit_1(tmp_path):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FULL_DISK_HOOK)
    env = cli_env(FAULT_STEP="2", PYTHONPATH=os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]))
    run = tmp_path / "runs" / "r"
    proc = run_cli(*TRAIN, "--out-dir", run.parent, "--name", "r", env=env)
    _assert_full_disk_message(proc, run, step=2, intact=1)
    proc = run_cli(*TRAIN, "--out-dir", run.parent, "--name", "r", "--resume")  # space is back
    assert proc.returncode == 0, proc.stderr
    assert ckpt.list_checkpoints(run) == [1, 2, 3]


def _mount_tmpfs(where: Path, size: str) -> str | None:
    """None when mounted, else why not (the test is then skipped)."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0 or not shutil.which("mount"):
        return "mounting a tmpfs needs root on Linux"
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True,
                          text=True)
    return None if proc.returncode == 0 else f"mount -t tmpfs failed here: {proc.stderr.strip()}"


def test_real_full_disk_on_a_small_tmpfs(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    why = _mount_tmpfs(disk, "9m")  # a smoke checkpoint is ~6.4 MiB: step 1 fits, step 2 does not
    if why:
        pytest.skip(why)
    try:
        run = disk / "r"
        proc = run_cli(*TRAIN, "--out-dir", disk, "--name", "r")
        _assert_full_disk_message(proc, run, step=2, intact=1)
        remount = subprocess.run(["mount", "-o", "remount,size=40m", str(disk)], capture_output=True, text=True)
        assert remount.returncode == 0, remount.stderr
        proc = run_cli(*TRAIN, "--out-dir", disk, "--name", "r", "--resume")
        assert proc.returncode == 0, proc.stderr
        assert ckpt.list_checkpoints(run) == [1, 2, 3]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
