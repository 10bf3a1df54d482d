"""The paper's findings F1–F7 (diagnostics.md §9) checked on the user's own runs.

These are findings of arXiv 2605.13652 at 60M–350M scale, not laws: the report checks each one at
the scale of *this* study, with numbers and 95 % intervals, and says "inconclusive" whenever an
interval crosses the decision line or the data for a check is missing (and names what is missing).
Everything here is pure: tables in, ``Finding`` objects out, so each verdict is unit-testable on
hand-made tables whose answer is known.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from rankscope.report.findings_downstream import check_f6, check_f7
from rankscope.report.load import normalise_table, pair_labels, prefer_rows
from rankscope.report.stats import (
    FULL,
    INCONCLUSIVE,
    Estimate,
    Evidence,
    Finding,
    combine,
    difference,
    evidence_from,
    explain,
    kendall_tau,
    negate,
    ols_slope,
    pooled,
    verdict_above,
)


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


def _model_mean(diag: pd.DataFrame, metric: str) -> dict[str, Estimate]:
    """Model-scope rows when present, else the mean of the layer rows (stderr propagated)."""
    rows = final_rows(diag, metric, "model")
    if not rows.empty:
        return per_method(rows)
    layer = final_rows(diag, metric, "layer")
    if layer.empty:
        return {}
    agg = (
        layer.groupby(["method", "run"])
        .agg(
            value=("value", "mean"),
            stderr=("stderr", lambda s: math.sqrt(float(np.sum(np.square(s)))) / len(s)),
        )
        .reset_index()
    )
    return per_method(agg)


def _versus_full(diag: pd.DataFrame, metric: str, full_larger: bool) -> tuple[str, str, list[Evidence]]:
    """F1/F2: full-rank minus each low-rank method, oriented so "above 0" means the finding holds."""
    est = per_method(final_rows(diag, metric))
    if FULL not in est:
        return INCONCLUSIVE, f"missing: {metric} for {FULL}", []
    others = sorted(m for m in est if m != FULL)
    if not others:
        return INCONCLUSIVE, f"missing: {metric} for every low-rank method", []
    evidence, verdicts = [], []
    for m in others:
        diff = difference(est[FULL], est[m]) if full_larger else difference(est[m], est[FULL])
        v, why = verdict_above(diff)
        label = f"{FULL} − {m}" if full_larger else f"{m} − {FULL}"
        evidence.append(evidence_from(label, diff, v, why))
        verdicts.append(v)
    verdict = combine(verdicts)
    return verdict, explain(verdict, evidence), evidence


def _pair_steps(pair: str, row: pd.Series) -> str:
    """'step 240'; or, when the two models sit at their own steps (parity), each step with its method."""
    step, other = int(row["step"]), row.get("step_b")
    if other is None or pd.isna(other) or int(other) == step:
        return f"step {step}"
    a, _, b = pair.partition(" ↔ ")
    other_method = b if a == row["method"] else a
    return f"steps {step} ({row['method']}), {int(other)} ({other_method})"


def check_f3(diag: pd.DataFrame) -> Finding:
    f = Finding(
        "F3",
        "Each method converges to a geometrically distinct basin.",
        "imib (= IMBH, one quantity) > 0 (95% interval above 0) for every method pair at the final step; trend over steps "
        "reported as Kendall τ(step, imib), for context only.",
    )
    rows = diag[(diag["metric"] == "imib") & (diag["scope"] == "pair")].copy()
    if rows.empty:
        f.reason = "missing: no imib rows"
        return f
    rows["pair"] = pair_labels(rows, diag)
    excluded = rows[rows["value"].isna()]
    for pair in sorted(set(excluded["pair"])):
        note = excluded[excluded["pair"] == pair]["note"].dropna().astype(str)
        f.notes.append(f"{pair}: {note.iloc[0] if len(note) and note.iloc[0] else 'excluded: no value'}")
    rows = rows[rows["value"].notna()]
    if rows.empty:
        f.reason = "missing: every imib row is NaN"
        return f
    # Each pair's own last step: at parity the two models of a pair sit at different steps, and pairs differ.
    final = rows[rows["step"] == rows.groupby("pair")["step"].transform("max")]
    verdicts = []
    for pair, grp in final.groupby("pair"):
        est = per_method(grp.assign(method=pair))[pair]
        v, why = verdict_above(est)
        verdicts.append(v)
        f.evidence.append(evidence_from(f"imib {pair} @ {_pair_steps(pair, grp.iloc[0])}", est, v, why))
    for pair, grp in rows.groupby("pair"):
        series = grp.groupby("step")["value"].mean()
        if len(series) >= 3:
            tau = kendall_tau(series.index.to_numpy(float), series.to_numpy(float))
            f.evidence.append(Evidence(f"trend τ(step, imib) {pair}", tau, detail=f"{len(series)} steps"))
    f.verdict = combine(verdicts)
    f.reason = explain(f.verdict, f.evidence)
    return f


def _layer_index(name: str) -> float:
    try:
        return float(int(name))
    except ValueError:
        return math.nan  # e.g. the final-norm output: not on the depth axis


def check_f4(diag: pd.DataFrame) -> Finding:
    f = Finding(
        "F4",
        "Low-rank activations diverge from full-rank in later layers as training proceeds.",
        "Per low-rank method: OLS slope of act_cka on layer index at the final step < 0, and slope of "
        "the deeper half's mean act_cka over steps < 0 (t-based 95% intervals).",
    )
    rows = prefer_rows(diag[(diag["metric"] == "act_cka") & (diag["scope"] == "layer")]).copy()
    rows = rows[rows["method"] != FULL]
    if rows.empty:
        f.reason = "missing: no layer-scope act_cka rows for low-rank methods"
        return f
    rows["layer"] = rows["name"].map(_layer_index)
    rows = rows[rows["layer"].notna() & rows["value"].notna()]
    method_verdicts = []
    for method, grp in rows.groupby("method"):
        last = grp.groupby("run")["step"].transform("max")
        final = grp[grp["step"] == last].groupby("layer")["value"].mean()
        depth = negate(ols_slope(final.index.to_numpy(float), final.to_numpy(float)))
        v1, why1 = verdict_above(depth) if depth.n >= 3 else (INCONCLUSIVE, "fewer than 3 layers")
        f.evidence.append(evidence_from(f"{method}: −slope of CKA over depth", depth, v1, why1))
        deep = grp[grp["layer"] >= np.median(grp["layer"].unique())]
        series = deep.groupby("step")["value"].mean()
        trend = negate(ols_slope(series.index.to_numpy(float) / 1000.0, series.to_numpy(float)))
        v2, why2 = verdict_above(trend) if trend.n >= 3 else (INCONCLUSIVE, "fewer than 3 steps")
        f.evidence.append(evidence_from(f"{method}: −slope of deep-layer CKA per 1k steps", trend, v2, why2))
        method_verdicts.append(combine([v1, v2]))
    f.verdict = combine(method_verdicts)
    f.reason = explain(f.verdict, f.evidence)
    f.notes.append(
        "Slopes are negated so that 'above 0' means 'CKA decreases', the direction of the finding."
    )
    f.notes.append("Layer 0 is the embedding output; the highest layer id is the final-norm output.")
    return f


def check_f5(diag: pd.DataFrame) -> Finding:
    f = Finding(
        "F5",
        "GaLore tracks full-rank most closely.",
        "GaLore's mean act_cka across layers exceeds every other low-rank method's, and its act_rel_l2 "
        "is below theirs (final step).",
    )
    cka = {m: e for m, e in _model_mean(diag, "act_cka").items() if m != FULL}
    if "galore" not in cka:
        f.reason = "missing: act_cka for galore" if cka else "missing: no act_cka rows"
        return f
    others = sorted(m for m in cka if m != "galore")
    if not others:
        f.reason = "missing: no other low-rank method with act_cka to compare against"
        return f
    l2 = {m: e for m, e in _model_mean(diag, "act_rel_l2").items() if m != FULL}
    verdicts = []
    for m in others:
        diff = difference(cka["galore"], cka[m])
        v, why = verdict_above(diff)
        verdicts.append(v)
        f.evidence.append(evidence_from(f"act_cka: galore − {m}", diff, v, why))
        if "galore" in l2 and m in l2:
            diff = difference(l2[m], l2["galore"])
            v, why = verdict_above(diff)
            verdicts.append(v)
            f.evidence.append(evidence_from(f"act_rel_l2: {m} − galore", diff, v, why))
    if "galore" not in l2:
        f.notes.append("act_rel_l2 missing: verdict uses act_cka only")
    f.verdict = combine(verdicts)
    f.reason = explain(f.verdict, f.evidence)
    return f


def _runs_frame(runs: Any) -> pd.DataFrame:
    """Normalise ``runs`` (RunInfo list, dicts, or a DataFrame) to columns run, method, seed, val_ppl."""
    if isinstance(runs, pd.DataFrame):
        return runs
    records = []
    for r in runs or []:
        if isinstance(r, Mapping):
            records.append(dict(r))
        else:
            records.append({"run": r.name, "method": r.method, "seed": r.seed, "val_ppl": r.final_val_ppl})
    return pd.DataFrame(records, columns=["run", "method", "seed", "val_ppl"])


def evaluate_findings(
    diagnostics_df: pd.DataFrame | None,
    downstream_df: pd.DataFrame | None,
    prediction: Mapping[str, Any] | None,
    runs: Any,
) -> list[Finding]:
    """Check F1–F7 of diagnostics.md §9 on one study's tables; never raises for missing data."""
    diag, down = normalise_table(diagnostics_df), normalise_table(downstream_df)
    f1 = Finding(
        "F1",
        "Full-rank sits in a sharper basin than the low-rank methods along random directions.",
        "rand_sharpness(full_rank) − rand_sharpness(m) > 0 for each low-rank method m (final step).",
    )
    f1.verdict, f1.reason, f1.evidence = _versus_full(diag, "rand_sharpness", full_larger=True)
    f2 = Finding(
        "F2",
        "Along the top-1 SVD ('PCA') direction the order reverses: full-rank is flatter.",
        "pca_top1_sharpness(m) − pca_top1_sharpness(full_rank) > 0 for each low-rank method m.",
    )
    f2.verdict, f2.reason, f2.evidence = _versus_full(diag, "pca_top1_sharpness", full_larger=False)
    return [
        f1,
        f2,
        check_f3(diag),
        check_f4(diag),
        check_f5(diag),
        check_f6(down, _runs_frame(runs)),
        check_f7(prediction or {}),
    ]
