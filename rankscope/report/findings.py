"""The paper's findings F1–F7 (diagnostics.md §9) checked on the user's own runs.

These are findings of arXiv 2605.13652 at 60M–350M scale, not laws: the report checks each one at
the scale of *this* study against a within-method null (siblings: runs of one method from one start with another
data order; spec evidence.md), with seed-level intervals, and says so whenever the study has too few seeds or no
siblings for a verdict. The geometric checks F1–F5 live in ``findings_geometry``, F6 in ``finding_f6``, F7 in
``findings_downstream``. Everything here is pure: tables in, ``Finding`` objects out, so each verdict is
unit-testable on hand-made tables whose answer is known.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from rankscope.report.findings_downstream import check_f6, check_f7
from rankscope.report.findings_geometry import check_f3, check_f4, check_f5, versus_full
from rankscope.report.load import normalise_table, prefer_rows
from rankscope.report.stats import Estimate, Finding, pooled


def final_rows(diag: pd.DataFrame, metric: str, scope: str = "model") -> pd.DataFrame:
    """Rows of ``metric``/``scope`` at each run's last step, preferring mode "default" over "faithful"."""
    rows = prefer_rows(diag[(diag["metric"] == metric) & (diag["scope"] == scope)])
    if rows.empty:
        return rows
    last = rows.groupby("run")["step"].transform("max")
    return rows[rows["step"] == last]


def per_method(rows: pd.DataFrame) -> dict[str, Estimate]:
    """One estimate per method: runs (seeds) averaged, duplicate rows per run averaged first."""
    out: dict[str, Estimate] = {}
    for method, grp in rows.groupby("method"):
        by_run = grp.groupby("run").agg(value=("value", "mean"), stderr=("stderr", "mean"))
        out[str(method)] = pooled(by_run["value"].tolist(), by_run["stderr"].tolist())
    return out


RUN_COLUMNS = ["run", "method", "seed", "init_seed", "data_seed", "val_ppl"]


def _runs_frame(runs: Any) -> pd.DataFrame:
    """Normalise ``runs`` (RunInfo list, dicts, or a DataFrame) to columns run, method, seed, init_seed, data_seed
    (from meta.json; both = seed for older runs), val_ppl."""
    if isinstance(runs, pd.DataFrame):
        return runs
    records = []
    for r in runs or []:
        if isinstance(r, Mapping):
            records.append(dict(r))
        else:
            init = r.meta.get("init_seed", r.seed)
            records.append({"run": r.name, "method": r.method, "seed": r.seed, "init_seed": init,
                            "data_seed": r.meta.get("data_seed", init), "val_ppl": r.final_val_ppl})
    extra = [c for rec in records for c in rec if c not in RUN_COLUMNS]
    return pd.DataFrame(records, columns=RUN_COLUMNS + list(dict.fromkeys(extra)))


def evaluate_findings(
    diagnostics_df: pd.DataFrame | None,
    downstream_df: pd.DataFrame | None,
    prediction: Mapping[str, Any] | None,
    runs: Any,
    null_diagnostics_df: pd.DataFrame | None = None,
    null_downstream_df: pd.DataFrame | None = None,
    null_runs: Any = None,
) -> list[Finding]:
    """Check F1–F7 of diagnostics.md §9 on one study's tables; never raises for missing data.

    ``null_diagnostics_df``, ``null_downstream_df``, ``null_runs``: where the nulls come from when the compared runs
    have no siblings (parity models: the equal-step study's tables and runs)."""
    diag, down = normalise_table(diagnostics_df), normalise_table(downstream_df)
    null = normalise_table(null_diagnostics_df) if null_diagnostics_df is not None else None
    f1 = Finding(
        "F1",
        "Full-rank sits in a sharper basin than the low-rank methods along random directions.",
        "Per paired seed, rand_sharpness(full_rank) − rand_sharpness(m) for each low-rank method m (final step); "
        "'full-rank sharper' needs ≥ 5 paired seeds, a t interval excluding 0 (Holm across methods) and a "
        "difference beyond the sibling spread. Negative sharpness (no minimum along these directions): no verdict.",
    )
    versus_full(f1, diag, "rand_sharpness", True, ("full-rank sharper", "full-rank flatter"), null)
    f2 = Finding(
        "F2",
        "Along the top-1 SVD ('PCA') direction the order reverses: full-rank is flatter.",
        "Per paired seed, pca_top1_sharpness(m) − pca_top1_sharpness(full_rank), same rule as F1.",
    )
    versus_full(f2, diag, "pca_top1_sharpness", False, ("full-rank flatter", "full-rank sharper"), null)
    runs_frame = _runs_frame(runs)
    null_down = normalise_table(null_downstream_df) if null_downstream_df is not None else None
    null_runs_frame = _runs_frame(null_runs) if null_runs is not None else None
    return [
        f1,
        f2,
        check_f3(diag, null),
        check_f4(diag, null),
        check_f5(diag, null),
        check_f6(down, runs_frame, null_down=null_down, null_runs=null_runs_frame),
        check_f7(prediction or {}),
    ]
