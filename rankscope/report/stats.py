"""Small interval helpers behind the findings: estimates with 95 % intervals, slopes, Kendall tau.

Findings are stated with a verdict from an interval, never from a point estimate alone, so every
helper here returns both. Uncertainty comes from what the study recorded: per-row ``stderr``
(across directions or batches), the spread across seeds, or a bootstrap. When none of these exists,
the interval is NaN and the verdict is "inconclusive" for lack of an uncertainty estimate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats as sps

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
Z95 = 1.959963984540054
FULL = "full_rank"  # the reference method every low-rank method is compared with


@dataclass(frozen=True)
class Estimate:
    """A number with a 95 % interval and a word on where the interval came from."""

    value: float
    se: float = math.nan
    n: int = 1
    source: str = "none"  # "stderr", "seeds", "stderr+seeds", "ols", "bootstrap", "given" or "none"
    lo_given: float = math.nan  # an interval supplied as-is (bootstrap CI from the predictor, say)
    hi_given: float = math.nan

    @property
    def lo(self) -> float:
        return self.lo_given if math.isfinite(self.lo_given) else self.value - Z95 * self.se

    @property
    def hi(self) -> float:
        return self.hi_given if math.isfinite(self.hi_given) else self.value + Z95 * self.se

    @property
    def has_interval(self) -> bool:
        return math.isfinite(self.lo) and math.isfinite(self.hi)


def pooled(values: Sequence[float], stderrs: Sequence[float] | None = None) -> Estimate:
    """Mean over seeds; SE is the larger of the propagated row stderr and the seed spread.

    Taking the larger is deliberately conservative: with two or three seeds the seed standard deviation
    is itself very noisy, and a row stderr (across directions) ignores seed-to-seed variation.
    """
    v = np.asarray([x for x in values], dtype=float)
    keep = np.isfinite(v)
    if not keep.any():
        return Estimate(math.nan, n=0)
    s = np.asarray(stderrs if stderrs is not None else [math.nan] * len(v), dtype=float)[keep]
    v = v[keep]
    n = len(v)
    candidates: dict[str, float] = {}
    if np.isfinite(s).all():
        candidates["stderr"] = float(math.sqrt(float(np.sum(s**2))) / n)
    if n >= 2:
        candidates["seeds"] = float(np.std(v, ddof=1) / math.sqrt(n))
    if not candidates:
        return Estimate(float(v.mean()), n=n)
    source = max(candidates, key=lambda k: candidates[k])
    label = "stderr+seeds" if len(candidates) == 2 else source
    mean, se = float(v.mean()), candidates[source]
    if source == "seeds":  # a seed-level SE takes t with n − 1 df, never 1.96 (4.30 at n = 3)
        half = float(sps.t.ppf(0.975, n - 1)) * se
        return Estimate(mean, se, n, label, mean - half, mean + half)
    return Estimate(mean, se, n, label)


def difference(a: Estimate, b: Estimate) -> Estimate:
    """a − b with independent errors added in quadrature (NaN SE if either side has none)."""
    se = math.sqrt(a.se**2 + b.se**2) if math.isfinite(a.se) and math.isfinite(b.se) else math.nan
    src = a.source if a.source == b.source else f"{a.source}/{b.source}"
    return Estimate(a.value - b.value, se, min(a.n, b.n), src)


def verdict_above(est: Estimate, line: float = 0.0) -> tuple[str, str]:
    """Verdict for "the quantity is above ``line``", with the reason when inconclusive."""
    if not math.isfinite(est.value):
        return INCONCLUSIVE, "no value"
    if not est.has_interval:
        return INCONCLUSIVE, "no uncertainty estimate (single seed and no stderr)"
    if est.lo > line:
        return HOLDS, ""
    if est.hi < line:
        return FAILS, ""
    return INCONCLUSIVE, f"interval [{est.lo:.4g}, {est.hi:.4g}] crosses {line:g}"


def combine(verdicts: Sequence[str]) -> str:
    """All parts hold -> holds; any part clearly fails -> does not hold; otherwise inconclusive."""
    if not verdicts:
        return INCONCLUSIVE
    if all(v == HOLDS for v in verdicts):
        return HOLDS
    if any(v == FAILS for v in verdicts):
        return FAILS
    return INCONCLUSIVE


def ols_slope(x: Sequence[float], y: Sequence[float]) -> Estimate:
    """Least-squares slope with a t-based 95 % interval (few points, so t rather than 1.96)."""
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[keep], ya[keep]
    n = len(xa)
    if n < 2 or np.ptp(xa) == 0:
        return Estimate(math.nan, n=n)
    xc = xa - xa.mean()
    sxx = float(np.sum(xc**2))
    slope = float(np.sum(xc * (ya - ya.mean())) / sxx)
    if n < 3:
        return Estimate(slope, n=n)
    resid = ya - ya.mean() - slope * xc
    se = math.sqrt(float(np.sum(resid**2)) / (n - 2) / sxx)
    half = float(sps.t.ppf(0.975, n - 2)) * se
    return Estimate(slope, se, n, "ols", slope - half, slope + half)


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall tau-b (handles ties); NaN when either side is constant."""
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    dx = np.sign(xa[:, None] - xa[None, :])
    dy = np.sign(ya[:, None] - ya[None, :])
    iu = np.triu_indices(len(xa), k=1)
    dx, dy = dx[iu], dy[iu]
    denom = math.sqrt(float(np.sum(dx != 0)) * float(np.sum(dy != 0)))
    return float(np.sum(dx * dy) / denom) if denom > 0 else math.nan


