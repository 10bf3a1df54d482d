"""The one definition of a model's "average accuracy", used wherever an average over tasks is taken.

``avg_acc`` = the unweighted mean of ``acc`` over the *main* tasks of one task set. A subset task named
``<task>_hard`` (its items are also items of ``<task>``, e.g. ``agreement_hard``) is reported but never
averaged, so no item counts twice. Per run, the run's last evaluated step is used. ``rankscope eval``'s
``avg_acc`` rows, the report's downstream tables, findings F6 and P1 and the predictor's target all come
from these functions, so they print the same number (tests/test_downstream_average.py checks it).

A task set is the rows' ``note`` (e.g. the shipped offline tasks, a user task file, lm-eval tasks):
averages are never taken across task sets.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

METRIC = "acc"
SUBSET_SUFFIX = "_hard"


def averaged_tasks(tasks: Iterable[str]) -> list[str]:
    """The tasks that enter the average: all but ``<task>_hard`` subsets of a task that is also present."""
    names = [str(t) for t in tasks]
    present = set(names)
    return [t for t in names if not (t.endswith(SUBSET_SUFFIX) and t[: -len(SUBSET_SUFFIX)] in present)]


def definition(tasks: Iterable[str]) -> str:
    """The sentence printed next to the number: which tasks were averaged and which were left out."""
    names = sorted({str(t) for t in tasks})
    kept = averaged_tasks(names)
    left = sorted(set(names) - set(kept))
    text = f"unweighted mean of {METRIC} over {len(kept)} task(s): {', '.join(kept)}"
    if left:
        text += f" ({', '.join(left)}: a subset of another task, reported but not averaged)"
    return text


def final_task_accuracy(down: pd.DataFrame) -> pd.DataFrame:
    """Run × averaged task table of ``acc`` at each run's last evaluated step (empty when there is none)."""
    if down is None or down.empty:
        return pd.DataFrame()
    rows = down[(down["metric"] == METRIC) & (down["scope"] == "task") & down["value"].notna()]
    if rows.empty:
        return pd.DataFrame()
    rows = rows[rows["step"] == rows.groupby("run")["step"].transform("max")]
    table = rows.pivot_table(index="run", columns="name", values="value", aggfunc="mean")
    return table[averaged_tasks(table.columns)]


def average_accuracy(down: pd.DataFrame) -> pd.Series:
    """``avg_acc`` per run (index = run) at its last step, from the per-task rows of one task set."""
    table = final_task_accuracy(down)
    if table.empty:
        return pd.Series(dtype=float, name="avg_acc")
    return table.mean(axis=1).rename("avg_acc")


def task_sets(down: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The per-task rows of each task set (keyed by the rows' ``note``; one set when notes are absent)."""
    if down is None or down.empty:
        return {}
    notes = down["note"].fillna("").astype(str) if "note" in down else pd.Series("", index=down.index)
    return {str(n): grp for n, grp in down.groupby(notes, sort=True)}


def primary_task_set(down: pd.DataFrame) -> pd.DataFrame:
    """The task set F6, P1 and the predictor use: the shipped offline tasks when present, else the accuracy
    task set with most rows (held-out text or fine-tuning rows in the same frame are never a task set)."""
    from rankscope.downstream.tasks import SOURCE_NOTE

    sets = {n: g for n, g in task_sets(down).items() if g["metric"].isin([METRIC, "avg_acc"]).any()}
    if not sets:
        return down
    return sets[SOURCE_NOTE] if SOURCE_NOTE in sets else max(sets.values(), key=len)
