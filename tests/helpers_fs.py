"""Folder snapshots and console-script helpers for tests of refused commands.

A refused command must leave a run folder byte-identical: ``snapshot(folder)`` records every file's
relative path, size and SHA-256 (and every directory, so an added empty ``tb/`` is caught too);
compare two snapshots with ``==`` or ``assert_unchanged(before, folder)`` for a readable diff.

``run_cli(*args)`` runs the installed ``rankscope`` console script in a subprocess (the real exit
code path, not typer's test runner) and returns the ``CompletedProcess``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

# The console script next to the interpreter running the tests (the venv's bin/).
RANKSCOPE = Path(sys.executable).with_name("rankscope")


def snapshot(folder: str | Path) -> dict[str, str]:
    """Map each relative path under ``folder`` to ``"dir"`` or ``"<size>:<sha256>"``; {} if absent."""
    root = Path(folder)
    if not root.exists():
        return {}
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_dir() and not path.is_symlink():
            out[rel + "/"] = "dir"
        elif path.is_symlink():
            out[rel] = "link:" + os.readlink(path)
        else:
            data = path.read_bytes()
            out[rel] = f"{len(data)}:{hashlib.sha256(data).hexdigest()}"
    return out


def assert_unchanged(before: dict[str, str], folder: str | Path) -> None:
    """Fail naming each added, removed and changed path since ``before = snapshot(folder)``."""
    after = snapshot(folder)
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    assert not (added or removed or changed), (
        f"{folder} changed: added={added} removed={removed} changed={changed}")


def cli_env(**extra: str) -> dict[str, str]:
    """The test environment for a console-script subprocess: offline, one thread."""
    env = dict(os.environ)
    env.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def run_cli(*args: str, cwd: str | Path | None = None, timeout: float = 300,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``rankscope ARGS...`` through the installed console script; capture text output."""
    return subprocess.run([str(RANKSCOPE), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=env or cli_env())


def assert_clean_failure(proc: subprocess.CompletedProcess, code: int = 2) -> None:
    """Exit ``code``, no traceback, and a short stderr (one paragraph, no stack of frames)."""
    msg = f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == code, msg
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, msg
    assert proc.stderr.strip(), msg
    lines = proc.stderr.strip().splitlines()
    assert len(lines) <= 6 and len(proc.stderr) < 4000 and "" not in lines, msg
    assert not any(ln.lstrip().startswith('File "') for ln in lines), msg
