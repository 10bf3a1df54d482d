"""Per-task result cache for ``analyze``: one small JSON file of rows per (group, runs, steps, settings).

Why one file per task: a study grows (new checkpoints, new runs, one new metric), and every rerun should
compute only what is new. The key holds everything that changes the answer: group, mode, token budget,
seed, resolved settings, the runs' absolute paths and steps, and a stamp (size + mtime) of each
checkpoint's weights file, so a re-saved checkpoint is recomputed. The file name is a hash of the key; the
key is stored inside for inspection. Writes are atomic (temp file, then rename).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

from rankscope.diagnostics.table import Row

CACHE_VERSION = 1  # bump when a diagnostic's output format changes incompatibly


def checkpoint_stamp(run_path: Path, step: int, folder: Path | None = None) -> list[Any]:
    """(file, size, mtime_ns) of the checkpoint's weights (all files of the folder if that one is absent).

    ``folder`` is the checkpoint's folder when it is not a rankscope run's ``checkpoints/step_*`` (external runs).
    """
    if folder is None:
        from rankscope.training.checkpoint import step_dir

        folder = step_dir(Path(run_path), step)
    if not folder.is_dir():
        return ["missing", str(folder)]
    weights = folder / "model.safetensors"
    files = [weights] if weights.is_file() else sorted(p for p in folder.iterdir() if p.is_file())
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def task_key(group: str, *, mode: str, n_tokens: int | None, seed: int, settings: dict[str, Any],
             runs: list[tuple[Path, tuple[int, ...]]]) -> dict[str, Any]:
    """The cache key of one task: ``runs`` = [(run path, steps of that run used by the task[, their folders])]."""
    from rankscope import __version__

    return {
        "cache_version": CACHE_VERSION, "rankscope": __version__, "group": group, "mode": mode,
        "n_tokens": n_tokens, "seed": seed, "settings": settings,
        "runs": [
            {"path": str(Path(p).resolve()), "steps": list(steps),
             "stamps": [checkpoint_stamp(Path(p), s, d) for s, d in zip(steps, dirs or [None] * len(steps))]}
            for p, steps, *more in runs for dirs in [more[0] if more else None]
        ],
    }


class RowCache:
    """Rows of finished tasks under ``root`` (``<out>/cache``), grouped in one folder per diagnostic group."""

    def __init__(self, root: Path, enabled: bool = True) -> None:
        self.root, self.enabled = Path(root), enabled

    def path(self, key: dict[str, Any]) -> Path:
        blob = json.dumps(key, sort_keys=True, default=str).encode()
        return self.root / key["group"] / f"{hashlib.sha1(blob).hexdigest()[:24]}.json"

    def get(self, key: dict[str, Any]) -> list[Row] | None:
        if not self.enabled:
            return None
        path = self.path(key)
        try:
            payload = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None  # absent or torn: recompute
        return [Row(**r) for r in payload["rows"]]

    def put(self, key: dict[str, Any], rows: list[Row]) -> None:
        if not self.enabled:
            return
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        names = [f.name for f in fields(Row)]  # shallow: dataclasses.asdict deep-copies every settings dict
        payload = {"key": key, "rows": [{n: getattr(r, n) for n in names} for r in rows]}
        tmp.write_text(json.dumps(payload, default=str))
        tmp.replace(path)
