"""The report's downstream table: accuracy per task and method, its floors, and the one average per task set.

Each task row shows the two floors an accuracy must be read against: chance (a uniform guess among the
choices) and the majority-class rate (always giving the most common answer; only for tasks whose items share
one set of answers, e.g. the genre probe), both taken from the rows' settings, which ``rankscope eval``
computed on the scored items. The average row is ``avg_acc`` of downstream/average.py, with its definition
printed beside it, so the table, F6, P1 and the predictor show the same number.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from rankscope.downstream.average import METRIC, average_accuracy, averaged_tasks, definition, task_sets
from rankscope.report.glossary import metric_label
from rankscope.report.htmlkit import Html, esc, fmt, fmt_interval, table
from rankscope.report.plots_common import ordered


def _setting(value: Any, key: str) -> float | None:
    try:
        s = json.loads(value) if isinstance(value, str) else dict(value or {})
    except (TypeError, ValueError):
        return None
    v = s.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _rate(grp: pd.DataFrame, key: str) -> float | None:
    """Mean of a floor over the rows that carry it (equal for every model scored on the same items)."""
    vals = [v for v in (_setting(x, key) for x in grp["settings"]) if v is not None]
    return sum(vals) / len(vals) if vals else None


def _one_set(rows: pd.DataFrame) -> list[tuple]:
    methods = ordered(rows["method"].unique())
    out = []
    for (metric, task), grp in rows.groupby(["metric", "name"]):
        cells = []
        for m in methods:
            sub = grp[grp["method"] == m]
            ci = fmt_interval(sub["ci_low"].mean(), sub["ci_high"].mean())
            cells.append("–" if sub.empty else f"{fmt(sub['value'].mean())} {ci if ci != '–' else ''}".strip())
        majority = _rate(grp, "majority")
        out.append((task, metric_label(metric), _rate(grp, "chance"),
                    "–" if majority is None else majority, *cells))
    per_run = average_accuracy(rows)
    if not per_run.empty:
        run_method = rows.drop_duplicates("run").set_index("run")["method"]
        means = per_run.groupby(run_method.reindex(per_run.index)).mean()
        tasks = sorted(set(rows.loc[rows["metric"] == METRIC, "name"].astype(str)))
        label = Html(f"<b>average accuracy</b> ({esc(definition(tasks))})")
        out.append((label, metric_label("avg_acc"), "", "", *(fmt(means.get(m)) for m in methods)))
    return out


def downstream_table(down: pd.DataFrame) -> str:
    """One table per task set (the rows' note): tasks × methods, chance and majority rates, one average row."""
    if down is None or down.empty:
        return ""
    rows = down[(down["scope"] == "task") & down["value"].notna()]
    if rows.empty:
        return ""
    rows = rows[rows["step"] == rows.groupby("run")["step"].transform("max")]
    html = []
    for note, grp in task_sets(rows).items():
        methods = ordered(grp["method"].unique())
        head = ["task", "metric", "chance", "majority class", *methods]
        html.append(table(head, _one_set(grp)))
        if note:
            html.append(f'<p class="note">Task set: {esc(note)}.</p>')
    kept = averaged_tasks(rows["name"].astype(str).unique())
    html.append(
        '<p class="note">Each accuracy is the mean over seeds with the evaluator\'s 95% interval. Read it against '
        "<b>chance</b> (a uniform guess among the choices) and the <b>majority-class</b> rate (always giving the "
        "most common answer; only for tasks whose items share one set of answers, such as the genre probe; – where "
        "the answers differ from item to item, so there is no class to favour): an "
        "accuracy at the majority rate has learned nothing beyond label frequencies. The average is the one "
        f"definition used everywhere (eval output, F6, P1, the predictor); {len(kept)} task(s) enter it.</p>")
    return "".join(html)
