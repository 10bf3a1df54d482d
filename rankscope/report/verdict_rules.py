"""The verdict words of spec evidence.md §5, decided from arrays of per-seed numbers and a within-method null.

A verdict about methods needs a null: how far apart two runs of the *same* method are (siblings: same init seed,
another data order). Three rules, each returning one :class:`RowVerdict` per compared pair:

* :func:`basin_verdicts` (F3): per paired seed, cross barrier minus the sibling barrier of that start; exact
  one-sided sign-flip test, Holm across pairs. "distinct" needs p_holm < 0.05 *and* a cross barrier ≥ 2 × the null
  mean; "connected" means the mean cross barrier lies within the null's range.
* :func:`paired_verdicts` (F1, F2, F5, ...): per paired seed, the difference between two methods; t interval with
  S − 1 df, two-sided t p-value, Holm across pairs. The word ("sharper", "more similar", ...) needs p_holm < 0.05
  *and* |effect| > the sibling spread (pooled within-method standard deviation).
* :func:`bootstrap_verdicts` (P1): like :func:`paired_verdicts`, with a multi-bootstrap over seeds and items,
  expanded for small S (Hesterberg's factor √(S/(S−1))·t/z) so that 5 seeds are not read as 50.

Confirmatory words need S ≥ MIN_SEEDS paired seeds and, for the sign-flip rule, a Holm-adjusted p that S seeds
can reach at all (1/2^S × number of pairs < 0.05). Below that the strongest words are "exceeds the noise floor
(exploratory: n = …, minimum attainable p = …)" or "within the noise floor". No siblings: "no null: run siblings".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from rankscope.report.seedstats import (
    ALPHA,
    bootstrap_p,
    holm,
    min_sign_flip_p,
    multi_bootstrap,
    percentile,
    sign_flip_p,
    t_interval,
    t_pvalue,
)

MIN_SEEDS = 5  # the fewest paired seeds at which an exact sign-flip test can give p < 0.05 (1/32)
BASIN_RATIO = 2.0  # "distinct" also needs the cross barrier ≥ 2 × the mean sibling barrier
DISTINCT, CONNECTED = "distinct", "connected"
WITHIN = "within the noise floor"
NO_NULL = "no null: run siblings"
NOT_MINIMUM = "not at a minimum along these directions"
INCONCLUSIVE = "inconclusive"


def exploratory(n: int, n_tests: int = 1, alternative: str = "greater") -> str:
    """The strongest word below the seed count a test needs; states the smallest p the seeds allow (per test,
    and after Holm over ``n_tests`` when there are several, which with few seeds is often 1)."""
    one = min_sign_flip_p(n, alternative)
    text = f"minimum attainable p = {one:.2g}"
    if n_tests > 1:
        text += f" per test, {min_sign_flip_p(n, alternative, n_tests):.2g} after Holm over {n_tests}"
    return f"exceeds the noise floor (exploratory: n = {n}, {text})"


def is_exploratory(word: str) -> bool:
    return word.startswith("exceeds the noise floor")


@dataclass
class RowVerdict:
    """One compared pair: the word, the effect with its 95 % interval, and what the null made of it."""

    word: str
    effect: float  # barrier rule: mean(cross − sibling barrier); paired rules: mean per-seed difference
    lo: float = math.nan
    hi: float = math.nan
    n: int = 0  # paired seeds
    n_null: int = 0  # sibling barriers, or the degrees of freedom of the sibling spread
    null_units: float = math.nan  # cross / sibling barrier, or effect / sibling spread
    null_unit_label: str = ""  # "× sibling barrier" or "× sibling spread"
    p: float = math.nan
    p_holm: float = math.nan
    confirmed: int = 0  # +1: the positive word was declared, −1: the negative word, 0: neither
    detail: str = ""


def _finite(a: Sequence[float] | np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=float)
    return a[np.isfinite(a)]


def basin_verdicts(
    cross: Sequence[np.ndarray], seed_null: Sequence[np.ndarray], null_all: np.ndarray
) -> list[RowVerdict]:
    """F3 words for each pair. ``cross[i][s]``: barrier of pair i at paired seed s; ``seed_null[i][s]``: mean sibling
    barrier from that seed's start (NaN: use the pooled null mean); ``null_all``: every sibling barrier."""
    null = _finite(null_all)
    rows: list[RowVerdict] = []
    ps: list[float] = []
    means: list[float] = []
    for c, sn in zip(cross, seed_null, strict=True):
        c, sn = np.asarray(c, float), np.asarray(sn, float)
        keep = np.isfinite(c)
        c, sn = c[keep], sn[keep]
        means.append(float(c.mean()) if len(c) else math.nan)
        if len(null) == 0 or len(c) == 0:
            rows.append(RowVerdict(NO_NULL if len(c) else INCONCLUSIVE, float(np.mean(c)) if len(c) else math.nan, n=len(c),
                                   detail="no sibling barrier in the table" if len(c) else "no value"))
            ps.append(math.nan)
            continue
        d = c - np.where(np.isfinite(sn), sn, null.mean())
        mean, lo, hi = t_interval(d)
        ratio = float(c.mean() / null.mean()) if null.mean() > 0 else math.inf
        p = float(sign_flip_p(d, "greater")) if len(d) else math.nan
        ps.append(p)
        rows.append(RowVerdict("", float(mean), float(lo), float(hi), len(c), len(null), ratio,
                               "× sibling barrier", p,
                               detail=f"cross {c.mean():.4g} vs sibling {null.mean():.4g} "
                                      f"(range {null.min():.4g}–{null.max():.4g})"))
    adj = holm(np.asarray(ps, dtype=float)) if ps else np.array([])
    n_tests = int(np.sum(np.isfinite(ps)))
    for row, pa, cross_mean in zip(rows, adj, means, strict=True):
        if row.word:
            continue
        row.p_holm = float(pa)
        p_min = min_sign_flip_p(row.n, "greater", n_tests)
        inside = cross_mean <= float(null.max())
        if p_min < ALPHA:
            if row.p_holm < ALPHA and row.null_units >= BASIN_RATIO:
                row.word, row.confirmed = DISTINCT, 1
            else:
                row.word = CONNECTED if inside else INCONCLUSIVE
                row.confirmed = -1 if inside else 0
        elif inside:
            row.word = WITHIN
        elif row.null_units >= BASIN_RATIO:
            row.word = exploratory(row.n, n_tests)
        else:
            row.word = INCONCLUSIVE
    return rows


