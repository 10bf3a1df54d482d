"""Seed-level statistics and the verdict rules: oracles (scipy, enumeration, a hand-worked Holm example) and
calibration by simulation (no effect: the rules declare an effect in ≤ 5 % of studies; an effect of 3 × the null
with 5 paired seeds: declared in ≥ 80 %)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats as sps

from rankscope.report.seedstats import (
    bootstrap_p,
    holm,
    min_sign_flip_p,
    multi_bootstrap,
    pooled_sd,
    sign_flip_p,
    t_interval,
    t_pvalue,
)
from rankscope.report.verdict_rules import (
    CONNECTED,
    DISTINCT,
    NO_NULL,
    WITHIN,
    basin_verdicts,
    bootstrap_verdicts,
    combine_rows,
    expansion,
    is_exploratory,
    paired_verdicts,
)

# ---------------------------------------------------------------- oracles


@pytest.mark.parametrize("n", [2, 3, 5, 9])
def test_t_interval_matches_scipy(n: int) -> None:
    x = np.random.default_rng(n).normal(1.0, 2.0, n)
    mean, lo, hi = t_interval(x)
    want = sps.t.interval(0.95, n - 1, loc=x.mean(), scale=sps.sem(x))
    assert mean == pytest.approx(x.mean()) and (lo, hi) == pytest.approx(want)
    assert t_pvalue(x) == pytest.approx(sps.ttest_1samp(x, 0.0).pvalue)
    assert t_pvalue(x, "greater") == pytest.approx(sps.ttest_1samp(x, 0.0, alternative="greater").pvalue)


def test_t_interval_is_batched_and_wider_than_z() -> None:
    x = np.random.default_rng(0).normal(size=(4, 3))
    x[1, 2] = np.nan  # that row has n = 2
    mean, lo, hi = t_interval(x)
    for row, m, a, b in zip(x, mean, lo, hi, strict=True):
        r = row[np.isfinite(row)]
        assert (a, b) == pytest.approx(sps.t.interval(0.95, len(r) - 1, loc=r.mean(), scale=sps.sem(r)))
        assert m == pytest.approx(r.mean())
    half = (hi[0] - lo[0]) / 2
    assert half == pytest.approx(4.303 * np.std(x[0], ddof=1) / np.sqrt(3), rel=1e-3)  # t(2), not 1.96
    one = t_interval(np.array([1.0]))
    assert one[0] == 1.0 and np.isnan(one[1]) and np.isnan(one[2])


def _enumerated_p(d: np.ndarray, alternative: str) -> float:
    obs, hits, total = d.sum(), 0, 0
    for signs in itertools.product((-1.0, 1.0), repeat=len(d)):
        s = float(np.dot(signs, np.abs(d)))
        total += 1
        if alternative == "greater":
            hits += s >= obs - 1e-12
        elif alternative == "less":
            hits += s <= obs + 1e-12
        else:
            hits += abs(s) >= abs(obs) - 1e-12
    return hits / total


@pytest.mark.parametrize("alternative", ["greater", "less", "two-sided"])
def test_sign_flip_matches_enumeration(alternative: str) -> None:
    rng = np.random.default_rng(3)
    batch = rng.normal(0.3, 1.0, (12, 6))
    batch[0] = [1, 2, 3, 4, 5, 6]  # all positive: the smallest attainable p
    batch[1] = [1, -1, 2, -2, 3, -3]  # ties in |d|
    got = sign_flip_p(batch, alternative)
    want = [_enumerated_p(row, alternative) for row in batch]
    assert got == pytest.approx(want)
    assert got[0] == pytest.approx({"greater": 1 / 64, "less": 1.0, "two-sided": 2 / 64}[alternative])
    assert min_sign_flip_p(5) == pytest.approx(1 / 32) and min_sign_flip_p(5, "two-sided") == pytest.approx(1 / 16)
    assert min_sign_flip_p(5, n_tests=3) == pytest.approx(3 / 32)


def test_holm_hand_example() -> None:
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → monotone: 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    got = holm([0.2, np.nan, 0.01])  # NaN is no test: m = 2
    assert got[0] == pytest.approx(0.2) and np.isnan(got[1]) and got[2] == pytest.approx(0.02)
    assert holm([0.6, 0.5]) == pytest.approx([1.0, 1.0])  # capped at 1, monotone


def test_multi_bootstrap_and_pooled_sd() -> None:
    d = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    draws = multi_bootstrap(d, n_boot=4000, seed=1)
    assert draws.mean() == pytest.approx(0.3, abs=0.01)
    assert draws.std() == pytest.approx(d.std(ddof=0) / np.sqrt(5), rel=0.1)  # seed resampling alone
    wide = multi_bootstrap(d, np.full(5, 0.2), n_boot=4000, seed=1)
    assert wide.std() == pytest.approx(np.sqrt(d.var() / 5 + 0.2**2 / 5), rel=0.1)  # plus item noise
    assert bootstrap_p(draws) == pytest.approx(1 / 4001 * 2, abs=1e-3)
    assert expansion(5) == pytest.approx(np.sqrt(5 / 4) * 2.776 / 1.96, rel=1e-3)
    sd, df = pooled_sd([np.array([1.0, 3.0]), np.array([10.0, 12.0, 14.0]), np.array([5.0])])
    assert df == 3 and sd == pytest.approx(np.sqrt((2 + 8) / 3))
    assert np.isnan(pooled_sd([np.array([1.0])])[0])


# ---------------------------------------------------------------- the words on hand-made cases


def test_basin_words() -> None:
    null = np.array([0.05, 0.06, 0.07, 0.055, 0.065])
    far = [np.array([0.3, 0.32, 0.29, 0.35, 0.31])]
    same = [np.array([0.06, 0.05, 0.065, 0.07, 0.058])]
    per_seed = [null.copy()]
    assert basin_verdicts(far, per_seed, null)[0].word == DISTINCT
    row = basin_verdicts(same, per_seed, null)[0]
    assert row.word == CONNECTED and row.n == 5 and row.n_null == 5
    one = basin_verdicts([far[0][:1]], [null[:1]], null[:2])[0]
    assert is_exploratory(one.word) and "n = 1" in one.word and "0.5" in one.word
    assert basin_verdicts([same[0][:2]], [null[:2]], null)[0].word == WITHIN
    assert basin_verdicts(far, per_seed, np.array([]))[0].word == NO_NULL
    # Holm across 3 pairs: 5 seeds cannot reach 3/32 < 0.05, so even a huge barrier is only exploratory
    rows = basin_verdicts(far * 3, per_seed * 3, null)
    assert all(is_exploratory(r.word) for r in rows)
    assert rows[0].null_units == pytest.approx(far[0].mean() / null.mean())


def test_paired_words_and_combination() -> None:
    words = ("sharper", "flatter")
    up = np.array([1.0, 1.1, 0.9, 1.05, 0.95])
    rows = paired_verdicts([up, -up, up * 0.01], spread=0.2, n_null=4, words=words)
    assert [r.word for r in rows] == ["sharper", "flatter", WITHIN]
    assert rows[0].null_units == pytest.approx(up.mean() / 0.2)
    assert combine_rows(rows[:1], "sharper", "holds", "does not hold")[0] == "holds"
    assert combine_rows(rows[:2], "sharper", "holds", "does not hold")[0] == "does not hold"
    assert paired_verdicts([up], spread=float("nan"), n_null=0, words=words)[0].word == NO_NULL
    few = paired_verdicts([up[:3]], spread=0.2, n_null=2, words=words)[0]
    assert is_exploratory(few.word) and "n = 3" in few.word
    assert combine_rows([few], "sharper", "holds", "does not hold")[0] == few.word  # never "holds"


# ---------------------------------------------------------------- calibration by simulation

N_STUDIES = 400


def _gamma(rng: np.random.Generator, mean: float, cv: float, size: tuple[int, ...]) -> np.ndarray:
    k = 1 / cv**2
    return rng.gamma(k, mean / k, size)


@pytest.mark.parametrize(("effect", "cv"), [(1.0, 0.3), (1.0, 0.6), (3.0, 0.3)])
def test_basin_rule_calibration(effect: float, cv: float) -> None:
    """Cross and sibling barriers from one distribution: "distinct" in ≤ 5 %; cross = 3 × null: ≥ 80 %."""
    rng = np.random.default_rng(11)
    s = 5
    cross = _gamma(rng, 0.06 * effect, cv, (N_STUDIES, s))
    sib = _gamma(rng, 0.06, cv, (N_STUDIES, s))  # one sibling barrier per start
    rate = np.mean([basin_verdicts([c], [n], n)[0].word == DISTINCT for c, n in zip(cross, sib, strict=True)])
    if effect == 1.0:
        assert rate <= 0.05
    else:
        assert rate >= 0.80


@pytest.mark.parametrize("effect", [0.0, 3.0])
def test_paired_rule_calibration(effect: float) -> None:
    """Per-run metric (sharpness, CKA, ...): paired differences over 5 seeds against a sibling spread estimated from
    one data-order sibling per start. No effect: "sharper" or "flatter" in ≤ 5 %; 3 × the spread: ≥ 80 %."""
    rng = np.random.default_rng(5)
    s, sigma = 5, 1.0
    start = rng.normal(0, 2.0, (N_STUDIES, s))  # what a start shares across methods
    ref = start + rng.normal(0, sigma, (N_STUDIES, s))
    sibling = start + rng.normal(0, sigma, (N_STUDIES, s))
    other = start + rng.normal(0, sigma, (N_STUDIES, s)) - effect * sigma
    declared = 0
    for r, sb, o in zip(ref, sibling, other, strict=True):
        spread, df = pooled_sd([np.array([a, b]) for a, b in zip(r, sb, strict=True)])
        row = paired_verdicts([r - o], spread, df, ("sharper", "flatter"))[0]
        declared += row.word in ("sharper", "flatter")
    rate = declared / N_STUDIES
    assert rate <= 0.05 if effect == 0 else rate >= 0.80


@pytest.mark.parametrize("effect", [0.0, 3.0])
def test_bootstrap_rule_calibration(effect: float) -> None:
    """P1-style multi-bootstrap (seeds and items) with 5 seeds: no effect ≤ 5 %, 3 × the sibling spread ≥ 80 %."""
    rng = np.random.default_rng(7)
    s, sigma, item = 5, 0.01, 0.01
    start = rng.normal(0, 0.02, (N_STUDIES, s))
    a = start + rng.normal(0, sigma, (N_STUDIES, s)) + rng.normal(0, item, (N_STUDIES, s))
    sib = start + rng.normal(0, sigma, (N_STUDIES, s)) + rng.normal(0, item, (N_STUDIES, s))
    spread_true = np.hypot(sigma, item)
    b = start + rng.normal(0, sigma, (N_STUDIES, s)) + rng.normal(0, item, (N_STUDIES, s)) - effect * spread_true
    declared = 0
    for x, y, z in zip(a, b, sib, strict=True):
        spread, df = pooled_sd([np.array([u, v]) for u, v in zip(x, z, strict=True)])
        row = bootstrap_verdicts([x - y], [np.full(s, item * np.sqrt(2))], spread, df, ("differ", "differ"),
                                 n_boot=400)[0]
        declared += row.word == "differ"
    rate = declared / N_STUDIES
    assert rate <= 0.05 if effect == 0 else rate >= 0.80
