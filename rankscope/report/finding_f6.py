"""F6, "validation perplexity does not translate into downstream accuracy", decided against the sibling null.

With one run per method and noisy early-training models, two methods whose perplexities (or accuracies) differ by
less than two data-order siblings of one method do can swap order by noise alone; "the orders disagree" is then no
evidence. So a disagreement counts only for a method pair whose paired differences (same init and data seed) of
final validation perplexity *and* of average accuracy (downstream/average.py) both exceed the sibling spread of that
quantity (pooled within-(method, init seed) SD over data orders, :func:`rankscope.report.nulls.sibling_spread`).

Per pair, oriented so that the first method has the lower perplexity: the orders disagree when it also has the
lower accuracy. Words (spec evidence.md §5):

* fewer than MIN_SEEDS paired seeds: "exceeds the noise floor (exploratory: n = …)" for a disagreement beyond both
  spreads, "within the noise floor" when either difference is within its spread;
* MIN_SEEDS or more: "orders disagree" needs both two-sided paired t-tests at p < 0.05 with the discordant signs
  (an intersection–union test: the larger of the two p-values), Holm-adjusted across all pairs, and both effects
  beyond the spread; "orders agree" is the same rule with concordant signs;
* no sibling spread for either quantity: "no null: run siblings", never a verdict.

The finding is existential over pairs (one real disagreement is enough); it fails only when every pair's orders
agree beyond the noise. Kendall τ between the two method orders, bootstrapped over tasks and runs, stays as a
descriptive row. ``null_runs`` / ``null_down``: where each spread comes from when the compared runs have none
(:func:`rankscope.report.nulls.null_or_fallback`: the parity models take the equal-step siblings', and say so).
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pandas as pd

from rankscope.report.nulls import NULL_FROM_EQUAL_STEPS, null_or_fallback, paired, sibling_spread
from rankscope.report.seedstats import ALPHA, holm, t_interval, t_pvalue
from rankscope.report.stats import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    Evidence,
    Finding,
    kendall_tau,
    percentile_interval,
)
from rankscope.report.verdict_rules import MIN_SEEDS, NO_NULL, WITHIN, exploratory, is_exploratory

N_BOOT = 1000
DISAGREE, AGREE = "orders disagree", "orders agree"
COLUMNS = ["run", "method", "init_seed", "data_seed", "null", "ppl", "acc"]
STATEMENT = "Validation perplexity does not translate into downstream accuracy at every scale."
CHECK = ("Per method pair and paired seed (same init and data seed): the differences of final validation perplexity "
         "and of average downstream accuracy, the pair oriented so that its first method has the lower perplexity. "
         "The orders disagree when that method also has the lower accuracy; a disagreement counts only when both "
         "differences exceed the sibling spread of their quantity (data-order siblings). With ≥ 5 paired seeds both "
         "paired t-tests must reach p < 0.05 (intersection–union, Holm across pairs); fewer seeds: exploratory. "
         "Kendall τ between the two method orders (bootstrap over tasks and runs) is context.")


def _seed_columns(runs: pd.DataFrame, down: pd.DataFrame) -> pd.DataFrame:
    """init_seed and data_seed per run: the runs frame's own, else its ``seed``, else the downstream rows',
    else one seed per run (older single-seed tables: every run pairs with the other methods' runs)."""
    runs = runs.copy()
    for col in ("init_seed", "data_seed"):
        vals = pd.to_numeric(runs[col], errors="coerce") if col in runs else pd.Series(np.nan, index=runs.index)
        if "seed" in runs:
            vals = vals.fillna(pd.to_numeric(runs["seed"], errors="coerce"))
        if vals.isna().any() and len(down):
            from_down = down.groupby("run")[col].first()
            vals = vals.fillna(pd.to_numeric(runs["run"].map(from_down), errors="coerce"))
        runs[col] = vals.astype(float)
    runs["init_seed"] = runs["init_seed"].fillna(-1.0)
    runs["data_seed"] = runs["data_seed"].fillna(runs["init_seed"])
    return runs


def run_values(down: pd.DataFrame, runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per run with a final validation perplexity, with its seeds and its average accuracy over the tasks
    every evaluated run was scored on (NaN for a run without downstream rows, e.g. a sibling the study did not
    evaluate: it still counts for the perplexity spread); and the run × task accuracy table it averaged."""
    from rankscope.downstream.average import final_task_accuracy, primary_task_set

    acc = final_task_accuracy(primary_task_set(down)) if len(down) else pd.DataFrame()
    if acc.empty or runs is None or runs.empty or "val_ppl" not in runs:
        return pd.DataFrame(columns=COLUMNS), pd.DataFrame()
    runs = runs[pd.to_numeric(runs["val_ppl"], errors="coerce").notna()].drop_duplicates("run")
    scored = runs["run"][runs["run"].isin(acc.index)]
    if scored.empty:
        return pd.DataFrame(columns=COLUMNS), pd.DataFrame()
    acc = acc.loc[scored].dropna(axis=1)  # tasks every evaluated run was scored on
    mean_acc = acc.mean(axis=1) if acc.shape[1] else pd.Series(np.nan, index=acc.index)
    runs = _seed_columns(runs, down)
    frame = pd.DataFrame({"run": runs["run"].to_numpy(), "method": runs["method"].astype(str).to_numpy(),
                          "init_seed": runs["init_seed"].to_numpy(float), "data_seed": runs["data_seed"].to_numpy(float),
                          "null": "", "ppl": pd.to_numeric(runs["val_ppl"]).to_numpy(float),
                          "acc": runs["run"].map(mean_acc).to_numpy(float)})
    return frame, acc


def _as_values(frame: pd.DataFrame, col: str) -> pd.DataFrame:
    return frame.assign(value=frame[col])


def spread_of(frame: pd.DataFrame, q: str) -> tuple[float, int]:
    """Sibling spread (pooled SD, df) of column ``q`` over the runs that have it."""
    return sibling_spread(_as_values(frame[frame[q].notna()], q)) if len(frame) else (math.nan, 0)


def spreads(frame: pd.DataFrame) -> dict[str, tuple[float, int]]:
    """Sibling spread of perplexity and of average accuracy."""
    return {q: spread_of(frame, q) for q in ("ppl", "acc")}


def check_f6(down: pd.DataFrame, runs: pd.DataFrame, seed: int = 0, null_down: pd.DataFrame | None = None,
             null_runs: pd.DataFrame | None = None, n_boot: int = N_BOOT) -> Finding:
    """F6 per method pair against the sibling spreads of perplexity and accuracy; τ as context."""
    f = Finding("F6", STATEMENT, CHECK)
    frame, table = run_values(down, runs)
    if frame.empty:
        f.reason = ("missing: no per-task downstream accuracy rows" if _no_acc(down)
                    else "missing: no run has both a final validation perplexity and downstream accuracy")
        return f
    both = frame[frame["acc"].notna()]
    methods = sorted(both["method"].unique())
    if len(methods) < 2 or table.shape[1] == 0:
        f.reason = f"inconclusive: needs ≥ 2 methods with perplexity and accuracy (have {len(methods)})"
        return f
    null = spreads(frame)
    other = run_values(null_down, null_runs)[0] if null_down is not None and null_runs is not None else None
    fell = False
    for q in ("ppl", "acc"):  # each spread from the equal-step siblings where the compared runs have none
        null[q], used = null_or_fallback(null[q], other, lambda t, q=q: spread_of(t, q))
        fell |= used
    if fell:
        f.notes.append(NULL_FROM_EQUAL_STEPS)
    rows = pair_rows(both, methods, null)
    _decide(f, rows, null)
    _tau_rows(f, both, table, methods, seed, n_boot)
    return f


def _no_acc(down: pd.DataFrame) -> bool:
    from rankscope.downstream.average import final_task_accuracy, primary_task_set

    return len(down) == 0 or final_task_accuracy(primary_task_set(down)).empty


def pair_rows(frame: pd.DataFrame, methods: list[str], null: dict[str, tuple[float, int]]) -> list[dict]:
    """Per method pair: paired differences (first method: the lower mean perplexity), p-values and the word."""
    s_ppl, s_acc = null["ppl"][0], null["acc"][0]
    ppl, acc = _as_values(frame, "ppl"), _as_values(frame, "acc")
    out = []
    for a, b in combinations(methods, 2):
        dp, _ = paired(ppl, a, b)  # the same paired seeds for both: every row of ``frame`` has both columns
        da, _ = paired(acc, a, b)
        if len(dp) and dp.mean() > 0:
            a, b, dp, da = b, a, -dp, -da
        out.append(_pair(a, b, dp, da, s_ppl, s_acc))
    p_disc = holm(np.array([r["p_disc"] for r in out], dtype=float)) if out else []
    p_conc = holm(np.array([r["p_conc"] for r in out], dtype=float)) if out else []
    n_tests = max(1, sum(math.isfinite(r["p_disc"]) for r in out))
    for r, pd_, pc in zip(out, p_disc, p_conc, strict=True):
        r["p_holm"] = float(pd_ if r["discordant"] else pc)
        r["word"], r["confirmed"] = _word(r, n_tests)
    return out


def _pair(a: str, b: str, dp: np.ndarray, da: np.ndarray, s_ppl: float, s_acc: float) -> dict:
    n = len(dp)
    mp = float(dp.mean()) if n else math.nan
    ma = float(da.mean()) if n else math.nan
    p_ppl = float(t_pvalue(dp)) if n >= 2 else math.nan
    p_acc = float(t_pvalue(da)) if n >= 2 else math.nan
    discordant = bool(mp < 0 and ma < 0)  # a: lower perplexity and lower accuracy
    iut = max(p_ppl, p_acc)  # intersection–union: both differences must be significant
    return {"a": a, "b": b, "n": n, "dppl": mp, "dacc": ma, "acc_ci": t_interval(da) if n else (ma, math.nan, math.nan),
            "zppl": _in_units(mp, s_ppl), "zacc": _in_units(ma, s_acc),
            "beyond": bool(abs(mp) > s_ppl and abs(ma) > s_acc), "discordant": discordant,
            "p_ppl": p_ppl, "p_acc": p_acc,
            "p_disc": iut if discordant else (1.0 if n >= 2 else math.nan),
            "p_conc": iut if not discordant and mp < 0 < ma else (1.0 if n >= 2 else math.nan)}


def _in_units(effect: float, spread: float) -> float:
    """effect / spread; ±inf for a non-zero effect against a zero spread; NaN without a spread."""
    if not math.isfinite(spread) or not math.isfinite(effect):
        return math.nan
    return effect / spread if spread > 0 else math.copysign(math.inf, effect) if effect else 0.0


def _word(r: dict, n_tests: int) -> tuple[str, int]:
    """The pair's word and whether it confirmed (+1) or refuted (−1) the finding."""
    if not (math.isfinite(r["zppl"]) and math.isfinite(r["zacc"])):
        return NO_NULL, 0
    if r["n"] == 0:
        return INCONCLUSIVE, 0
    if not r["beyond"]:
        return WITHIN, 0
    if r["n"] >= MIN_SEEDS:
        if r["p_holm"] < ALPHA:
            return (DISAGREE, 1) if r["discordant"] else (AGREE, -1)
        return INCONCLUSIVE, 0
    if r["discordant"]:
        return exploratory(r["n"], n_tests), 0
    return f"{AGREE} (exploratory: n = {r['n']})", 0


def _units(r: dict) -> str:
    return f"Δppl = {r['zppl']:+.2g} × sibling spread, Δacc = {r['zacc']:+.2g} × sibling spread"


def _decide(f: Finding, rows: list[dict], null: dict[str, tuple[float, int]]) -> None:
    (s_ppl, df_ppl), (s_acc, df_acc) = null["ppl"], null["acc"]
    missing = [q for q, (s, _) in (("validation perplexity", null["ppl"]), ("average accuracy", null["acc"]))
               if not math.isfinite(s)]
    if missing:
        f.verdict = NO_NULL
        f.reason = (f"no sibling spread of {' or '.join(missing)}: two runs of one method from one start (data-order "
                    "siblings) need a final perplexity and downstream accuracy (study: siblings.evaluate: true)")
        return
    shown = [r for r in rows if r["word"] != WITHIN]
    for r in sorted(shown, key=lambda r: (r["confirmed"] != 1, not is_exploratory(r["word"]), r["dacc"])):
        mean, lo, hi = (float(x) for x in r["acc_ci"])
        tests = (f"p(ppl) = {r['p_ppl']:.2g}, p(acc) = {r['p_acc']:.2g}, Holm {r['p_holm']:.2g}; "
                 if math.isfinite(r["p_ppl"]) else "")
        f.evidence.append(Evidence(
            f"avg acc {r['a']} − {r['b']} ({r['a']}: lower val ppl)", mean, lo, hi, r["word"],
            f"{tests}Δppl = {r['dppl']:+.4g}, Δacc = {r['dacc']:+.3g}"
            + ("; discordant" if r["discordant"] else "; concordant"), r["n"], df_acc, _units(r)))
    within = [r for r in rows if r["word"] == WITHIN]
    if within:
        f.evidence.append(Evidence(
            f"{len(within)} pair(s) within the noise floor", math.nan, verdict=WITHIN,
            detail="; ".join(f"{r['a']}–{r['b']}: {_units(r)}" for r in within), n_null=df_acc))
    f.evidence.append(Evidence("sibling spread of final val ppl (null)", s_ppl, detail="pooled SD over data orders",
                               n_null=df_ppl))
    f.evidence.append(Evidence("sibling spread of average accuracy (null)", s_acc,
                               detail="pooled SD over data orders", n_null=df_acc))
    words = [r["word"] for r in rows]
    disc = [r for r in rows if is_exploratory(r["word"])]
    if not rows or all(r["n"] == 0 for r in rows):
        f.verdict, f.reason = INCONCLUSIVE, "no method pair has paired seeds (same init and data seed)"
    elif DISAGREE in words:
        k = words.count(DISAGREE)
        f.verdict, f.reason = HOLDS, f"{k} pair(s): the orders disagree beyond the sibling spreads (Holm-corrected)"
    elif all(w == AGREE for w in words):
        f.verdict, f.reason = FAILS, "every pair: the orders agree beyond the sibling spreads (Holm-corrected)"
    elif disc:
        best = max(disc, key=lambda r: min(abs(r["zppl"]), abs(r["zacc"])))
        f.verdict = best["word"]
        f.reason = (f"{len(disc)} pair(s) disagree beyond both sibling spreads ({best['a']}–{best['b']}: "
                    f"{_units(best)}), but too few paired seeds for a test")
    elif all(w == WITHIN or w.startswith(AGREE) for w in words):
        agree = sum(w.startswith(AGREE) for w in words)
        f.verdict = WITHIN
        f.reason = (f"no pair's orders disagree beyond the sibling spreads ({words.count(WITHIN)} pair(s) within the "
                    f"noise floor, {agree} agree beyond it)")
    else:
        f.verdict, f.reason = INCONCLUSIVE, "pairs inconclusive: " + "; ".join(sorted(set(words)))


def _tau_rows(f: Finding, frame: pd.DataFrame, acc: pd.DataFrame, methods: list[str], seed: int,
              n_boot: int) -> None:
    """Kendall τ of the two method orders (bootstrap over tasks and runs) and each method's means: context."""
    from rankscope.downstream.average import METRIC

    table = acc.loc[frame["run"]].to_numpy(float)
    ppl = frame["ppl"].to_numpy(float)
    run_idx = {m: np.flatnonzero(frame["method"].to_numpy() == m) for m in methods}

    def tau(task_ids: np.ndarray, picks: dict[str, np.ndarray]) -> float:
        mean_ppl = [ppl[picks[m]].mean() for m in methods]
        mean_acc = [table[np.ix_(picks[m], task_ids)].mean() for m in methods]
        return kendall_tau(-np.asarray(mean_ppl), np.asarray(mean_acc))  # both "higher is better"

    all_tasks = np.arange(table.shape[1])
    rng = np.random.default_rng(seed)
    boots = [tau(rng.choice(all_tasks, len(all_tasks)), {m: rng.choice(i, len(i)) for m, i in run_idx.items()})
             for _ in range(n_boot)]
    lo, hi = percentile_interval(boots) if boots else (math.nan, math.nan)
    f.evidence.insert(0, Evidence("Kendall τ (perplexity order vs accuracy order)", tau(all_tasks, run_idx), lo, hi,
                                  detail=f"context: {n_boot} bootstrap resamples over {table.shape[1]} tasks and runs"))
    for m in methods:
        f.evidence.append(Evidence(f"{m}: mean {METRIC} over {table.shape[1]} tasks", float(table[run_idx[m]].mean()),
                                   detail=f"final val ppl {ppl[run_idx[m]].mean():.4g}; {len(run_idx[m])} run(s)"))
    f.notes.append("One scale only: the paper's claim is across scales; here it reduces to 'the orders differ "
                   "beyond what two runs of one method differ by'.")


__all__ = ["AGREE", "DISAGREE", "check_f6", "pair_rows", "run_values", "spreads"]
