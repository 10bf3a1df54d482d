"""Seed-level statistics behind the verdicts (spec evidence.md §4): t intervals, exact sign-flip tests, Holm, and
the multi-bootstrap over seeds and items.

Why these and not a normal interval: the unit of replication is the seed (a training run), and a study has few of
them. With n seeds a mean's interval uses t with n − 1 degrees of freedom (4.30 at n = 3, not 1.96); a paired
difference over S seeds is tested exactly by flipping the signs of the S per-seed differences (no normality
needed, and its smallest attainable p-value, 1 / 2^S one-sided, says honestly what S seeds can show); several pairs
in one finding are Holm-corrected. Downstream differences resample seeds and the same test items jointly
(:func:`paired_item_bootstrap`) when per-item rows exist. Every function takes plain arrays and works along the
last axis, so the calibration simulations in the tests run thousands of studies at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from scipy import stats as sps

ALPHA = 0.05
EXACT_MAX_SEEDS = 16  # 2^16 sign patterns; above this the sign-flip test samples patterns (Monte Carlo)
MC_FLIPS = 20000


def _moments(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, mean, sd with ddof 1) along the last axis over the finite entries; NaN where undefined."""
    v = np.asarray(values, dtype=float)
    ok = np.isfinite(v)
    n = ok.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(ok, v, 0.0).sum(axis=-1) / n
        dev = np.where(ok, v - np.expand_dims(mean, -1), 0.0)
        sd = np.sqrt((dev**2).sum(axis=-1) / (n - 1))
    return n, mean, np.where(n >= 2, sd, np.nan)


def t_interval(values: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, lo, hi) of the mean along the last axis with Student t, n − 1 df; NaN bounds when n < 2.

    NaNs are dropped per row; a row with zero spread gets a zero-width interval.
    """
    n, mean, sd = _moments(values)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = sps.t.ppf(0.5 + level / 2, np.maximum(n - 1, 1))
        half = np.where(n >= 2, q * sd / np.sqrt(n), np.nan)
    return mean, mean - half, mean + half


def t_pvalue(values: np.ndarray, alternative: str = "two-sided") -> np.ndarray:
    """p-value of "mean = 0" along the last axis (one-sample t, n − 1 df); NaN when n < 2."""
    n, mean, sd = _moments(values)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(sd > 0, mean / (sd / np.sqrt(n)), np.sign(mean) * np.inf)
        df = np.maximum(n - 1, 1)
        if alternative == "greater":
            p = sps.t.sf(t, df)
        elif alternative == "less":
            p = sps.t.cdf(t, df)
        else:
            p = np.minimum(1.0, 2 * sps.t.sf(np.abs(t), df))
        p = np.where(np.isnan(t), 1.0, p)  # mean 0 and no spread: nothing against the null
    return np.where(n >= 2, p, np.nan)


@lru_cache(maxsize=32)
def _sign_patterns(n: int) -> np.ndarray:
    """Every ±1 pattern of length n, one per row (2^n rows)."""
    bits = (np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1
    return (1 - 2 * bits).astype(float)


def sign_flip_p(diffs: np.ndarray, alternative: str = "greater", seed: int = 0) -> np.ndarray:
    """Exact sign-flip (paired permutation) p-value of the mean of ``diffs`` along the last axis.

    Under the null each per-seed difference is as likely to be negative as positive; the p-value is the share of
    the 2^S sign patterns whose sum is at least as extreme as the observed one (the observed pattern included, so
    p ≥ 1 / 2^S). ``alternative``: "greater" (mean > 0), "less" or "two-sided". Rows must not hold NaN. Above
    EXACT_MAX_SEEDS seeds the patterns are sampled (MC_FLIPS of them, the observed one counted once).
    """
    d = np.asarray(diffs, dtype=float)
    n = d.shape[-1]
    if n == 0:
        return np.full(d.shape[:-1], np.nan)
    if n <= EXACT_MAX_SEEDS:
        signs = _sign_patterns(n)
    else:
        signs = np.vstack([np.ones((1, n)), np.random.default_rng(seed).choice([-1.0, 1.0], (MC_FLIPS - 1, n))])
    null = np.abs(d) @ signs.T  # [..., patterns]
    obs = d.sum(axis=-1, keepdims=True)
    tol = 1e-12 * np.maximum(1.0, np.abs(d).sum(axis=-1, keepdims=True))
    if alternative == "greater":
        hit = null >= obs - tol
    elif alternative == "less":
        hit = null <= obs + tol
    else:
        hit = np.abs(null) >= np.abs(obs) - tol
    return hit.mean(axis=-1)


def min_sign_flip_p(n: int, alternative: str = "greater", n_tests: int = 1) -> float:
    """Smallest p-value an exact sign-flip test on n seeds can give, after Holm over ``n_tests`` tests."""
    if n <= 0:
        return 1.0
    one = 1.0 / 2**n if alternative in ("greater", "less") else min(1.0, 2.0 / 2**n)
    return min(1.0, one * max(1, n_tests))


def holm(pvalues: np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values along the last axis (NaN entries stay NaN and do not count as tests)."""
    p = np.asarray(pvalues, dtype=float)
    flat = p.reshape(-1, p.shape[-1]) if p.ndim else p.reshape(1, 1)
    out = np.full(flat.shape, np.nan)
    for r, row in enumerate(flat):
        ok = np.flatnonzero(np.isfinite(row))
        m = len(ok)
        order = ok[np.argsort(row[ok], kind="stable")]
        running = 0.0
        for rank, i in enumerate(order):
            running = max(running, min(1.0, (m - rank) * row[i]))
            out[r, i] = running
    return out.reshape(p.shape)


