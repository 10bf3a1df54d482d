"""F6 and F7: the findings about perplexity versus downstream accuracy (diagnostics.md §9).

Kept apart from the geometric checks because their uncertainty is different: F6 bootstraps the
Kendall τ between two method rankings (resampling tasks and seeds), F7 reads the paired bootstrap
interval the predictor already computed and never recomputes the regression here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from rankscope.report.stats import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    Estimate,
    Evidence,
    Finding,
    evidence_from,
    kendall_tau,
    percentile_interval,
    verdict_above,
)

N_BOOT = 1000


def _task_matrix(down: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Accuracy per (run, task), preferring ``acc`` over ``acc_norm``; empty if neither exists."""
    for metric in ("acc", "acc_norm"):
        rows = down[(down["metric"] == metric) & (down["scope"] == "task") & down["value"].notna()]
        if not rows.empty:
            last = rows.groupby("run")["step"].transform("max")
            rows = rows[rows["step"] == last]
            return rows.pivot_table(index="run", columns="name", values="value", aggfunc="mean"), metric
    return pd.DataFrame(), ""


def check_f6(down: pd.DataFrame, runs: pd.DataFrame, seed: int = 0) -> Finding:
    """Kendall τ between the method order by perplexity and by average accuracy; finding holds if τ < 1."""
    f = Finding(
        "F6",
        "Validation perplexity does not translate into downstream accuracy at every scale.",
        "Kendall τ between methods ranked by final validation perplexity (lower is better) and by "
        "average downstream accuracy is below 1; 95% bootstrap CI resampling tasks and seeds.",
    )
    acc, metric = _task_matrix(down)
    if acc.empty:
        f.reason = "missing: no per-task downstream accuracy rows"
        return f
    runs = runs[runs["val_ppl"].notna() & runs["run"].isin(acc.index)] if len(runs) else runs
    if runs.empty:
        f.reason = "missing: no run has both a final validation perplexity and downstream accuracy"
        return f
    acc = acc.loc[runs["run"]].dropna(axis=1)  # tasks every run was scored on
    methods = sorted(runs["method"].unique())
    if len(methods) < 3 or acc.shape[1] == 0:
        f.reason = f"inconclusive: needs ≥ 3 methods with perplexity and accuracy (have {len(methods)})"
        return f
    run_idx = {m: np.flatnonzero(runs["method"].to_numpy() == m) for m in methods}
    ppl = runs["val_ppl"].to_numpy(float)
    table = acc.to_numpy(float)

    def tau(task_ids: np.ndarray, picks: dict[str, np.ndarray]) -> float:
        mean_ppl = [ppl[picks[m]].mean() for m in methods]
        mean_acc = [table[np.ix_(picks[m], task_ids)].mean() for m in methods]
        return kendall_tau(-np.asarray(mean_ppl), np.asarray(mean_acc))  # both "higher is better"

    all_tasks = np.arange(table.shape[1])
    point = tau(all_tasks, run_idx)
    rng = np.random.default_rng(seed)
    boots = [
        tau(
            rng.choice(all_tasks, len(all_tasks)),
            {m: rng.choice(idx, len(idx)) for m, idx in run_idx.items()},
        )
        for _ in range(N_BOOT)
    ]
    lo, hi = percentile_interval(boots)
    if hi < 1:
        f.verdict, f.reason = HOLDS, "the τ interval lies below 1: the two rankings differ"
    elif lo >= 1:
        f.verdict, f.reason = FAILS, "τ = 1 in every resample: perplexity order equals accuracy order"
    else:
        f.verdict, f.reason = INCONCLUSIVE, f"τ interval [{lo:.3g}, {hi:.3g}] reaches 1"
    f.evidence.append(
        Evidence(
            "Kendall τ (perplexity order vs accuracy order)",
            point,
            lo,
            hi,
            f.verdict,
            f"{N_BOOT} bootstrap resamples over {table.shape[1]} tasks and seeds",
        )
    )
    for m in methods:
        f.evidence.append(
            Evidence(
                f"{m}: mean {metric} over {table.shape[1]} tasks",
                float(table[run_idx[m]].mean()),
                detail=f"final val ppl {ppl[run_idx[m]].mean():.4g}",
            )
        )
    f.notes.append(
        "One scale only: the paper's claim is across scales; here it reduces to 'the orders differ'."
    )
    return f


def _get(d: Mapping[str, Any], *keys: str) -> Any:
    for k in keys:
        if isinstance(d, Mapping) and k in d and d[k] is not None:
            return d[k]
    return None


def _interval(block: Mapping[str, Any], key: str) -> tuple[float, float]:
    ci = _get(block, f"{key}_ci", f"{key}_interval")
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(x, (int, float)) for x in ci):
        return float(ci[0]), float(ci[1])
    return math.nan, math.nan


def check_f7(prediction: Mapping[str, Any]) -> Finding:
    """Extended (log-PPL + metrics) minus baseline (log-PPL) CV R², paired bootstrap interval above 0."""
    f = Finding(
        "F7",
        "Adding geometric and spectral metrics to perplexity improves prediction of downstream accuracy.",
        "CV R² of log-PPL + metrics minus CV R² of log-PPL alone > 0 (paired bootstrap "
        "95% interval from the predictor); MAE difference used when R² is absent.",
    )
    if not prediction:
        f.reason = "missing: results/prediction.json"
        return f
    base, ext = _get(prediction, "baseline") or {}, _get(prediction, "extended") or {}
    diff = _get(prediction, "difference", "diff") or {}
    for key, sign in (("r2", 1.0), ("mae", -1.0)):  # lower MAE is better, so flip its sign
        b, e = _get(base, key), _get(ext, key)
        if b is not None:
            f.evidence.append(Evidence(f"baseline {key}", float(b), *_interval(base, key)))
        if e is not None:
            f.evidence.append(Evidence(f"extended {key}", float(e), *_interval(ext, key)))
        d = _get(diff, key)
        if d is None and b is not None and e is not None:
            d = float(e) - float(b)
        if d is None:
            continue
        lo, hi = _interval(diff, key)
        est = Estimate(
            sign * float(d),
            source="given",
            lo_given=min(sign * lo, sign * hi),
            hi_given=max(sign * lo, sign * hi),
        )
        v, why = verdict_above(est)
        if not est.has_interval:
            why = "no paired bootstrap interval for the difference in prediction.json"
        label = "extended − baseline R²" if key == "r2" else "baseline − extended MAE"
        f.evidence.append(evidence_from(label, est, v, why))
        f.verdict, f.reason = v, why or ("interval above 0" if v == HOLDS else "interval below 0")
        break
    else:
        f.reason = "missing: no r2 or mae for both baseline and extended in prediction.json"
    n = _get(prediction, "n_runs", "n")
    if n is not None:
        f.notes.append(f"n = {n} final models: exploratory at this size")
    for w in _get(prediction, "warnings") or []:
        f.notes.append(f"predictor warning: {w}")
    return f