def paired_verdicts(
    diffs: Sequence[np.ndarray], spread: float, n_null: int, words: tuple[str, str]
) -> list[RowVerdict]:
    """Words for per-seed paired differences (positive: ``words[0]``, negative: ``words[1]``) against the sibling
    spread ``spread`` (pooled within-method SD, NaN when there are no siblings)."""
    rows: list[RowVerdict] = []
    for d in diffs:
        d = _finite(d)
        mean, lo, hi = t_interval(d) if len(d) else (math.nan, math.nan, math.nan)
        p = float(t_pvalue(d)) if len(d) >= 2 else math.nan
        rows.append(RowVerdict("", float(mean), float(lo), float(hi), len(d), n_null,
                               float(mean) / spread if spread > 0 else math.nan, "× sibling spread", p))
    _decide(rows, spread, words)
    return rows


def bootstrap_verdicts(
    diffs: Sequence[np.ndarray], item_se: Sequence[np.ndarray | None], spread: float, n_null: int,
    words: tuple[str, str], n_boot: int = 2000, seed: int = 0,
    per_item: Sequence[Sequence[np.ndarray] | None] | None = None,
) -> list[RowVerdict]:
    """Like :func:`paired_verdicts`, with an expanded multi-bootstrap (seeds and items) for interval and p.

    ``per_item[i]`` (optional, per pair): per task, ``[S, n_t]`` paired per-item differences for the S seeds of
    ``diffs[i]``; with it the items are resampled jointly for both models (:func:`paired_item_bootstrap`),
    without it each value moves by its ``item_se``. The row's detail says which was used.
    """
    rows: list[RowVerdict] = []
    per_item = per_item if per_item is not None else [None] * len(diffs)
    for i, (d, se, items) in enumerate(zip(diffs, item_se, per_item, strict=True)):
        d = np.asarray(d, float)
        keep = np.isfinite(d)
        d = d[keep]
        se = None if se is None else np.asarray(se, float)[keep]
        if len(d) == 0:
            rows.append(RowVerdict("", math.nan, n=0, n_null=n_null))
            continue
        mean = float(d.mean())
        if items is not None:
            items = [np.asarray(t, float)[keep] for t in items]
            if not np.allclose(np.mean([t.mean(axis=-1) for t in items], axis=0), d):
                raise ValueError(f"pair {i}: the per-item rows do not average to the per-seed values given")
            draws = multi_bootstrap(d, n_boot=n_boot, seed=seed + i, per_item=items)
            varies = any(np.ptp(t) > 0 for t in items)
            detail = (f"items resampled from per-item rows, the same items for both models "
                      f"({sum(t.shape[-1] for t in items)} items over {len(items)} task(s))")
        else:
            draws = multi_bootstrap(d, se, n_boot=n_boot, seed=seed + i)
            varies = se is not None and bool(np.any(se > 0))
            detail = ("items: no per-item rows, each model's evaluator standard error, independent per model "
                      "(conservative)")
        draws = mean + expansion(len(d)) * (draws - mean)
        lo, hi = percentile(draws)
        p = float(bootstrap_p(draws)) if len(d) >= 2 or varies else math.nan
        rows.append(RowVerdict("", mean, float(lo), float(hi), len(d), n_null,
                               mean / spread if spread > 0 else math.nan, "× sibling spread", p, detail=detail))
    _decide(rows, spread, words)
    return rows


