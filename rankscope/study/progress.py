"""One progress display for a whole study: stage, job, overall ETA.

Work is counted in training steps, the unit that dominates a study's cost. The display is given a plan
when the study starts: the training steps still to run (main runs, siblings and the planned parity models;
a finished run counts 0, a stopped one what it has left), and each later stage weighted relative to the
study's training steps by :data:`STAGE_WEIGHT` (measured on the demo: analysis ~30 %, evaluation ~10 %),
with the parity models' later stages as a share of the main ones. Each job that starts takes its units
out of its stage's plan; work nobody planned (the extra parity model at a predicted crossing) enlarges
the total when it starts. So the share done covers every stage, and it stays below 100 % until the
report is written, the study's last job. While a training job runs, its progress is read from the run's
``metrics.jsonl`` (the job is another process).

The ETA is the work left at the rate measured on the work done so far; jobs that were skipped (fresh
results) took no time and do not count towards that rate. Until some work has been timed it is
"unknown", never a made-up 0 s.

When stdout is not a terminal (``make demo > log``, nohup, a scheduler, CI) a live bar cannot be drawn, so
the display is plain lines on stderr instead, one as each job or stage starts and one as it ends, as
cluster logs expect::

    [study 0:01:12] train galore_s0: started | 31 % of the study, ETA 2m40s
    [study 0:01:40] train galore_s0: done in 28.1 s | 38 % of the study, ETA 2m17s

``--quiet`` silences both.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

# × the study's training steps; the report is the last job, so the share reaches 100 % only when it is written
STAGE_WEIGHT = {"analyze": 0.30, "eval": 0.10, "ood": 0.03, "finetune": 0.08, "predict": 0.02, "report": 0.02}
PARITY_STAGES = ("analyze", "eval", "ood", "finetune", "predict")  # run again on the parity models
LAST_JOB = "report"
UNFINISHED_CAP = 0.99  # the largest share shown before the report is written (so "100 %" means done)


def last_logged_step(run_dir: Path) -> int:
    """Step of the last line in ``metrics.jsonl`` (0 when there is none); reads only the file's tail."""
    path = run_dir / "metrics.jsonl"
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            lines = f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        with contextlib.suppress(ValueError, AttributeError):
            return int(json.loads(line).get("step") or 0)
    return 0