def multi_bootstrap(
    per_seed: np.ndarray,
    item_se: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    per_item: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """Bootstrap means of per-seed values, resampling seeds and, jointly, the evaluation items.

    ``per_seed[..., S]``: one value per (paired) seed, e.g. a difference of average accuracy between two methods.
    With ``per_item`` (per task, ``[..., S, n_t]`` per-item values whose task-averaged item mean is ``per_seed``)
    the items themselves are resampled: :func:`paired_item_bootstrap`. Without it, ``item_se[..., S]``: the
    standard error each value owes to its finite item set (from the evaluator's interval; 0 or None when not
    known); seeds are drawn with replacement and each drawn value is perturbed by its item error, so the interval
    carries both sources (as MultiBERTs). Independent item noise per value is conservative when both models saw
    the same items (the fallback for results stored without per-item rows). Returns ``[..., n_boot]`` means.
    """
    if per_item is not None:
        return paired_item_bootstrap(per_item, n_boot=n_boot, seed=seed)
    v = np.asarray(per_seed, dtype=float)
    s = v.shape[-1]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, s, size=(*v.shape[:-1], n_boot, s))
    draws = np.take_along_axis(np.broadcast_to(v[..., None, :], idx.shape), idx, axis=-1)
    if item_se is not None:
        se = np.nan_to_num(np.asarray(item_se, dtype=float), nan=0.0)
        se_draw = np.take_along_axis(np.broadcast_to(se[..., None, :], idx.shape), idx, axis=-1)
        draws = draws + se_draw * rng.standard_normal(idx.shape)
    return draws.mean(axis=-1)


