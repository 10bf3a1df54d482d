"""Verdicts at perplexity parity: P1 (do downstream accuracies still differ?) and "faster to target".

P1 pairs the parity models of two methods by seed (same init_seed and data_seed), takes the difference of
average accuracy per paired seed, and decides with a multi-bootstrap over seeds and items (the same items drawn
for both models from the per-item rows; for results without them, each model's evaluator interval moves its
value independently), Holm across method pairs, and the sibling spread of average accuracy as
the null (the equal-step siblings' when the parity models have none). Speed: tokens to the target per paired seed,
as log(tokens of the method / tokens of full-rank), t interval over seeds, against the siblings' spread of
log tokens; "faster to target" only beyond that spread.
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

from rankscope.downstream.average import primary_task_set
from rankscope.downstream.item_rows import acc_matrices, item_average
from rankscope.report.findings_geometry import evidence_row
from rankscope.report.htmlkit import esc, fmt, fmt_interval, table
from rankscope.report.load import normalise_table
from rankscope.report.nulls import NULL_FROM_EQUAL_STEPS, null_or_fallback, run_seeds, sibling_spread
from rankscope.report.plots_common import ordered
from rankscope.report.seedstats import t_interval
from rankscope.report.stats import FULL, HOLDS, INCONCLUSIVE, Finding
from rankscope.report.verdict_rules import (
    NO_NULL,
    WITHIN,
    bootstrap_verdicts,
    is_exploratory,
    paired_verdicts,
)

Z95 = 1.959963984540054
ITEMS_PAIRED = ("Items: resampled from the per-item rows (downstream_items.parquet), the same items for both models "
                "of a pair and every seed.")
ITEMS_FALLBACK = ("Items: no usable per-item rows (results written before downstream_items.parquet, or models scored "
                  "on different items), so each model's evaluator standard error moves its value independently "
                  "(conservative for paired models).")


def _with_seeds(rows: pd.DataFrame, diag: pd.DataFrame | None) -> pd.DataFrame:
    """Seeds of each run from the diagnostics table (the contract's source), else the row's own columns."""
    if diag is None or diag.empty:
        return rows
    seeds = run_seeds(normalise_table(diag))
    init = [seeds.get(r, (None, i, d))[1] for r, i, d in zip(rows["run"], rows["init_seed"], rows["data_seed"],
                                                                strict=True)]
    data = [seeds.get(r, (None, i, d))[2] for r, i, d in zip(rows["run"], rows["init_seed"], rows["data_seed"],
                                                                strict=True)]
    return rows.assign(init_seed=init, data_seed=data)


def avg_acc_runs(down: pd.DataFrame, diag: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per run: method, seeds, average accuracy and its item-level standard error, at its last step."""
    rows = primary_task_set(normalise_table(down))  # the one average of downstream/average.py, one task set
    rows = rows[(rows["metric"] == "avg_acc") & (rows["scope"] == "model") & rows["value"].notna()]
    if rows.empty:
        return pd.DataFrame(columns=["run", "method", "init_seed", "data_seed", "null", "value", "se"])
    rows = rows[rows["step"] == rows.groupby("run")["step"].transform("max")]
    rows = _with_seeds(rows, diag).assign(se=((rows["ci_high"] - rows["ci_low"]) / (2 * Z95)).fillna(0.0))
    # a table that names no seed at all is one seed per run (older single-seed studies): pair them as such
    rows = rows.assign(init_seed=rows["init_seed"].astype(float).fillna(-1.0),
                       data_seed=rows["data_seed"].astype(float).fillna(-1.0))
    return rows.groupby("run").agg(method=("method", "first"), init_seed=("init_seed", "first"),
                                   data_seed=("data_seed", "first"), null=("null", "first"), value=("value", "mean"),
                                   se=("se", "mean")).reset_index()


def _paired_keys(vals: pd.DataFrame, a: str, b: str) -> tuple[list[tuple], dict[tuple, list[int]]]:
    """The (init_seed, data_seed) keys both methods have, sorted, and the row positions of each (method, key)."""
    rows: dict[tuple, list[int]] = {}
    for pos, (m, i, d) in enumerate(zip(vals["method"], vals["init_seed"], vals["data_seed"], strict=True)):
        if m in (a, b):
            rows.setdefault((m, i, d), []).append(pos)
    keys = sorted({k[1:] for k in rows if k[0] == a} & {k[1:] for k in rows if k[0] == b})
    return keys, rows


def _paired(vals: pd.DataFrame, a: str, b: str, col: str = "value") -> tuple[np.ndarray, np.ndarray]:
    """Per paired seed: a − b of ``col`` and the item-level SE of the difference (independent errors)."""
    keys, rows = _paired_keys(vals, a, b)
    v, se = vals[col].to_numpy(float), vals["se"].to_numpy(float)
    mean = {k: (float(np.mean(v[p])), float(np.mean(se[p]))) for k, p in rows.items()}
    d = np.array([mean[(a, *k)][0] - mean[(b, *k)][0] for k in keys], dtype=float)
    se_d = np.array([math.hypot(mean[(a, *k)][1], mean[(b, *k)][1]) for k in keys], dtype=float)
    return d, se_d


def _paired_items(vals: pd.DataFrame, mats: dict[str, np.ndarray] | None, a: str, b: str) -> list[np.ndarray] | None:
    """Per task, ``[S, n_t]`` per-item differences a − b for the paired seeds of :func:`_paired` (same order), from
    ``mats`` (rows aligned with ``vals``); None without per-item rows."""
    if mats is None:
        return None
    keys, rows = _paired_keys(vals, a, b)
    return [np.stack([m[rows[(a, *k)]].mean(axis=0) - m[rows[(b, *k)]].mean(axis=0) for k in keys])
            for m in mats.values()] if keys else None


def item_matrices(vals: pd.DataFrame, items: pd.DataFrame | None) -> dict[str, np.ndarray] | None:
    """Per-item correctness matrices aligned with the rows of ``vals`` (downstream/item_rows.py), kept only when
    they reproduce every run's average accuracy in the table (same items, same step, same tasks)."""
    mats = acc_matrices(items, list(vals["run"]))
    if mats is None or not np.allclose(item_average(mats), vals["value"].to_numpy(float), atol=1e-9):
        return None
    return mats


def differ_at_parity(down: pd.DataFrame, diag: pd.DataFrame | None = None,
                     null_down: pd.DataFrame | None = None, n_boot: int = 2000,
                     items: pd.DataFrame | None = None) -> Finding:
    """P1: at parity, do average downstream accuracies differ between methods (any pair, Holm-corrected)?

    ``items``: the parity models' per-item rows (``downstream_items.parquet``); with them the bootstrap draws the
    same items for both models of a pair, without them (older studies) each model's evaluator SE is used."""
    f = Finding("P1", "At perplexity parity, downstream accuracies still differ between methods.",
                "Per method pair and paired seed: difference of average accuracy of the parity models; multi-bootstrap "
                "over seeds and items (expanded for few seeds), Holm across pairs; 'differ' needs ≥ 5 paired seeds, "
                "p_holm < 0.05 and a difference beyond the sibling spread of average accuracy.")
    vals = avg_acc_runs(down, diag)
    if vals.empty:
        f.reason = "missing: no avg_acc rows for the parity models"
        return f
    methods = ordered(vals["method"].unique())
    if len(methods) < 2:
        f.reason = "missing: fewer than two methods have parity models"
        return f
    (spread, df), fell_back = null_or_fallback(sibling_spread(vals), null_down,
                                               lambda t: sibling_spread(avg_acc_runs(t, diag)))
    if fell_back:
        f.notes.append(NULL_FROM_EQUAL_STEPS)
    pairs = list(combinations(methods, 2))
    data = [_paired(vals, a, b) for a, b in pairs]
    mats = item_matrices(vals, items)
    f.notes.append(ITEMS_PAIRED if mats is not None else ITEMS_FALLBACK)
    rows = bootstrap_verdicts([d for d, _ in data], [se for _, se in data], spread, df, ("differ", "differ"),
                              n_boot=n_boot, per_item=[_paired_items(vals, mats, a, b) for a, b in pairs])
    for (a, b), row in zip(pairs, rows, strict=True):
        f.evidence.append(evidence_row(f"avg_acc {a} − {b}", row))
    words = [r.word for r in rows]
    if any(w == "differ" for w in words):
        f.verdict, f.reason = HOLDS, "at least one pair differs beyond the sibling spread (Holm-corrected)"
    elif all(w == NO_NULL for w in words):
        f.verdict, f.reason = NO_NULL, ("no siblings with downstream results, so the sibling spread of average "
                                        "accuracy is unknown: evaluate siblings (study: siblings.evaluate: true)")
    elif all(w == WITHIN for w in words):
        f.verdict, f.reason = WITHIN, "every pair is within the sibling spread of average accuracy"
    elif any(is_exploratory(w) for w in words):
        best = max((r for r in rows if is_exploratory(r.word)), key=lambda r: abs(r.effect))
        f.verdict, f.reason = best.word, "a difference beyond the sibling spread, but too few seeds for a test"
    else:
        f.verdict, f.reason = INCONCLUSIVE, "pairs inconclusive: " + "; ".join(sorted(set(words)))
    return f


def speed_runs(parity: dict[str, Any], diag: pd.DataFrame | None) -> pd.DataFrame:
    """One row per main run of parity.json with its seeds and log tokens / FLOPs to the target (NaN if not reached)."""
    recs = parity.get("runs") or []
    if not recs:
        return pd.DataFrame()
    seeds = run_seeds(normalise_table(diag)) if diag is not None and not diag.empty else {}
    out = []
    for r in recs:
        name = r.get("main_run") or r.get("run")
        seed = r.get("seed")
        _, init, data = seeds.get(name, (None, r.get("init_seed", seed), r.get("data_seed", seed)))
        tok, flops = r.get("tokens_to_target"), r.get("flops_to_target")
        ok = bool(r.get("reached"))
        out.append({"run": name, "method": r.get("method"), "init_seed": init, "data_seed": data, "null": "",
                    "tokens": float(tok) if ok and tok else math.nan, "flops": float(flops) if ok and flops else math.nan})
    frame = pd.DataFrame(out)
    return frame.assign(value=np.log(frame["tokens"]), se=0.0)


def speed_html(parity: dict[str, Any], diag: pd.DataFrame | None) -> str:
    """Tokens and FLOPs to the target per method (mean, 95 % t interval over seeds) and the verdict on speed."""
    runs = speed_runs(parity, diag)
    if runs.empty:
        return ""
    spread, df = sibling_spread(runs[runs["value"].notna()])
    body = []
    for m in ordered(runs["method"].unique()):
        mine = runs[runs["method"] == m]
        cells: list[Any] = [m, f"{int(mine['tokens'].notna().sum())}/{len(mine)}"]
        for col in ("tokens", "flops"):
            mean, lo, hi = t_interval(mine[col].to_numpy(float))
            cells.append(f"{fmt(float(mean))} {fmt_interval(float(lo), float(hi))}".strip())
        if m == FULL or FULL not in set(runs["method"]):
            cells += ["–", "–"]
        else:
            d, _ = _paired(runs[runs["value"].notna()], m, FULL)
            row = paired_verdicts([d], spread, df, ("slower to target", "faster to target"))[0]
            ratio = (f"{math.exp(row.effect):.3g}× {fmt_interval(math.exp(row.lo), math.exp(row.hi))}" if len(d)
                     else "no paired seeds")
            cells += [ratio, row.word]
        body.append(cells)
    note = (f"Sibling spread of log tokens to target: {fmt(spread)} (df {df})." if math.isfinite(spread) else
            "No sibling reached the target in the parity stage, so there is no null for speed: run siblings "
            "through parity to decide 'faster to target'.")
    return ("<h3>Speed to the target (seed level)</h3><p>Mean over seeds with a 95% t interval (n − 1 df) of the "
            "tokens and FLOPs each method's runs needed to reach the target; the ratio to full-rank is paired by "
            "seed (geometric mean of per-seed ratios). 'Faster to target' needs ≥ 5 paired seeds, an interval "
            f"excluding 1 and a log ratio beyond the sibling spread. {esc(note)}</p>"
            + table(["method", "seeds reached", "tokens to target", "FLOPs to target", "tokens vs full-rank",
                     "verdict"], body))