def clock(seconds: float) -> str:
    """``3m05s``, ``1h02m``, ``12s``: short enough for a log line."""
    s = int(round(max(seconds, 0.0)))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class StudyProgress:
    """A rich progress bar on a terminal, plain lines on stderr otherwise, or nothing when disabled. Jobs are
    keyed by name so that several can run at once (parallel local training); ``advance_to`` moves within a
    running job. ``plain`` (default: stdout is not a terminal), ``stream`` and ``now`` are for tests.

    ``train_units``: training steps still to run. ``stage_base``: the study's training steps, the unit of
    :data:`STAGE_WEIGHT` (default ``train_units``; at least 1, so a study that trains nothing still weighs its
    stages). ``parity_share``: the parity models' later stages as a share of the main ones (0: no parity)."""

    def __init__(self, enabled: bool, train_units: float, plain: bool | None = None, stream: TextIO | None = None,
                 now: Callable[[], float] = time.monotonic, *, stage_base: float | None = None,
                 parity_share: float = 0.0) -> None:
        self.enabled = enabled
        self.plain = enabled and (not sys.stdout.isatty() if plain is None else plain)
        self._base = max(float(train_units if stage_base is None else stage_base), 1.0)
        self._parity_share = parity_share
        # slot -> units planned but not started yet; a slot is a stage, or "<stage> (parity)"
        self._planned = {"train": max(float(train_units), 0.0)} | {s: self.stage_units(s) for s in STAGE_WEIGHT}
        if parity_share > 0:
            self._planned |= {_slot(s, True): self.stage_units(s, parity=True) for s in PARITY_STAGES}
        self._bar = None
        self._task = None
        self._done = 0.0  # units of finished jobs
        self._timed = 0.0  # of those, the units of jobs that did their work (not skipped): the ETA's rate
        self._complete = False  # the report has been written
        self._running: dict[str, list] = {}  # job -> [stage, units, units done, start time]
        self._stream, self._now = stream, now
        self._t0 = now()

    def __enter__(self) -> StudyProgress:
        if self.enabled and not self.plain:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            # rich's own remaining-time column would extrapolate from the bar alone (skipped jobs included)
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                                 TimeElapsedColumn(), TextColumn("ETA {task.fields[eta]}"))
            self._bar.__enter__()
            self._task = self._bar.add_task("study", total=self.total, eta="unknown")
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    @property
    def total(self) -> float:
        """Units of the whole study as now known: done, running and planned."""
        return self._done + sum(e[1] for e in self._running.values()) + sum(self._planned.values())

    def stage_units(self, stage: str, parity: bool = False) -> float:
        """The planned weight of a later stage (of the parity models' run of it with ``parity``)."""
        units = self._base * STAGE_WEIGHT.get(stage, 0.0)
        return units * self._parity_share if parity else units

    def start(self, stage: str, job: str, units: float, parity: bool = False) -> None:
        slot = _slot(stage, parity)
        if slot in self._planned:  # the job's units leave the plan (what exceeds the plan enlarges the total)
            self._planned[slot] = max(self._planned[slot] - units, 0.0)
        self._running[job] = [stage, units, 0.0, self._now()]
        self._line(f"{stage} {job}: started")
        self._refresh()

    def advance_to(self, units_in_job: float, job: str) -> None:
        entry = self._running.get(job)
        if entry is not None:
            entry[2] = min(max(units_in_job, 0.0), entry[1])
            self._refresh()

    def finish_job(self, job: str, state: str = "done") -> None:
        entry = self._running.pop(job, None)
        if entry is not None:
            self._done += entry[1]
            if state != "skipped":
                self._timed += entry[1]
            if entry[0] == LAST_JOB:
                self._planned.clear()  # whatever the plan still held was not needed (e.g. no parity models)
                self._complete = state in ("done", "skipped")
            self._line(f"{entry[0]} {job}: {state} in {self._now() - entry[3]:.1f} s")
        self._refresh()

    def share(self) -> float:
        """Share of the study done, below :data:`UNFINISHED_CAP` until the report is written."""
        if self._complete:
            return 1.0
        total = self.total
        done = self._done + sum(e[2] for e in self._running.values())
        return min(done / total, UNFINISHED_CAP) if total > 0 else 0.0

    def eta(self) -> str:
        """Time left at the rate of the work timed so far; "unknown" before any work has been timed."""
        if self._complete:
            return clock(0)
        timed = self._timed + sum(e[2] for e in self._running.values())
        elapsed = self._now() - self._t0
        if timed <= 0 or elapsed <= 0:
            return "unknown"
        left = self.total - self._done - sum(e[2] for e in self._running.values())
        seconds = elapsed * left / timed
        return clock(seconds) if seconds >= 0.5 else "<1s"  # work is left: never "0s" before the end

    def _line(self, text: str) -> None:
        """One plain line with the study's elapsed time, share done and ETA (plain mode only)."""
        if not self.plain:
            return
        elapsed = self._now() - self._t0
        h, rest = divmod(int(elapsed), 3600)
        print(f"[study {h}:{rest // 60:02d}:{rest % 60:02d}] {text} | {100 * self.share():.0f} % of the study, "
              f"ETA {self.eta()}", file=self._stream or sys.stderr, flush=True)

    def _refresh(self) -> None:
        if self._running:
            stage = next(iter(self._running.values()))[0]
            self._show(f"[{stage}] " + ", ".join(self._running))
        else:
            self._show(None)

    def log(self, message: str) -> None:
        if self._bar is not None:
            self._bar.console.print(message)
        elif self.enabled:  # plain mode: the same stream as the job lines, without rich markup
            from rich.text import Text

            print(Text.from_markup(message).plain, file=self._stream or sys.stderr, flush=True)

    def _show(self, description: str | None) -> None:
        if self._bar is None:
            return
        total = self.total
        kw = {"completed": self.share() * total, "total": total, "eta": self.eta()}
        if description is not None:
            kw["description"] = description
        self._bar.update(self._task, **kw)


def _slot(stage: str, parity: bool) -> str:
    return f"{stage} (parity)" if parity else stage
