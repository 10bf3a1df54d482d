"""The findings across model sizes: at which sizes does each hold, and does it strengthen or weaken with size?

The paper is a multi-scale study (60M, 130M, 350M) and two of its claims are about scale itself. Here each finding
is first decided at every size on its own, exactly as a one-size report decides it (its own seeds, its own
siblings: pairs and nulls never cross sizes), and then summarised across sizes:

* **where it holds**: "holds at every size", "holds at k of n sizes" (naming them) or "holds at no size"; sizes
  where it only exceeds the noise floor (too few seeds) are counted apart and never as "holds".
* **a trend over size** for each deciding comparison (the evidence rows with a verdict, matched by label): the OLS
  slope of the per-size effect on log2(parameters) ("per doubling"; the size's rank when a size is not a known
  preset), with a 95 % interval from a parametric resampling of each size's effect from its own seed-level t
  interval (n − 1 df). The interval carries the seed noise of each size, not the curvature of a non-linear trend;
  with two sizes the slope is their difference. "strengthens with size" when the whole interval lies on the
  finding's side (F6: the accuracy difference of a discordant pair falls), "weakens with size" when it lies on the
  other side, else "no trend detected".
* **F6 is the paper's claim**: the perplexity order and the downstream order disagree *at some size*; it holds when
  at least one size has a method pair whose orders disagree beyond the sibling spreads of perplexity and accuracy
  (``finding_f6``), with each size's pairs and its descriptive τ interval shown; the trend is that of the pair's
  accuracy difference (more negative: a stronger disagreement).
* **F7 pools the sizes**: the pooled predictor (``prediction.json`` of a multi-size study, with leave-one-size-out
  CV) decides; per-size predictors, when present, are shown beside it.

Pure: tables in, objects out (rendering lives in ``scale_section``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from rankscope.report.findings import _runs_frame, evaluate_findings
from rankscope.report.findings_downstream import check_f7
from rankscope.report.load import RunInfo, normalise_table
from rankscope.report.parity_section import (
    NOT_APPLICABLE,
    apply_baseline_verdicts,
    mark_not_applicable,
    not_past_unigram,
)
from rankscope.report.stats import FAILS, HOLDS, INCONCLUSIVE, Finding
from rankscope.report.verdict_rules import NO_NULL, WITHIN, is_exploratory

SIZE_COLUMN = "scale"
HOLDS_EVERY, HOLDS_NONE = "holds at every size", "holds at no size"
STRONGER, WEAKER, NO_TREND = "strengthens with size", "weakens with size", "no trend detected"
N_DRAWS = 4000
ONE_SIZE_NOTE = "One scale only"  # check_f6's single-size note, dropped in the cross-size view
DIRECTION = {"F6": -1.0}  # sign of "more of the finding": F6 is stronger as the pair's Δacc (lower-ppl − other) falls


def holds_at(k: int, n: int) -> str:
    """The cross-size word for a finding that holds at ``k`` of ``n`` sizes."""
    if n and k == n:
        return HOLDS_EVERY
    return HOLDS_NONE if k == 0 else f"holds at {k} of {n} sizes"


def size_params(name: str) -> float:
    """Parameter count of a model preset (NaN for a name that is not a preset)."""
    from rankscope.models.llama import dense_param_count
    from rankscope.models.presets import PRESETS

    cfg = PRESETS.get(str(name))
    return float(dense_param_count(cfg)) if cfg is not None else math.nan


def order_sizes(names: Sequence[str]) -> list[str]:
    """Known presets from smallest to largest, then unknown names alphabetically."""
    uniq = sorted({str(n) for n in names if str(n) and str(n) not in ("nan", "None")})
    return sorted(uniq, key=lambda s: (not math.isfinite(size_params(s)), size_params(s), s))


def size_axis(sizes: Sequence[str]) -> tuple[np.ndarray, str]:
    """x of each size for the trend: log2(parameters) when every size is a preset, else its rank."""
    params = np.array([size_params(s) for s in sizes], dtype=float)
    if np.all(np.isfinite(params)):
        return np.log2(params), "per doubling of parameters"
    return np.arange(len(sizes), dtype=float), "per size step"


def run_sizes(*tables: pd.DataFrame | None) -> dict[str, str]:
    """run -> size from the tables' ``scale`` column (first non-empty value wins)."""
    out: dict[str, str] = {}
    for t in tables:
        if t is None or SIZE_COLUMN not in t.columns or t.empty:
            continue
        for run, size in zip(t["run"].astype(str), t[SIZE_COLUMN], strict=True):
            if isinstance(size, str) and size:
                out.setdefault(run, size)
    return out


