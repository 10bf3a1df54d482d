"""Within-method nulls and paired seeds, read from the diagnostics table (spec evidence.md §1–2).

The table says which runs share a start: ``init_seed`` and ``data_seed`` per row (older tables: both = ``seed``),
and ``null == "sibling"`` on rows computed between two runs of one method (sibling barriers; the CKA ceiling:
CKA of a full-rank sibling to the reference full-rank run). From that this module builds, per metric:

* paired values: for two methods, the runs that share (init_seed, data_seed), one difference per paired seed;
* the sibling spread: the standard deviation within groups of runs of one method from one start (same
  init_seed, other data_seed), pooled over groups;
* the sibling barriers and the CKA ceiling;
* the fallback null (:func:`null_or_fallback`): the parity models have no siblings, so their findings take the
  null from the equal-step table and say so with the note :data:`NULL_FROM_EQUAL_STEPS`.

It also picks the estimator a verdict decides on (:data:`DECIDING`): the cross-fitted barrier, the
filter-normalised sharpness and the debiased CKA when the table has them, else the raw metric with a note.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import pandas as pd

from rankscope.report.load import prefer_rows
from rankscope.report.seedstats import pooled_sd

SIBLING = "sibling"
# metric shown in the paper -> the estimators a verdict prefers, first match wins (spec evidence.md §3)
DECIDING = {
    "imib": ("imib_xfit",),  # cross-fitted: argmax α on one half of the sequences, value on the other
    "ckpt_barrier": ("ckpt_barrier_xfit",),
    "rand_sharpness": ("rand_sharpness_fn",),  # filter/row-normalised random directions
    "rand_variance": ("rand_variance_fn",),
    "act_cka": ("act_cka_debiased",),
}
REFERENCE_METRICS = ("act_cka", "act_cka_debiased", "act_cos", "act_rel_l2", "act_l2")  # measured against full-rank
NULL_FROM_EQUAL_STEPS = "null from the equal-step siblings (the parity models have none)"

T = TypeVar("T")


def _missing(null: pd.DataFrame | tuple[float, int] | float) -> bool:
    """No null: an empty table, or a non-finite spread (a bare number or the first of (spread, df))."""
    if isinstance(null, pd.DataFrame):
        return null.empty
    value = null[0] if isinstance(null, tuple) else null
    return not math.isfinite(float(value))


def null_or_fallback(primary: T, fallback: pd.DataFrame | None, compute: Callable[[pd.DataFrame], T],
                     own: pd.DataFrame | None = None) -> tuple[T, bool]:
    """(null, whether it came from ``fallback``): ``primary`` unless it is missing (see :func:`_missing`), else
    ``compute(fallback)``. The one place that decides when a finding's null comes from the equal-step table;
    a caller that gets True says so with :data:`NULL_FROM_EQUAL_STEPS`. ``own``: the table ``primary`` came
    from; a fallback that is that very table is not used (it would give the same nothing again)."""
    if not _missing(primary) or fallback is None or fallback is own:
        return primary, False
    null = compute(fallback)  # returned even when missing too: the caller then reports "no null" as before
    return null, not _missing(null)


def deciding_metric(diag: pd.DataFrame, metric: str) -> tuple[str, str]:
    """(metric to decide on, note): the preferred estimator when the table has finite rows of it."""
    present = set(diag.loc[diag["value"].notna(), "metric"].astype(str)) if len(diag) else set()
    for alt in DECIDING.get(metric, ()):
        if alt in present:
            return alt, f"decided on {alt} ({metric}, the paper's estimator, is shown as context)"
    if DECIDING.get(metric):
        return metric, (f"decided on the raw {metric}: this table has no {DECIDING[metric][0]} "
                        "(written before the estimator existed; re-run analyze)")
    return metric, ""


def run_seeds(diag: pd.DataFrame) -> dict[str, tuple[str, float, float]]:
    """run -> (method, init_seed, data_seed), from the first row of each run."""
    out: dict[str, tuple[str, float, float]] = {}
    for r, m, i, d in zip(diag["run"], diag["method"], diag["init_seed"], diag["data_seed"], strict=True):
        out.setdefault(r, (m, i, d))
    return out


def final_values(diag: pd.DataFrame, metric: str, scope: str = "model") -> pd.DataFrame:
    """One value per run at its last step (mean over duplicate rows; layer rows are averaged when scope="layer")."""
    rows = diag[(diag["metric"] == metric) & (diag["scope"] == scope) & diag["value"].notna()]
    rows = prefer_rows(rows)
    cols = ["run", "method", "init_seed", "data_seed", "null", "value"]
    last: dict[str, float] = {}
    for run, step in zip(rows["run"], rows["step"], strict=True):  # plain loops: tables are small, pandas is not
        last[run] = max(last.get(run, -math.inf), step)
    acc: dict[str, list] = {}
    for run, m, i, d, n, step, v in zip(*(rows[c] for c in ("run", "method", "init_seed", "data_seed", "null",
                                                              "step", "value")), strict=True):
        if step == last[run]:
            acc.setdefault(run, [run, m, i, d, n, []])[5].append(v)
    return pd.DataFrame([[*a[:5], float(np.mean(a[5]))] for a in acc.values()], columns=cols)


def model_values(diag: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Model-scope values; for runs with only layer rows (the CKA ceiling may come per layer), their layer mean."""
    vals = final_values(diag, metric, "model")
    layer = final_values(diag, metric, "layer")
    if vals.empty or layer.empty:
        return vals if not vals.empty else layer
    extra = layer[~layer["run"].isin(set(vals["run"]))]
    return pd.concat([vals, extra], ignore_index=True) if not extra.empty else vals