def paired_item_bootstrap(per_item: Sequence[np.ndarray], n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """Multi-bootstrap from per-item rows: seeds and, jointly, the same items for every seed and both models.

    ``per_item[t][..., S, n_t]``: for task t, paired seed s and item i, the per-item value (for a difference of two
    models that answered the same items: correct_A − correct_B, in {−1, 0, 1}). The statistic is
    downstream/average.py's average: the unweighted mean over tasks of the mean over items, then over seeds.

    Model of one task's rows: D[s, i] = m + a_s + b_i + e_si (seed effect, item effect shared by every seed,
    seed × item noise: which items this pair of runs happened to get right). The variance of the mean is
    var(a)/S + var(b)/n + var(e)/(S n). One resample draws S seeds with replacement and, per task, n_t items with
    replacement, the *same* items for every seed and both models, and adds two parts: the mean of the drawn seeds'
    own averages (a_s + its e noise: var(a)/S + var(e)/(S n)) and the mean over the drawn items of the item
    effects b_i (each item's mean over seeds minus the task mean), shrunk so that their variance is the two-way
    ANOVA estimate of var(b) (their variance minus the residual mean square / S, floored at 0): the e noise is
    then counted once. MultiBERTs' plain joint draw (the mean of the drawn seed × item cells) counts it again,
    (2S − 1)/S times, which for small models, whose answers are mostly that noise, made the paired interval wider
    than the independent-SE one (docs/downstream.md). With one seed, var(b) and var(e) cannot be told apart and
    the item part is the whole per-item spread: the SD of a paired difference over n items, sqrt(var(d) / n).
    Returns ``[..., n_boot]``; the draws are shared by the leading axes (each study of a batched simulation gets
    its own valid bootstrap). Rows must be finite.
    """
    tasks = [np.asarray(t, dtype=float) for t in per_item]
    if not tasks:
        raise ValueError("paired_item_bootstrap needs at least one task")
    s = tasks[0].shape[-2]
    rng = np.random.default_rng(seed)
    per_seed = np.mean([t.mean(axis=-1) for t in tasks], axis=0)  # [..., S]
    seed_counts = rng.multinomial(s, np.full(s, 1.0 / s), size=n_boot).astype(float)  # [B, S]
    draws = np.einsum("bs,...s->...b", seed_counts, per_seed) / s
    for t in tasks:
        n = t.shape[-1]
        item_counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)  # [B, n_t]
        draws = draws + np.einsum("bn,...n->...b", item_counts, item_effects(t)) / (n * len(tasks))
    return draws


def item_effects(rows: np.ndarray) -> np.ndarray:
    """Item effects shared by every seed of ``rows[..., S, n]``: each item's mean over seeds minus the grand mean,
    shrunk (S ≥ 2) so that their variance is the ANOVA estimate var(b) = var(col means) − MS_residual / S."""
    col = rows.mean(axis=-2)
    effect = col - col.mean(axis=-1, keepdims=True)
    s, n = rows.shape[-2], rows.shape[-1]
    if s < 2 or n < 2:
        return effect
    resid = rows - rows.mean(axis=-1, keepdims=True) - col[..., None, :] + col.mean(axis=-1)[..., None, None]
    ms_resid = (resid**2).sum(axis=(-2, -1)) / ((s - 1) * (n - 1))
    var_col = (effect**2).sum(axis=-1) / (n - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        shrink = np.sqrt(np.clip(1.0 - ms_resid / s / var_col, 0.0, 1.0))
    return effect * np.nan_to_num(shrink, nan=0.0)[..., None]


def bootstrap_p(samples: np.ndarray, alternative: str = "two-sided") -> np.ndarray:
    """p-value of "the quantity is 0" from bootstrap draws along the last axis (share on the far side of 0)."""
    b = np.asarray(samples, dtype=float)
    n = b.shape[-1]
    le = (np.sum(b <= 0, axis=-1) + 1) / (n + 1)
    ge = (np.sum(b >= 0, axis=-1) + 1) / (n + 1)
    if alternative == "greater":
        return le
    if alternative == "less":
        return ge
    return np.minimum(1.0, 2 * np.minimum(le, ge))


def percentile(samples: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of bootstrap draws along the last axis."""
    tail = (1 - level) / 2 * 100
    return np.percentile(samples, tail, axis=-1), np.percentile(samples, 100 - tail, axis=-1)


def pooled_sd(groups: list[np.ndarray]) -> tuple[float, int]:
    """Within-group standard deviation pooled over groups of siblings, and its degrees of freedom (runs − groups).

    A group is the runs of one method from one start (same init seed, other data orders); only groups with two or
    more finite values count. (NaN, 0) when no group qualifies.
    """
    ss, df = 0.0, 0
    for g in groups:
        g = np.asarray(g, dtype=float)
        g = g[np.isfinite(g)]
        if len(g) >= 2:
            ss += float(np.sum((g - g.mean()) ** 2))
            df += len(g) - 1
    return (math.sqrt(ss / df), df) if df else (math.nan, 0)
