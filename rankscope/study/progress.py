"""One progress display for a whole study: stage, job, overall ETA.

Work is counted in training steps, the unit that dominates a study's cost; the later stages are given
weights relative to training (measured on the demo: analysis ~30 %, evaluation ~10 %), so the ETA is
meaningful from the first job on. While a training job runs, its progress is read from the run's
``metrics.jsonl`` (the job is another process).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

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


class StudyProgress:
    """A rich progress bar (or nothing when disabled). Jobs are keyed by name so that several can run at
    once (parallel local training); ``advance_to`` moves within a running job."""

    def __init__(self, enabled: bool, train_units: int) -> None:
        self.enabled = enabled
        self.train_units = max(train_units, 1)
        self.total = self.train_units * (1 + sum(STAGE_WEIGHT.values()))
        self._bar = None
        self._task = None
        self._done = 0.0  # units of finished jobs
        self._running: dict[str, list] = {}  # job -> [stage, units, units done]

    def __enter__(self) -> StudyProgress:
        if self.enabled:
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
        self._running[job] = [stage, units, 0.0]
        self._refresh()

    def advance_to(self, units_in_job: float, job: str) -> None:
        entry = self._running.get(job)
        if entry is not None:
            entry[2] = min(units_in_job, entry[1])
            self._refresh()

    def finish_job(self, job: str) -> None:
        entry = self._running.pop(job, None)
        if entry is not None:
            self._done += entry[1]
        self._refresh()

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
        elif self.enabled:
            print(message)

    def _show(self, description: str | None, completed: float) -> None:
        if self._bar is None:
            return
        kw = {"completed": completed}
        if description is not None:
            kw["description"] = description
        self._bar.update(self._task, **kw)
