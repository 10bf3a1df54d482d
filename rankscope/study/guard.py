"""Run a study job so that it dies with the study, even when the study is killed with SIGKILL.

    python -m rankscope.study.guard STUDY_PID -- COMMAND...

Without this, ``kill -9`` of a study leaves its training job running as an orphan that keeps writing the
run folder, and a re-run of the study trains the same run twice at once.

* Linux: ask the kernel to send SIGTERM to this process when its parent dies (``prctl(PR_SET_PDEATHSIG)``),
  then ``exec`` the command in place (the setting survives exec), so the job is one process with no
  wrapper. SIGTERM rather than SIGKILL, so torchrun can stop its workers; a training process finishes its
  update, writes a checkpoint and exits 143 (training/stop.py), so the next invocation resumes from there.
* Elsewhere (or if prctl is unavailable): stay as a small parent of the command, poll once a second
  whether the study is gone (this process was re-parented), and then terminate the command's process
  group; SIGTERM/SIGINT sent to the guard are passed on.

Done here rather than in a ``preexec_fn``, which is unsafe while the study runs threads (progress display).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Linux only: deliver ``sig`` to this process when its parent exits; False when not possible."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def guarded(command: list[str], parent: int | None = None) -> list[str]:
    """``command`` wrapped so that it dies with process ``parent`` (default: the calling process)."""
    parent = os.getpid() if parent is None else parent
    return [sys.executable, "-m", "rankscope.study.guard", str(parent), "--", *command]


def _watch(command: list[str], parent: int) -> int:
    """Portable fallback: run ``command`` as a child and end it when ``parent`` is gone."""
    proc = subprocess.Popen(command, start_new_session=True)

    def forward(signum, frame):
        _kill_group(proc, signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    while proc.poll() is None:
        if os.getppid() != parent:  # re-parented: the study died without stopping us
            _kill_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _kill_group(proc, signal.SIGKILL)
            break
        time.sleep(1.0)
    code = proc.wait()
    return 128 - code if code < 0 else code


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m rankscope.study.guard PARENT_PID -- COMMAND...", file=sys.stderr)
        return 2
    parent, command = int(argv[0]), argv[2:]
    # RANKSCOPE_GUARD=poll forces the portable fallback (tests exercise it on Linux too).
    if os.environ.get("RANKSCOPE_GUARD") != "poll" and set_parent_death_signal():
        if os.getppid() != parent:  # the study died before prctl took effect
            return 143
        try:
            os.execvp(command[0], command)
        except OSError as exc:
            print(f"error: cannot start {command[0]}: {exc}", file=sys.stderr)
            return 127
    return _watch(command, parent)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
