"""Stopping a run cleanly on a scheduler's signal: finish the update, checkpoint, exit 143.

A cluster scheduler sends SIGTERM before it kills a job (Slurm also sends an early-warning signal chosen
with ``--signal=USR1@90``). ``rankscope train`` then finishes the update it is in, writes a checkpoint at
that update boundary, prints one line and exits 143, so ``--resume`` continues exactly from there; nothing
since the last periodic checkpoint is lost. The signals caught are SIGTERM plus the ones named with
``--stop-signal`` (e.g. ``USR1``). A second signal does not cut the checkpoint short (SIGKILL does).

Under torchrun each rank may receive the signal at a different moment (or only one may), so the ranks agree
by an all-reduce (max) of their stop flags after every update: all stop after the same update and write one
checkpoint together. The flag is one CPU scalar per update, next to DDP's gradient all-reduce; on CUDA it
goes through a separate gloo group, so reading it never waits for the GPU's queued work.
"""

from __future__ import annotations

import signal
import threading

import torch

from rankscope.errors import UserError
from rankscope.training import dist

#: Signals that cannot be caught, or that already mean something else to rankscope (SIGINT: Ctrl-C, 130).
_NOT_ALLOWED = {"SIGKILL", "SIGSTOP", "SIGINT"}


def parse_signals(names: str | None) -> tuple[int, ...]:
    """``"USR1"`` / ``"SIGUSR1,HUP"`` -> signal numbers; unknown or uncatchable names are user errors."""
    out = []
    for raw in (names or "").split(","):
        name = raw.strip().upper()
        if not name:
            continue
        full = name if name.startswith("SIG") else f"SIG{name}"
        sig = getattr(signal.Signals, full, None) if full.isidentifier() else None
        if sig is None or full in _NOT_ALLOWED:
            catchable = ", ".join(s.name[3:] for s in (signal.Signals.SIGUSR1, signal.Signals.SIGUSR2,
                                                       signal.Signals.SIGHUP) if hasattr(signal.Signals, s.name))
            raise UserError(f"--stop-signal {raw.strip()!r} is not a signal rankscope can stop on; give a name such "
                            f"as {catchable} (SIGTERM is always caught; SIGINT is Ctrl-C)")
        out.append(int(sig))
    return tuple(out)


class StopOnSignal:
    """Context manager: while active, SIGTERM and ``extra`` signals set a flag instead of killing the process.

    Handlers are installed only in the main thread (Python's rule); elsewhere the default behaviour stays.
    """

    def __init__(self, extra: tuple[int, ...] = ()) -> None:
        self.signals = tuple(dict.fromkeys((int(signal.SIGTERM), *extra)))
        self.received = 0  # the first signal number caught, 0 if none
        self._old: dict[int, object] = {}
        self._group = None  # gloo group for the flag when the training backend is NCCL

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def _handle(self, signum, frame) -> None:
        self.received = self.received or signum

    def agreed(self, info: dist.DistInfo) -> int:
        """The signal every rank stops on after this update (0: go on); collective under torchrun."""
        if not info.distributed:
            return self.received
        if self._group is None and info.device.type == "cuda":  # collective: every rank's first update
            self._group = torch.distributed.new_group(backend="gloo")
        flag = torch.tensor(float(self.received))
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=self._group)
        return int(flag.item())


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
