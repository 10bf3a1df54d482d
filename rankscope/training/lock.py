"""One writer per run folder: ``<run>/train.lock`` names the process training it (pid, host, start time).

The lock is an ``flock`` on that file, so the kernel drops it when the holder dies however it dies (kill -9
included): a lock file left by a dead process on this host is simply taken over. The file's text only
names the holder for the refusal message. A holder on another host cannot be checked from here, so its lock
is respected until the user deletes the file. File systems without ``flock`` (some Lustre mounts) fall back
to create-exclusive plus a pid check on the same host.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from rankscope.errors import UserError

LOCK_NAME = "train.lock"


class RunLocked(UserError):
    """Another live process trains this run folder."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def read_holder(run_dir: str | Path) -> dict | None:
    """The holder recorded in ``run_dir/train.lock`` ({} while it is being written), or None without a file."""
    path = Path(run_dir) / LOCK_NAME
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        holder = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _refusal(path: Path, holder: dict | None) -> RunLocked:
    holder = holder or {}
    who = (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} (started {holder.get('started', '?')})"
           if holder else "another process that is still starting")
    return RunLocked(
        f"run folder {path.parent} is being trained by {who}; a run folder has one writer, so nothing was changed. "
        f"Wait for that process to finish or stop it. If it is no longer running (e.g. its node died), delete "
        f"{path} and retry."
    )


class RunLock:
    """``with RunLock(run_dir):`` holds the folder's lock; raises :class:`RunLocked` naming the holder."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None
        self._flock = True

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        for _ in range(10):  # retries only when a releasing holder unlinks the file under us
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise _refusal(self.path, read_holder(self.path.parent)) from None
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    return self._acquire_exclusive(info)
                raise
            try:
                same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same_file = False
            if not same_file:  # we locked a file its holder just unlinked; lock the new one instead
                os.close(fd)
                continue
            old = read_holder(self.path.parent)
            if old and old.get("host") not in (None, info["host"]):
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                raise _refusal(self.path, old)
            # Free flock on this host: any recorded holder is dead, so the lock is ours (stale takeover).
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
            self._fd = fd
            return self
        raise _refusal(self.path, read_holder(self.path.parent))

    def _acquire_exclusive(self, info: dict) -> RunLock:
        """No flock here: O_EXCL creation; a same-host lock of a dead pid is renamed away and retried once."""
        self._flock = False
        for attempt in range(2):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                old = read_holder(self.path.parent)
                stale = (old and old.get("host") == info["host"] and isinstance(old.get("pid"), int)
                         and not _pid_alive(old["pid"]))
                if attempt or not stale:
                    raise _refusal(self.path, old) from None
                aside = self.path.with_name(f".{LOCK_NAME}.stale.{os.getpid()}")
                try:
                    os.rename(self.path, aside)
                    os.unlink(aside)
                except FileNotFoundError:
                    pass
                continue
            os.write(fd, json.dumps(info).encode())
            self._fd = fd
            return self
        raise _refusal(self.path, read_holder(self.path.parent))

    def release(self) -> None:
        """Unlink while still holding the lock, so a waiting process never locks a file that is gone."""
        if self._fd is None:
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        if self._flock:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
