"""One progress display for a whole study: stage, job, overall ETA.

Work is counted in training steps, the unit that dominates a study's cost; the later stages are given
weights relative to training (measured on the demo: analysis ~30 %, evaluation ~10 %), so the ETA is
meaningful from the first job on. While a training job runs, its progress is read from the run's
``metrics.jsonl`` (the job is another process).

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

STAGE_WEIGHT = {"analyze": 0.30, "eval": 0.10, "ood": 0.03, "finetune": 0.08, "predict": 0.02, "report": 0.02}  # × total training steps


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
    running job. ``plain`` (default: stdout is not a terminal), ``stream`` and ``now`` are for tests."""

    def __init__(self, enabled: bool, train_units: int, plain: bool | None = None, stream: TextIO | None = None,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.enabled = enabled
        self.plain = enabled and (not sys.stdout.isatty() if plain is None else plain)
        self.train_units = max(train_units, 1)
        self.total = self.train_units * (1 + sum(STAGE_WEIGHT.values()))
        self._bar = None
        self._task = None
        self._done = 0.0  # units of finished jobs
        self._running: dict[str, list] = {}  # job -> [stage, units, units done, start time]
        self._stream, self._now = stream, now
        self._t0 = now()

    def __enter__(self) -> StudyProgress:
        if self.enabled and not self.plain:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
            self._bar.__enter__()
            self._task = self._bar.add_task("study", total=self.total)
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def start(self, stage: str, job: str, units: float) -> None:
        self._running[job] = [stage, units, 0.0, self._now()]
        self._line(f"{stage} {job}: started")
        self._refresh()

    def advance_to(self, units_in_job: float, job: str) -> None:
        entry = self._running.get(job)
        if entry is not None:
            entry[2] = min(units_in_job, entry[1])
            self._refresh()

    def finish_job(self, job: str, state: str = "done") -> None:
        entry = self._running.pop(job, None)
        if entry is not None:
            self._done += entry[1]
            self._line(f"{entry[0]} {job}: {state} in {self._now() - entry[3]:.1f} s")
        self._refresh()

    def _line(self, text: str) -> None:
        """One plain line with the study's elapsed time, share done and ETA (plain mode only)."""
        if not self.plain:
            return
        elapsed = self._now() - self._t0
        share = min((self._done + sum(e[2] for e in self._running.values())) / self.total, 1.0)
        eta = clock(elapsed * (1 - share) / share) if share > 0 else "unknown"
        h, rest = divmod(int(elapsed), 3600)
        print(f"[study {h}:{rest // 60:02d}:{rest % 60:02d}] {text} | {100 * share:.0f} % of the study, ETA {eta}",
              file=self._stream or sys.stderr, flush=True)

    def _refresh(self) -> None:
        completed = self._done + sum(e[2] for e in self._running.values())
        if self._running:
            stage = next(iter(self._running.values()))[0]
            self._show(f"[{stage}] " + ", ".join(self._running), completed)
        else:
            self._show(None, completed)

    def stage_units(self, stage: str) -> float:
        return self.train_units * STAGE_WEIGHT.get(stage, 0.0)

    def log(self, message: str) -> None:
        if self._bar is not None:
            self._bar.console.print(message)
        elif self.enabled:  # plain mode: the same stream as the job lines, without rich markup
            from rich.text import Text

            print(Text.from_markup(message).plain, file=self._stream or sys.stderr, flush=True)

    def _show(self, description: str | None, completed: float) -> None:
        if self._bar is None:
            return
        kw = {"completed": completed}
        if description is not None:
            kw["description"] = description
        self._bar.update(self._task, **kw)