@dataclass
class Trend:
    """The slope of one deciding comparison over size, with its interval and word."""

    label: str
    slope: float
    lo: float
    hi: float
    unit: str
    word: str
    sizes: list[str] = field(default_factory=list)


@dataclass
class ScaleFinding:
    """One finding across sizes: the word, the per-size findings and the trends."""

    id: str
    statement: str
    verdict: str
    reason: str
    per_size: dict[str, Finding]
    holds: list[str] = field(default_factory=list)
    trends: list[Trend] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class ScaleFindings:
    sizes: list[str]
    per_size: dict[str, list[Finding]]
    findings: list[ScaleFinding]


def _base_label(label: str) -> str:
    """Evidence label without what legitimately differs between sizes (steps of a barrier row)."""
    return re.sub(r"\s*@ .*$", "", label).strip()


def _se(value: float, lo: float, hi: float, n: int | None) -> tuple[float, float]:
    """(standard error, degrees of freedom) implied by a 95 % interval; t with n − 1 df when n ≥ 2 is known."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return math.nan, math.inf
    df = float(n - 1) if n is not None and n >= 2 else math.inf
    q = float(sps.t.ppf(0.975, df)) if math.isfinite(df) else float(sps.norm.ppf(0.975))
    return max(hi - lo, 0.0) / 2 / q, df


def trend(label: str, x: np.ndarray, values: np.ndarray, los: np.ndarray, his: np.ndarray,
          ns: Sequence[int | None], unit: str, direction: float = 1.0, seed: int = 0) -> Trend:
    """OLS slope of ``values`` on ``x`` and a 95 % interval by resampling each value from its t interval."""
    x, values = np.asarray(x, float), np.asarray(values, float)
    xc = x - x.mean()
    sxx = float(np.sum(xc**2))
    slope = float(np.sum(xc * (values - values.mean())) / sxx) if sxx > 0 else math.nan
    ses = [_se(v, lo, hi, n) for v, lo, hi, n in zip(values, los, his, ns, strict=True)]
    if sxx <= 0 or not all(math.isfinite(se) for se, _ in ses):
        return Trend(label, slope, math.nan, math.nan, unit, f"{NO_TREND} (a size has no interval)")
    rng = np.random.default_rng(seed)
    draws = np.stack([v + se * (rng.standard_t(df, N_DRAWS) if math.isfinite(df) else rng.standard_normal(N_DRAWS))
                      for v, (se, df) in zip(values, ses, strict=True)])  # [sizes, draws]
    slopes = (xc @ (draws - draws.mean(0))) / sxx
    lo, hi = (float(q) for q in np.percentile(slopes, [2.5, 97.5]))
    if direction * lo > 0 and direction * hi > 0:
        word = STRONGER
    elif direction * lo < 0 and direction * hi < 0:
        word = WEAKER
    else:
        word = NO_TREND
    return Trend(label, slope, lo, hi, unit, word)


def _trends(fid: str, sizes: list[str], findings: Mapping[str, Finding]) -> list[Trend]:
    x_all, unit = size_axis(sizes)
    rows: dict[str, dict[str, Any]] = {}
    for size in sizes:
        if findings[size].verdict == NOT_APPLICABLE:  # models still on the unigram plateau: no effect to trend
            continue
        for e in findings[size].evidence:
            if e.verdict and math.isfinite(e.value):
                rows.setdefault(_base_label(e.label), {})[size] = e
    out = []
    for k, (label, by_size) in enumerate(sorted(rows.items())):
        have = [s for s in sizes if s in by_size]
        if len(have) < 2:
            continue
        ev = [by_size[s] for s in have]
        t = trend(label, x_all[[sizes.index(s) for s in have]], np.array([e.value for e in ev]),
                  np.array([e.lo for e in ev]), np.array([e.hi for e in ev]), [e.n for e in ev], unit,
                  DIRECTION.get(fid, 1.0), seed=k)
        t.sizes = have
        out.append(t)
    return out


def summarise(fid: str, sizes: list[str], findings: Mapping[str, Finding]) -> ScaleFinding:
    """The cross-size word of one finding from its per-size verdicts, and its trends."""
    first = findings[sizes[0]]
    na = [s for s in sizes if findings[s].verdict == NOT_APPLICABLE]  # still on the unigram plateau
    if na and len(na) < len(sizes):
        sf = summarise(fid, [s for s in sizes if s not in na], findings)
        sf.verdict = (sf.verdict.replace("every size", "every applicable size")
                      + f" (not applicable at {', '.join(na)}: not past the unigram perplexity)")
        sf.reason = "; ".join([sf.reason, *(f"{s}: {NOT_APPLICABLE}" for s in na)])
        sf.per_size = dict(findings)
        return sf
    holds = [s for s in sizes if findings[s].verdict == HOLDS]
    explo = [s for s in sizes if is_exploratory(findings[s].verdict)]
    fails = [s for s in sizes if findings[s].verdict == FAILS]
    others = [f"{s}: {findings[s].verdict}" for s in sizes if s not in holds]
    n = len(sizes)
    words = {findings[s].verdict for s in sizes}
    if fid == "F6":  # the paper's claim is existential: the orders disagree at *some* size
        if holds:
            verdict = HOLDS
            reason = f"the orders disagree beyond the sibling spreads at {', '.join(holds)}"
        elif len(fails) == n:
            verdict, reason = FAILS, "the perplexity order equals the accuracy order at every size"
        elif explo:
            verdict = f"exceeds the noise floor at {len(explo)} of {n} sizes (exploratory)"
            reason = "; ".join(others) + f"; exploratory at {', '.join(explo)} (too few seeds)"
        elif words == {NO_NULL}:
            verdict, reason = NO_NULL + " (at every size)", "; ".join(others)
        elif words == {WITHIN}:
            verdict, reason = WITHIN + " at every size", "; ".join(others)
        else:
            verdict = INCONCLUSIVE
            reason = "no size has a disagreement beyond the sibling spreads: " + "; ".join(others)
    else:
        verdict = holds_at(len(holds), n)
        parts = [f"holds at {', '.join(holds)}"] if holds else []
        if others:
            parts.append("; ".join(others))
        reason = "; ".join(parts)
        if not holds and explo:
            verdict = f"exceeds the noise floor at {len(explo)} of {n} sizes (exploratory)"
        elif not holds and words == {NO_NULL}:
            verdict = NO_NULL + " (at every size)"
        elif not holds and words == {INCONCLUSIVE}:
            verdict = INCONCLUSIVE + " at every size"
    if na:
        verdict = NOT_APPLICABLE + " (at every size)"
    notes = sorted({note for s in sizes for note in findings[s].notes if not note.startswith(ONE_SIZE_NOTE)})
    return ScaleFinding(fid, first.statement, verdict, reason, dict(findings), holds, _trends(fid, sizes, findings),
                        notes)


def _runs_with_size(runs: Any) -> pd.DataFrame:
    """The runs frame of the one-size findings, plus each run's size (its config's model) when known."""
    frame = _runs_frame(runs)
    if isinstance(runs, (list, tuple)) and runs and hasattr(runs[0], "config"):
        frame = frame.assign(**{SIZE_COLUMN: [str(r.config.get("model") or "") for r in runs]})
    return frame


def _subset(frame: pd.DataFrame, runs: set[str]) -> pd.DataFrame:
    return frame[frame["run"].astype(str).isin(runs)]


def evaluate_across_sizes(
    diagnostics_df: pd.DataFrame | None,
    downstream_df: pd.DataFrame | None,
    pooled_prediction: Mapping[str, Any] | None,
    runs: Any,
    predictions_by_size: Mapping[str, Mapping[str, Any]] | None = None,
    null_diagnostics_df: pd.DataFrame | None = None,
    run_infos_by_size: Mapping[str, list[RunInfo]] | None = None,
    baselines_by_size: Mapping[str, Mapping[str, Any]] | None = None,
) -> ScaleFindings | None:
    """F1–F7 at every size and across sizes; None when the tables hold fewer than two sizes.

    ``run_infos_by_size`` / ``baselines_by_size`` (each size's runs and n-gram baselines): a size whose runs
    have not all left the unigram plateau gets the one-size report's "not applicable" for every finding, and
    is left out of the trends; the pooled F7 too when any pooled model is on the plateau."""
    diag, down = normalise_table(diagnostics_df), normalise_table(downstream_df)
    null = normalise_table(null_diagnostics_df) if null_diagnostics_df is not None else None
    infos, bases = run_infos_by_size or {}, baselines_by_size or {}
    runs_frame = _runs_with_size(runs)
    where = run_sizes(diag, down, null)
    if SIZE_COLUMN in runs_frame.columns:
        where.update({str(r): str(s) for r, s in zip(runs_frame["run"], runs_frame[SIZE_COLUMN], strict=True)
                      if isinstance(s, str) and s})
    sizes = order_sizes(where.values())
    if len(sizes) < 2:
        return None
    per_size: dict[str, list[Finding]] = {}
    for size in sizes:
        mine = {r for r, s in where.items() if s == size}
        per_size[size] = evaluate_findings(
            _subset(diag, mine), _subset(down, mine), (predictions_by_size or {}).get(size),
            runs_frame[runs_frame["run"].astype(str).isin(mine)] if len(runs_frame) else runs_frame,
            _subset(null, mine) if null is not None else None)
        apply_baseline_verdicts(per_size[size], list(infos.get(size, [])), dict(bases.get(size, {})))
    stuck = [r for s in sizes for r in not_past_unigram(list(infos.get(s, [])), dict(bases.get(s, {})))]
    out = []
    for i, f in enumerate(per_size[sizes[0]]):
        by_size = {s: per_size[s][i] for s in sizes}
        if f.id == "F7":
            out.append(_pooled_f7(sizes, by_size, pooled_prediction, stuck))
        else:
            out.append(summarise(f.id, sizes, by_size))
    return ScaleFindings(sizes, per_size, out)


def _pooled_f7(sizes: list[str], by_size: Mapping[str, Finding], pooled: Mapping[str, Any] | None,
               stuck: list[str] = ()) -> ScaleFinding:
    """F7 decided by the predictor that pools every size; per-size predictors are context. Not applicable when
    a pooled model has not left its size's unigram plateau (``stuck``: such runs, of every size)."""
    f = check_f7(pooled or {})
    if stuck:
        mark_not_applicable([f], f"runs {', '.join(stuck)} have a validation perplexity at or above their size's "
                                 "unigram baseline; a predictor pooling them says how far each model got")
    sf = summarise("F7", sizes, by_size)
    per = ", ".join(f"{s}: {by_size[s].verdict}" for s in sizes)
    sf.verdict = f.verdict
    sf.reason = f"pooled predictor over {len(sizes)} sizes: {f.reason or f.verdict}" + (
        f" (per-size predictors: {per})" if any(by_size[s].evidence for s in sizes) else "")
    sf.per_size = {"pooled": f, **by_size}
    sf.notes = [*f.notes, *sf.notes]
    return sf


__all__ = ["ScaleFinding", "ScaleFindings", "Trend", "evaluate_across_sizes", "holds_at", "order_sizes",
           "size_axis", "summarise", "trend"]
