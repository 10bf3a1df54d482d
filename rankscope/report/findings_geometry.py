"""F1–F5, the geometric findings, decided against within-method nulls (spec evidence.md §2, §4–5).

Each comparison is paired by seed (two methods' runs with the same init_seed and data_seed) and measured against
what two runs of one method from one start (siblings) already differ by: the sibling barrier for F3, the sibling
spread for sharpness (F1, F2) and CKA (F5), the CKA ceiling for F4. The words come from
:mod:`rankscope.report.verdict_rules`; a finding without siblings says "no null: run siblings".

``null_diag``: a second table to take the null from when ``diag`` has no siblings (the parity models: their
siblings are the equal-step ones); every finding that does so says it in a note (both decided by
:func:`rankscope.report.nulls.null_or_fallback`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from rankscope.report.load import prefer_rows
from rankscope.report.nulls import (
    NULL_FROM_EQUAL_STEPS,
    SIBLING,
    barriers,
    deciding_metric,
    method_values,
    null_or_fallback,
    paired,
    per_run,
    seed_null,
    sibling_spread,
)
from rankscope.report.stats import FAILS, FULL, HOLDS, INCONCLUSIVE, Evidence, Finding, kendall_tau, ols_slope
from rankscope.report.verdict_rules import (
    NOT_MINIMUM,
    RowVerdict,
    basin_verdicts,
    combine_rows,
    paired_verdicts,
)


def evidence_row(label: str, r: RowVerdict) -> Evidence:
    """An Evidence row with the seed-level columns: n, n_null, effect in units of the null, p-values."""
    parts = []
    if math.isfinite(r.p):
        parts.append(f"p = {r.p:.3g}" + (f", Holm {r.p_holm:.3g}" if math.isfinite(r.p_holm) else ""))
    if r.detail:
        parts.append(r.detail)
    units = f"{r.null_units:.3g} {r.null_unit_label}" if math.isfinite(r.null_units) else ""
    return Evidence(label, r.effect, r.lo, r.hi, r.word, "; ".join(parts), r.n, r.n_null, units)


def _spread(vals: pd.DataFrame, metric: str, null_diag: pd.DataFrame | None, notes: list[str],
            diag: pd.DataFrame | None = None) -> tuple[float, int]:
    """Sibling spread of the per-run values ``vals``; from ``null_diag`` (with a note) when they have none."""
    (spread, df), fell_back = null_or_fallback(sibling_spread(vals), null_diag,
                                               lambda t: sibling_spread(per_run(t, metric)), own=diag)
    if fell_back:
        notes.append(NULL_FROM_EQUAL_STEPS)
    return spread, df


def versus_full(f: Finding, diag: pd.DataFrame, metric: str, full_larger: bool, words: tuple[str, str],
                null_diag: pd.DataFrame | None = None) -> Finding:
    """F1/F2: full-rank against each low-rank method, paired by seed; negative sharpness is no minimum."""
    use, note = deciding_metric(diag, metric)
    if note:
        f.notes.append(note)
    vals = per_run(diag, use)
    methods = set(vals.loc[vals["null"] != SIBLING, "method"])
    if FULL not in methods:
        f.reason = f"missing: {use} for {FULL}"
        return f
    others = sorted(methods - {FULL})
    if not others:
        f.reason = f"missing: {use} for every low-rank method"
        return f
    spread, df = _spread(vals, use, null_diag, f.notes, diag)
    diffs = []
    for m in others:
        d, _ = paired(vals, FULL, m)
        diffs.append(d if full_larger else -d)
    rows = paired_verdicts(diffs, spread, df, words)
    full_vals = method_values(vals, FULL)
    for m, row in zip(others, rows, strict=True):
        negative = [x for x, v in ((FULL, full_vals), (m, method_values(vals, m))) if np.any(v < 0)]
        if negative:
            row.word, row.confirmed = NOT_MINIMUM, 0
            row.detail = (f"negative {use} for {', '.join(negative)}: the loss falls on both sides, so no "
                          "sharper/flatter verdict")
        label = f"{use}: {FULL} − {m}" if full_larger else f"{use}: {m} − {FULL}"
        f.evidence.append(evidence_row(label, row))
        if not len(diffs[others.index(m)]):
            f.evidence[-1].detail = "no paired seeds (no run of both methods with the same init and data seed)"
    if math.isfinite(spread):
        f.evidence.append(Evidence(f"sibling spread of {use} (null)", spread, detail="pooled SD over data orders",
                                   n_null=df))
    f.verdict, f.reason = combine_rows(rows, words[0], HOLDS, FAILS)
    if any(r.word == NOT_MINIMUM for r in rows):
        f.notes.append(f"{NOT_MINIMUM}: a negative curvature estimate gives no sharper/flatter verdict")
    return f


def _pair_steps(pair: str, row: pd.Series) -> str:
    """'step 240'; or, when the two models sit at their own steps (parity), each step with its method."""
    step, other = int(row["step"]), row.get("step_b")
    if other is None or pd.isna(other) or int(other) == step:
        return f"step {step}"
    a, _, b = pair.partition(" ↔ ")
    other_method = b if a == row["method"] else a
    return f"steps {step} ({row['method']}), {int(other)} ({other_method})"


def check_f3(diag: pd.DataFrame, null_diag: pd.DataFrame | None = None) -> Finding:
    f = Finding(
        "F3",
        "Each method converges to a geometrically distinct basin.",
        "Per method pair and paired seed: cross barrier (imib, = IMBH) minus the sibling barrier from the same start "
        "(same step, α grid and sequences); 'distinct' needs ≥ 5 paired seeds, exact sign-flip p < 0.05 after Holm "
        "across pairs and a cross barrier ≥ 2 × the sibling mean; 'connected' if within the siblings' range. "
        "Trend over steps: Kendall τ(step, imib), context only.",
    )
    use, note = deciding_metric(diag, "imib")
    if note:
        f.notes.append(note)
    pair_rows = diag[(diag["metric"] == use) & (diag["scope"] == "pair")]
    if pair_rows.empty:
        f.reason = f"missing: no {use} rows"
        return f
    from rankscope.report.load import pair_labels

    nan_rows = pair_rows[pair_rows["value"].isna()]
    if not nan_rows.empty:
        labels = pair_labels(nan_rows, diag)
        for pair in sorted(set(labels)):
            note_txt = nan_rows[[lab == pair for lab in labels]]["note"].astype(str)
            f.notes.append(f"{pair}: {note_txt.iloc[0] if len(note_txt) and note_txt.iloc[0] else 'excluded: no value'}")
    b = barriers(diag, use, null_diag)
    f.notes += b.unpaired
    if not b.cross:
        f.reason = f"missing: every cross-method {use} row is NaN" if not nan_rows.empty else f"missing: no cross-method {use} rows"
        return f
    if b.siblings_from_fallback:
        f.notes.append(NULL_FROM_EQUAL_STEPS)
    pairs = sorted(b.cross)
    cross = [b.cross[p]["value"].to_numpy(float) for p in pairs]
    nulls = [seed_null(b, p, b.cross[p]["init_seed"].to_numpy(float)) for p in pairs]
    rows = basin_verdicts(cross, nulls, b.siblings["value"].to_numpy(float))
    for pair, row in zip(pairs, rows, strict=True):
        f.evidence.append(evidence_row(f"{use} {pair} − sibling @ {_pair_steps(pair, b.cross[pair].iloc[0])}", row))
    if not b.siblings.empty:
        sv = b.siblings["value"].to_numpy(float)
        f.evidence.append(Evidence(f"sibling barrier {use} (null)", float(sv.mean()), float(sv.min()), float(sv.max()),
                                   detail="mean; the interval column shows the range", n_null=len(sv)))
    trend = prefer_rows(diag[(diag["metric"] == use) & (diag["scope"] == "pair") & diag["value"].notna()
                             & (diag["null"] != SIBLING)])
    if not trend.empty:
        trend = trend.assign(pair=pair_labels(trend, diag))
        for pair, grp in trend.groupby("pair"):
            series = grp.groupby("step")["value"].mean()
            if len(series) >= 3:
                tau = kendall_tau(series.index.to_numpy(float), series.to_numpy(float))
                f.evidence.append(Evidence(f"trend τ(step, {use}) {pair}", tau, detail=f"{len(series)} steps"))
    f.verdict, f.reason = combine_rows(rows, "distinct", HOLDS, FAILS)
    return f


def _layer_index(name: str) -> float:
    try:
        return float(int(name))
    except ValueError:
        return math.nan  # e.g. the final-norm output: not on the depth axis


def depth_slopes(diag: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per run at its last step: OLS slope of the layer rows of ``metric`` on layer index."""
    rows = prefer_rows(diag[(diag["metric"] == metric) & (diag["scope"] == "layer") & diag["value"].notna()]).copy()
    rows["layer"] = rows["name"].map(_layer_index)
    rows = rows[rows["layer"].notna()]
    rows = rows[rows["step"] == rows.groupby("run")["step"].transform("max")]
    out = []
    for (run, method, init, data, null), grp in rows.groupby(["run", "method", "init_seed", "data_seed", "null"],
                                                             dropna=False):
        per_layer = grp.groupby("layer")["value"].mean()
        if len(per_layer) >= 3:
            slope = ols_slope(per_layer.index.to_numpy(float), per_layer.to_numpy(float)).value
            out.append((run, method, init, data, null, slope))
    return pd.DataFrame(out, columns=["run", "method", "init_seed", "data_seed", "null", "value"])


