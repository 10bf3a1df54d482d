"""Per-item downstream results: which items each model got right, next to the downstream table.

Why: a difference of accuracy between two models that answered the *same* items is much better known than the two
accuracies' separate errors suggest (the models agree on most items), and a multi-bootstrap over items must draw
the same items for every model. The task table keeps one row per task; this file keeps one row per scored item.

File: ``<table stem>_items.parquet`` next to ``<table stem>.parquet`` (``results/downstream_items.parquet`` of a
run folder, of a study and of its parity models). Parquet, not JSONL: the same reader as every other table, typed
columns and dictionary-encoded run/task names keep ~20 models × 10 tasks × 100 items (40 000 rows with
``acc_norm``) at 126 kB (65 kB without margins), and no text parsing on read. Columns: ``run, method, step,
task_set`` (the task table's ``note``), ``task, metric, item`` (the item's index in the task's item list, so a
task capped by ``max_items`` still names the same items for every model scored with the same seed), ``correct``
(0/1) and ``margin`` (log-likelihood of the right choice minus the best wrong one, by ``metric``'s rule, rounded
to 0.01 nats; NaN for the probe). Studies written before this file existed have none: readers get ``None`` and
fall back to the evaluator's standard errors (the report says which was used).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS = ("run", "method", "step", "task_set", "task", "metric", "item", "correct", "margin")
SUFFIX = "_items"
MARGIN_DECIMALS = 2  # 0.01 nats is plenty for a margin, and rounded margins compress (300 kB -> 126 kB for 40 000)


def items_path(table: str | Path) -> Path:
    """``…/downstream.parquet`` (or the stem ``…/downstream``) -> ``…/downstream_items.parquet``."""
    table = Path(table)
    stem = table.with_suffix("") if table.suffix in (".parquet", ".csv") else table
    return stem.with_name(stem.name + SUFFIX + ".parquet")


def score_item_rows(scores: Sequence, run: str, method: str, step: int, task_set: str) -> pd.DataFrame:
    """One row per scored item of every TaskScore that kept its items (averages keep none)."""
    parts = []
    for s in scores:
        if getattr(s, "correct", None) is None:
            continue
        n = len(s.correct)
        ids = np.arange(n) if s.item_ids is None else np.asarray(s.item_ids)
        margin = np.full(n, np.nan) if s.margin is None else np.asarray(s.margin, dtype=float)
        parts.append(pd.DataFrame({"run": run, "method": method, "step": int(step), "task_set": task_set,
                                   "task": s.task, "metric": s.metric, "item": ids.astype("int64"),
                                   "correct": np.asarray(s.correct).astype("int8"),
                                   "margin": margin.round(MARGIN_DECIMALS).astype("float32")}))
    return pd.concat(parts, ignore_index=True) if parts else empty()


def empty() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(COLUMNS, ("object", "object", "int64", "object",
                                                                         "object", "object", "int64", "int8",
                                                                         "float32"), strict=True)})


def write_items(frame: pd.DataFrame, table: str | Path) -> Path:
    """Write the item rows of the table ``table`` atomically (temp file, then rename); returns the path."""
    path = items_path(table)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)
    return path


def read_items(table: str | Path) -> pd.DataFrame | None:
    """The item rows next to ``table``; None when the file does not exist (older studies) or cannot be used
    (unreadable, columns missing): readers then fall back to the evaluator's standard errors and say so."""
    path = items_path(table)
    if not path.is_file():
        return None
    try:
        frame = pd.read_parquet(path)
    except Exception:  # noqa: BLE001 - a damaged optional file means "no per-item rows", never a crash
        return None
    return frame if set(COLUMNS) <= set(frame.columns) else None


def primary_items(items: pd.DataFrame) -> pd.DataFrame:
    """The item rows of the task set F6, P1 and the predictor average (downstream/average.py's rule: the shipped
    tasks when present, else the task set with most rows), metric ``acc``, each run at its last step."""
    from rankscope.downstream.average import METRIC
    from rankscope.downstream.tasks import SOURCE_NOTE

    rows = items[items["metric"] == METRIC]
    if rows.empty:
        return rows
    sets = rows["task_set"].astype(str)
    chosen = SOURCE_NOTE if (sets == SOURCE_NOTE).any() else sets.value_counts().idxmax()
    rows = rows[sets == chosen]
    return rows[rows["step"] == rows.groupby("run")["step"].transform("max")]


def acc_matrices(items: pd.DataFrame | None, runs: Sequence[str]) -> dict[str, np.ndarray] | None:
    """Per averaged task, a ``[len(runs), n_t]`` 0/1 matrix: the items of that task every run answered, in item
    order. None when there are no rows, a run has none, or the runs share no item of some task (then the
    caller falls back to the evaluator's standard errors)."""
    from rankscope.downstream.average import averaged_tasks

    if items is None or items.empty or not len(runs):
        return None
    rows = primary_items(items)
    rows = rows[rows["run"].isin(list(runs))]
    if rows.empty or set(rows["run"]) != set(runs):
        return None
    table = rows.pivot_table(index="run", columns=["task", "item"], values="correct", aggfunc="mean")
    tasks = averaged_tasks(dict.fromkeys(table.columns.get_level_values(0)))
    out = {}
    for task in tasks:
        block = table[task].reindex(list(runs)).dropna(axis=1)  # items every run answered
        if block.shape[1] == 0:
            return None
        out[task] = block.to_numpy(float)
    return out or None


def item_average(mats: dict[str, np.ndarray]) -> np.ndarray:
    """Per run (row): downstream/average.py's average accuracy from the per-task item matrices."""
    return np.mean([m.mean(axis=1) for m in mats.values()], axis=0)