def per_run(diag: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per-run values used for pairing and spreads. For metrics measured against the full-rank reference the
    ordinary full-rank rows are the reference compared with itself (CKA 1) and are dropped; the sibling rows (the
    ceiling) stand for full-rank's own spread."""
    vals = model_values(diag, metric)
    if metric in REFERENCE_METRICS:
        vals = vals[~((vals["method"] == "full_rank") & (vals["null"] != SIBLING))]
        # each ceiling value is one draw of "a sibling's CKA to its reference", whatever its start: one group
        vals = vals.assign(init_seed=np.where(vals["null"] == SIBLING, -1, vals["init_seed"]))
    return vals


def sibling_spread(vals: pd.DataFrame) -> tuple[float, int]:
    """Pooled within-(method, init_seed) standard deviation over data orders, and its degrees of freedom."""
    groups: dict[tuple, list[float]] = {}
    for m, i, v in zip(vals["method"], vals["init_seed"], vals["value"], strict=True):
        groups.setdefault((m, i), []).append(float(v))  # one value per run: per_run() averaged duplicates
    return pooled_sd([np.asarray(g) for g in groups.values() if len(g) >= 2])


def _by_seed(vals: pd.DataFrame, method: str) -> dict[tuple, list[float]]:
    out: dict[tuple, list[float]] = {}
    for m, i, d, n, v in zip(vals["method"], vals["init_seed"], vals["data_seed"], vals["null"], vals["value"],
                             strict=True):
        if m == method and n != SIBLING:
            out.setdefault((i, d), []).append(float(v))
    return out


def paired(vals: pd.DataFrame, a: str, b: str) -> tuple[np.ndarray, list[tuple]]:
    """Per paired seed (same init_seed and data_seed) the difference a − b, and the seeds it pairs."""
    va, vb = _by_seed(vals, a), _by_seed(vals, b)
    keys = sorted(set(va) & set(vb))
    return np.array([np.mean(va[k]) - np.mean(vb[k]) for k in keys], dtype=float), keys


def method_values(vals: pd.DataFrame, method: str) -> np.ndarray:
    return np.array([x for v in _by_seed(vals, method).values() for x in v], dtype=float)


@dataclass
class Barriers:
    """Cross-method barriers per pair and seed, and the sibling barriers (the null)."""

    cross: dict[str, pd.DataFrame]  # "a ↔ b" -> rows with init_seed, data_seed, value, step, step_b
    siblings: pd.DataFrame  # method, init_seed, data_seed, value
    unpaired: list[str] = field(default_factory=list)
    siblings_from_fallback: bool = False  # the siblings came from null_diag (see null_or_fallback)


def barriers(diag: pd.DataFrame, metric: str, null_diag: pd.DataFrame | None = None) -> Barriers:
    """Pair-scope rows of ``metric``: each pair at its own last step, siblings at theirs.

    ``null_diag``: where to look for sibling barriers when ``diag`` has none (the parity models have no siblings,
    so their findings use the equal-step siblings' barriers, and say so)."""
    seeds = run_seeds(diag)
    rows = diag[(diag["metric"] == metric) & (diag["scope"] == "pair") & diag["value"].notna()]
    sib_cols = ["method", "init_seed", "data_seed", "value"]
    sibs: dict[str, list] = {}  # run -> [step, method, init, data, value] at its last step
    cross: dict[str, dict[tuple, list]] = {}  # pair -> (init, data) -> [step, step_b, method, [values]]
    unpaired: dict[str, int] = {}
    cols = ("run", "method", "init_seed", "data_seed", "step", "step_b", "value", "name", "null")
    for run, m, i, d, step, step_b, v, other, null in zip(*(rows[c] for c in cols), strict=True):
        om, oi, od = seeds.get(other, (other, math.nan, math.nan))
        if null == SIBLING or om == m:
            key = f"{run}|{other}"
            if key not in sibs or step > sibs[key][0]:
                sibs[key] = [step, m, i, d, v]
            continue
        pair = " ↔ ".join(sorted((str(m), str(om))))
        if not (isinstance(oi, float) and math.isnan(oi)) and (oi != i or od != d):
            unpaired[pair] = unpaired.get(pair, 0) + 1
            continue
        slot = cross.setdefault(pair, {})
        cur = slot.get((i, d))
        if cur is None or step > cur[0]:
            slot[(i, d)] = [step, step_b, m, [v]]
        elif step == cur[0]:
            cur[3].append(v)
    siblings, fell_back = null_or_fallback(pd.DataFrame([x[1:] for x in sibs.values()], columns=sib_cols),
                                           null_diag, lambda t: barriers(t, metric).siblings, own=diag)
    out = Barriers({}, siblings, [f"{p}: {n} row(s) between runs of different seeds left out"
                                  for p, n in sorted(unpaired.items())], fell_back)
    for pair, slot in cross.items():
        out.cross[pair] = pd.DataFrame(
            [(i, d, float(np.mean(x[3])), x[0], x[1], x[2]) for (i, d), x in sorted(slot.items())],
            columns=["init_seed", "data_seed", "value", "step", "step_b", "method"])
    return out


def seed_null(b: Barriers, pair: str, init_seeds: np.ndarray) -> np.ndarray:
    """Mean sibling barrier from each paired seed's start: the pair's own methods first, else any method; NaN when
    that start has no sibling (the rule then uses the pooled null mean)."""
    methods = pair.split(" ↔ ")
    sib = list(zip(b.siblings["method"], b.siblings["init_seed"], b.siblings["value"], strict=True))
    out = []
    for s in init_seeds:
        here = [(m, v) for m, i, v in sib if i == s]
        own = [v for m, v in here if m in methods]
        use = own or [v for _, v in here]
        out.append(float(np.mean(use)) if use else math.nan)
    return np.asarray(out, dtype=float)