def percentile_interval(samples: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval over the finite samples (NaN, NaN when there are none)."""
    arr = np.asarray(samples, dtype=float)
    arr = arr[np.isfinite(arr)]
    if len(arr) == 0:
        return math.nan, math.nan
    tail = (1 - level) / 2 * 100
    return float(np.percentile(arr, tail)), float(np.percentile(arr, 100 - tail))


def negate(est: Estimate) -> Estimate:
    """−est, so a "below the line" check can reuse ``verdict_above``."""
    return Estimate(-est.value, est.se, est.n, est.source, -est.hi_given, -est.lo_given)


@dataclass
class Evidence:
    """One number behind a verdict: an estimate, its 95 % interval and its own verdict."""

    label: str
    value: float
    lo: float = math.nan
    hi: float = math.nan
    verdict: str = ""  # empty for context rows that do not decide the finding
    detail: str = ""  # where the interval came from, or why this row is inconclusive
    n: int | None = None  # paired seeds behind the estimate (seed-level rows)
    n_null: int | None = None  # sibling comparisons behind the null
    null_units: str = ""  # the effect in units of the null, e.g. "3.1 × sibling barrier"


@dataclass
class Finding:
    id: str
    statement: str  # the paper's finding, abstract level
    check: str  # what is computed on these runs
    verdict: str = INCONCLUSIVE
    reason: str = ""  # why the verdict (always filled when inconclusive)
    evidence: list[Evidence] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def evidence_from(label: str, est: Estimate, verdict: str, reason: str = "") -> Evidence:
    detail = reason or (f"95% interval from {est.source}, n={est.n}" if est.has_interval else "")
    return Evidence(label, est.value, est.lo, est.hi, verdict, detail)


def explain(verdict: str, evidence: Sequence[Evidence]) -> str:
    """One line saying which comparisons decided the verdict."""
    if verdict == HOLDS:
        return "every interval is on the finding's side of the line"
    bad = [e for e in evidence if e.verdict == (FAILS if verdict == FAILS else INCONCLUSIVE)]
    word = "reversed" if verdict == FAILS else "inconclusive"
    return f"{word}: " + "; ".join(f"{e.label}" + (f" ({e.detail})" if e.detail else "") for e in bad)
