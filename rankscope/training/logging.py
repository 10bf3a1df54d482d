"""Metrics sinks: JSONL (the source of truth, appended and flushed) plus TensorBoard events."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


class MetricsLog:
    """The run's log from ``start_step`` on: events a killed process logged after that step are dropped first
    (on every resume, from step 0 too), and TensorBoard purges them from its view."""

    def __init__(self, run_dir: Path, enabled: bool = True, start_step: int = 0, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self._tb = None
        if not enabled:
            return
        self.truncate_after(start_step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                resumed = (run_dir / "tb").is_dir()
                self._tb = SummaryWriter(str(run_dir / "tb"), purge_step=start_step + 1 if resumed else None)
            except ImportError:  # tensorboard is optional at run time
                self._tb = None

    def truncate_after(self, step: int) -> None:
        """Keep the records up to ``step`` (and drop a line a kill cut short) so the log matches the checkpoint."""
        if not (self.enabled and self.path.is_file()):
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("step", 0) <= step:
                kept.append(line)
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(ln + "\n" for ln in kept))
        tmp.replace(self.path)

    def write(self, kind: str, step: int, **values: Any) -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise
            # the last line a kill cut short: the next resume drops it too
    return records
