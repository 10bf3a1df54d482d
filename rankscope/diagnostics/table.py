"""The long-format results table every diagnostic, evaluation and predictor writes rows into.

One row = one number: (run, method, step, metric, value) plus where it applies (scope/name), in which
parameter space it was computed, its statistical error, and the settings that produced it.

Seeds and nulls (docs/study.md "Seeds, siblings and nulls"): ``seed`` is the run's init seed (kept for
older readers), ``init_seed``/``data_seed`` the two seeds of the run; ``null`` is ``"sibling"`` for a row
computed between two runs of one method (sibling barrier, CKA ceiling), ``""`` otherwise.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd

COLUMNS = [
    "run", "method", "scale", "seed", "init_seed", "data_seed", "step", "step_b", "metric", "value", "stderr", "ci_low", "ci_high",
    "scope", "name",
    "space", "mode", "n_tokens", "settings_hash", "settings", "note", "null",
]
#: Values of the ``null`` column: an ordinary row, or a row between two runs of one method.
NULL_KINDS = ("", "sibling")


@dataclass
class Row:
    run: str
    method: str
    step: int
    metric: str
    value: float
    stderr: float | None = None  # standard error across directions / batches / bootstrap, when defined
    ci_low: float | None = None  # 95% confidence interval, when the metric has one (bootstrap)
    ci_high: float | None = None
    scope: str = "model"  # model | layer | matrix | type | pair | task
    name: str = ""  # layer index, matrix name, matrix type, other method, task name...
    space: str = "dense"  # dense | native | factor | linear_product
    mode: str = "default"  # default | faithful
    scale: str = ""  # model preset
    seed: int | None = None  # the init seed (equal to init_seed)
    init_seed: int | None = None
    data_seed: int | None = None
    step_b: int | None = None  # second step of a pair (updates, consecutive interpolation)
    n_tokens: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    note: str = ""  # e.g. "excluded: no dense form"
    null: str = ""  # "sibling": computed between two runs of one method (a within-method null)

    def to_record(self) -> dict[str, Any]:
        rec = {f.name: getattr(self, f.name) for f in fields(self)}  # asdict() would deep-copy settings
        rec["settings_hash"] = settings_hash(self.settings)
        rec["settings"] = json.dumps(self.settings, sort_keys=True, default=str)
        return rec


def settings_hash(settings: dict[str, Any]) -> str:
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:12]


def rows_to_frame(rows: list[Row]) -> pd.DataFrame:
    frame = pd.DataFrame([r.to_record() for r in rows], columns=COLUMNS)
    return frame.astype({"step": "int64"}) if len(frame) else frame


def write_table(frame: pd.DataFrame, path_stem: Path) -> tuple[Path, Path]:
    """Write ``<stem>.parquet`` and ``<stem>.csv`` atomically (temp file, then rename)."""
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    outs = []
    for suffix, writer in ((".parquet", frame.to_parquet), (".csv", frame.to_csv)):
        final = path_stem.with_suffix(suffix)
        tmp = final.with_name(final.name + ".tmp")
        writer(tmp, index=False)
        tmp.replace(final)
        outs.append(final)
    return outs[0], outs[1]


def read_table(path: Path) -> pd.DataFrame:
    path = Path(path)
    if path.suffix == ".csv":
        return pd.read_csv(path)
    return pd.read_parquet(path)