def _ceiling_slopes(diag: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The depth slopes of the CKA ceiling (the sibling rows) alone."""
    slopes = depth_slopes(diag, metric)
    return slopes[slopes["null"] == SIBLING]


def check_f4(diag: pd.DataFrame, null_diag: pd.DataFrame | None = None) -> Finding:
    f = Finding(
        "F4",
        "Low-rank activations diverge from full-rank in later layers as training proceeds.",
        "Per low-rank method and paired seed: slope of act_cka over layer index at the final step minus the slope "
        "of the CKA ceiling (a full-rank sibling against the reference) from the same start, negated so that > 0 "
        "means 'falls faster with depth than a sibling does'; against the spread of the siblings' slopes. "
        "Slope of the deeper half's CKA over steps: context only.",
    )
    use, note = deciding_metric(diag, "act_cka")
    if note:
        f.notes.append(note)
    slopes = depth_slopes(diag, use)
    low = slopes[(slopes["method"] != FULL) & (slopes["null"] != SIBLING)]
    if low.empty:
        f.reason = f"missing: no layer-scope {use} rows (≥ 3 layers) for low-rank methods"
        return f
    ceiling, fell_back = null_or_fallback(slopes[slopes["null"] == SIBLING], null_diag,
                                          lambda t: _ceiling_slopes(t, use), own=diag)
    if fell_back:
        f.notes.append(NULL_FROM_EQUAL_STEPS)
    spread, df = sibling_spread(ceiling) if not ceiling.empty else (math.nan, 0)
    methods = sorted(low["method"].unique())
    diffs = []
    for m in methods:
        mine = low[low["method"] == m]
        base = [ceiling.loc[ceiling["init_seed"] == s, "value"].mean() if not ceiling.empty else math.nan
                for s in mine["init_seed"]]
        base = np.where(np.isfinite(base), base, ceiling["value"].mean() if not ceiling.empty else 0.0)
        diffs.append(-(mine["value"].to_numpy(float) - base))
    rows = paired_verdicts(diffs, spread, df, ("diverges with depth", "converges with depth"))
    for m, row in zip(methods, rows, strict=True):
        f.evidence.append(evidence_row(f"{m}: −(CKA depth slope − ceiling slope)", row))
    if not ceiling.empty:
        f.evidence.append(Evidence("ceiling depth slope (full-rank sibling)", float(ceiling["value"].mean()),
                                   n_null=len(ceiling)))
    _time_trend(f, diag, use)
    f.verdict, f.reason = combine_rows(rows, "diverges with depth", HOLDS, FAILS)
    f.notes.append("Layer 0 is the embedding output; the highest layer id is the final-norm output.")
    return f


def _time_trend(f: Finding, diag: pd.DataFrame, metric: str) -> None:
    rows = prefer_rows(diag[(diag["metric"] == metric) & (diag["scope"] == "layer") & diag["value"].notna()
                            & (diag["method"] != FULL) & (diag["null"] != SIBLING)]).copy()
    rows["layer"] = rows["name"].map(_layer_index)
    rows = rows[rows["layer"].notna()]
    for method, grp in rows.groupby("method"):
        deep = grp[grp["layer"] >= np.median(grp["layer"].unique())]
        series = deep.groupby("step")["value"].mean()
        if len(series) >= 3:
            est = ols_slope(series.index.to_numpy(float) / 1000.0, series.to_numpy(float))
            f.evidence.append(Evidence(f"{method}: slope of deep-layer CKA per 1k steps", est.value, est.lo, est.hi,
                                       detail=f"t interval over {est.n} steps (context)"))


def check_f5(diag: pd.DataFrame, null_diag: pd.DataFrame | None = None) -> Finding:
    f = Finding(
        "F5",
        "GaLore tracks full-rank most closely.",
        "Per paired seed: GaLore's mean act_cka to full-rank minus each other low-rank method's; 'more similar' "
        "needs ≥ 5 paired seeds, t interval excluding 0 (Holm across methods) and a difference beyond the sibling "
        "spread of CKA. The CKA ceiling (a full-rank sibling) and act_rel_l2 are context.",
    )
    use, note = deciding_metric(diag, "act_cka")
    if note:
        f.notes.append(note)
    vals = per_run(diag, use)
    ordinary = vals[vals["null"] != SIBLING]
    cka_methods = set(ordinary["method"])
    if "galore" not in cka_methods:
        f.reason = f"missing: {use} for galore" if cka_methods else f"missing: no {use} rows"
        return f
    others = sorted(cka_methods - {"galore", FULL})
    if not others:
        f.reason = "missing: no other low-rank method with act_cka to compare against"
        return f
    spread, df = _spread(vals, use, null_diag, f.notes, diag)
    rows = paired_verdicts([paired(vals, "galore", m)[0] for m in others], spread, df,
                           ("galore more similar", "galore less similar"))
    for m, row in zip(others, rows, strict=True):
        f.evidence.append(evidence_row(f"{use}: galore − {m}", row))
    ceiling = vals[vals["null"] == SIBLING]["value"]
    if not ceiling.empty:
        g = float(method_values(vals, "galore").mean())
        f.evidence.append(Evidence(f"CKA ceiling ({use}, full-rank sibling ↔ reference)", float(ceiling.mean()),
                                   n_null=len(ceiling), detail=f"galore / ceiling = {g / float(ceiling.mean()):.3g}"))
    l2 = per_run(diag, "act_rel_l2")
    for m in others:
        d, _ = paired(l2, m, "galore")
        if len(d):
            f.evidence.append(Evidence(f"act_rel_l2: {m} − galore", float(d.mean()), n=len(d), detail="context"))
    f.verdict, f.reason = combine_rows(rows, "galore more similar", HOLDS, FAILS)
    return f


__all__ = ["INCONCLUSIVE", "check_f3", "check_f4", "check_f5", "versus_full"]