def expansion(n: int) -> float:
    """Small-sample widening of a bootstrap of a mean: √(n/(n−1)) · t_{n−1} / z (1 when n < 2)."""
    if n < 2:
        return 1.0
    return math.sqrt(n / (n - 1)) * float(sps.t.ppf(0.975, n - 1)) / float(sps.norm.ppf(0.975))


def _decide(rows: list[RowVerdict], spread: float, words: tuple[str, str]) -> None:
    adj = holm(np.asarray([r.p for r in rows], dtype=float)) if rows else np.array([])
    n_tests = max(1, int(sum(math.isfinite(r.p) for r in rows)))
    for row, pa in zip(rows, adj, strict=True):
        row.p_holm = float(pa)
        if not math.isfinite(spread):
            why = "no sibling spread for this metric: it needs two runs of one method from one start (for CKA, two " \
                  "full-rank siblings)"
            row.word, row.detail = NO_NULL, "; ".join(x for x in (why, row.detail) if x)
            continue
        if not math.isfinite(row.effect):
            row.word, row.detail = INCONCLUSIVE, "no paired seeds"
            continue
        beyond = abs(row.effect) > spread
        if row.n >= MIN_SEEDS:
            if beyond and row.p_holm < ALPHA:
                row.word = words[0] if row.effect > 0 else words[1]
                row.confirmed = 1 if row.effect > 0 else -1
            else:
                row.word = WITHIN if not beyond else INCONCLUSIVE
        elif beyond:
            row.word = exploratory(row.n, n_tests)
        else:
            row.word = WITHIN


def combine_rows(rows: Sequence[RowVerdict], positive: str, holds: str, fails: str,
                 inconclusive: str = INCONCLUSIVE) -> tuple[str, str]:
    """Finding-level verdict from its rows: (verdict, reason). Holds only if every row declared the finding's
    word; fails if any row declared the opposite; exploratory if every row exceeds the floor in the finding's
    direction; "no null" if no row had one; otherwise inconclusive."""
    if not rows:
        return inconclusive, "no comparison"
    if all(r.word == NO_NULL for r in rows):
        return NO_NULL, ("no within-method null for this metric: add data-order siblings to the study (a spread "
                         "needs two runs of one method from one start; the CKA spread needs two full-rank siblings)")
    if all(r.word == positive for r in rows):
        return holds, f"every pair: {positive}"
    bad = [r for r in rows if r.confirmed == -1 and r.word != positive]
    if bad:
        return fails, f"{len(bad)} of {len(rows)} pair(s) declared {bad[0].word}"
    if all(is_exploratory(r.word) and r.effect > 0 for r in rows):
        return rows[0].word, "every pair exceeds the noise floor, but too few seeds for a test"
    if all(r.word == WITHIN for r in rows):
        return WITHIN, "every pair is within the noise floor"
    words = sorted({r.word for r in rows})
    return inconclusive, "pairs disagree or are inconclusive: " + "; ".join(words)
