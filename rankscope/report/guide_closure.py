"""Gap closure of guided arms toward full-rank, and its verdict (spec guides.md §4): pure functions of tables.

A guide study has, for each guided method and seed, an unguided run (the *base*), a guided arm with the same
init and data seed, optionally a cost-matched unguided control (the base given the guide's extra FLOPs as
more tokens), and full-rank with its data-order siblings. The study lists its arms in study.json
(``guide_arms``: run, method, guide, role "guided" | "cost_matched", base, extra_flops).

Per family, a run's distance to its full-rank reference (the full-rank run of the same init and data seed):

* barrier: the IMIB to it (cross-fitted ``imib_xfit`` when the table has it);
* activations: 1 − CKA (debiased when present) averaged over the last third of the blocks;
* spectra: |α − α_FR| (``w_alpha``) and |log(stable rank / stable rank_FR)| (``w_stable_rank``); the family's G
  per seed is the mean of the two measures' G.

The null floor is the same distance between a full-rank sibling (same start, other data order) and its
reference. Gap closure per paired seed: G = (d_unguided − d_guided) / (d_unguided − floor); its interval is a
t interval over seeds (none with one seed). Verdict words and rules: :func:`verdict`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from rankscope.report.guide_cost import CostRatio
from rankscope.report.load import prefer_rows
from rankscope.report.seedstats import t_interval

SUCCESS, FAILURE, INCONCLUSIVE, NO_NULL = "success", "failure", "inconclusive", "no null: run siblings"
FAMILIES = ("barrier", "activations", "spectra")
CLOSES = 0.25  # spec: G ≥ 0.25 with an interval above 0
MAX_EXTRA_FLOPS = 0.35  # spec: extra FLOPs ≤ 35 % (or a gain the cost-matched control does not reach); see cost_used
REFERENCE = "full_rank"
# what each guide optimises (a family, or a sharpness metric that is no family): success needs a family it does not
OPTIMISES = {"align": "activations", "spectral": "spectra", "sam": "pca_top1_sharpness",
             "msam": "pca_top1_sharpness", "rwp": "rand_sharpness"}
# the sign prediction of docs/guides.md: (metric, +1 = distance to full-rank grows, −1 = shrinks)
PREDICTION = {"rwp": ("rand_sharpness", +1), "sam": ("pca_top1_sharpness", -1), "msam": ("pca_top1_sharpness", -1)}


@dataclass(frozen=True)
class Arm:
    """One extra run of a guide study, paired with its unguided ``base`` run."""

    run: str
    method: str
    guide: str
    role: str  # "guided" or "cost_matched"
    base: str
    extra_flops: float = math.nan  # the guide's extra FLOPs as a fraction of the base run's


def arms_from_study(study: dict) -> list[Arm]:
    """The arms study.json lists (empty for a study without a guides section)."""
    out = []
    for a in study.get("guide_arms") or []:
        out.append(Arm(str(a["run"]), str(a["method"]), str(a["guide"]), str(a.get("role", "guided")),
                       str(a["base"]), float(a.get("extra_flops", math.nan))))
    return out


def _last(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows at each run's last step."""
    if rows.empty:
        return rows
    last = rows.groupby("run")["step"].transform("max")
    return rows[rows["step"] == last]


def _seeds(diag: pd.DataFrame) -> dict[str, tuple[float, float]]:
    return {r: (i, d) for r, i, d in zip(diag["run"], diag["init_seed"], diag["data_seed"], strict=True)}


def references(diag: pd.DataFrame, arms: list[Arm]) -> dict[str, str]:
    """run -> its full-rank reference, as the analyzer picks it (diagnostics/analyze.py ``pick_reference``) among
    the unguided full-rank runs: the one with the same init and data seed; for a full-rank run, the one of its init
    seed with the lowest data seed (a full-rank sibling -> that run; that run itself has no entry)."""
    seeds = _seeds(diag)
    extra = {a.run for a in arms}
    methods = dict(zip(diag["run"], diag["method"], strict=True))
    fr = {r: s for r, s in seeds.items() if methods.get(r) == REFERENCE and r not in extra}
    out = {}
    for run, (i, d) in seeds.items():
        if run in fr:
            first = sorted((r for r, (ri, _) in fr.items() if ri == i), key=lambda r: fr[r][1])[0]
            if first != run:
                out[run] = first
            continue
        same = [r for r, (ri, rd) in fr.items() if ri == i and rd == d]
        if same:
            out[run] = same[0]
    return out


def siblings(diag: pd.DataFrame, arms: list[Arm]) -> set[str]:
    """Full-rank runs whose reference is another full-rank run: the within-method null."""
    methods = dict(zip(diag["run"], diag["method"], strict=True))
    return {r for r in references(diag, arms) if methods.get(r) == REFERENCE and r not in {a.run for a in arms}}


def _pick(diag: pd.DataFrame, preferred: str, fallback: str) -> str:
    return preferred if (diag["metric"] == preferred).any() else fallback


def _barrier(diag: pd.DataFrame, refs: dict[str, str]) -> dict[str, float]:
    metric = _pick(diag, "imib_xfit", "imib")
    rows = _last(prefer_rows(diag[(diag["metric"] == metric) & (diag["scope"] == "pair") & diag["value"].notna()]))
    out: dict[str, list[float]] = {}
    for run, other, v in zip(rows["run"], rows["name"], rows["value"], strict=True):
        for x, y in ((run, other), (other, run)):
            if refs.get(x) == y:
                out.setdefault(x, []).append(float(v))
    return {r: float(np.mean(v)) for r, v in out.items()}


def _activations(diag: pd.DataFrame, refs: dict[str, str]) -> dict[str, float]:
    metric = _pick(diag, "act_cka_debiased", "act_cka")
    rows = diag[(diag["metric"] == metric) & (diag["scope"] == "layer") & diag["value"].notna()]
    rows = _last(prefer_rows(rows))
    layer = pd.to_numeric(rows["name"], errors="coerce")
    rows = rows[layer.notna()].assign(layer=layer[layer.notna()])
    out = {}
    for run, g in rows.groupby("run"):
        if run not in refs:
            continue
        layers = sorted(set(g["layer"]))
        late = layers[-max(1, len(layers) // 3):]  # the last third (at least the last layer)
        out[str(run)] = 1.0 - float(g.loc[g["layer"].isin(late), "value"].mean())
    return out


def _model_last(diag: pd.DataFrame, metric: str) -> dict[str, float]:
    rows = _last(prefer_rows(diag[(diag["metric"] == metric) & (diag["scope"] == "model") & diag["value"].notna()]))
    return {str(r): float(g["value"].mean()) for r, g in rows.groupby("run")}


def _spectra(diag: pd.DataFrame, refs: dict[str, str]) -> dict[str, dict[str, float]]:
    alpha, sr = _model_last(diag, "w_alpha"), _model_last(diag, "w_stable_rank")
    out: dict[str, dict[str, float]] = {"alpha": {}, "stable_rank": {}}
    for run, ref in refs.items():
        if run in alpha and ref in alpha:
            out["alpha"][run] = abs(alpha[run] - alpha[ref])
        if run in sr and ref in sr and sr[run] > 0 and sr[ref] > 0:
            out["stable_rank"][run] = abs(math.log(sr[run] / sr[ref]))
    return out


def distances(diag: pd.DataFrame, arms: list[Arm]) -> dict[str, dict[str, float]]:
    """measure -> run -> distance to the run's full-rank reference. Measures: barrier, activations, alpha,
    stable_rank (the last two make the spectra family)."""
    refs = references(diag, arms)
    spec = _spectra(diag, refs)
    return {"barrier": _barrier(diag, refs), "activations": _activations(diag, refs),
            "alpha": spec["alpha"], "stable_rank": spec["stable_rank"]}


FAMILY_MEASURES = {"barrier": ("barrier",), "activations": ("activations",), "spectra": ("alpha", "stable_rank")}


def null_floor(diag: pd.DataFrame, dist: dict[str, dict[str, float]], arms: list[Arm]) -> dict[str, float]:
    """measure -> mean distance of the full-rank siblings to their reference (NaN: no sibling)."""
    sibs = siblings(diag, arms)
    out = {}
    for measure, d in dist.items():
        vals = [v for r, v in d.items() if r in sibs]
        out[measure] = float(np.mean(vals)) if vals else math.nan
    return out


@dataclass
class Closure:
    """G of one arm in one family: per paired seed and its mean with a 95 % t interval over seeds."""

    family: str
    per_seed: np.ndarray
    mean: float = math.nan
    lo: float = math.nan
    hi: float = math.nan
    d_unguided: float = math.nan
    d_guided: float = math.nan
    floor: float = math.nan
    note: str = ""

    @property
    def closes(self) -> bool:
        return bool(self.mean >= CLOSES and self.lo > 0)

    @property
    def inside_floor(self) -> bool:
        """The interval says G < 0.25: the arm did not close a quarter of the gap."""
        return bool(np.isfinite(self.hi) and self.hi < CLOSES)


def _g(d_u: float, d_g: float, floor: float) -> float:
    gap = d_u - floor
    return (d_u - d_g) / gap if gap > 0 else math.nan


def closure(dist: dict[str, dict[str, float]], floor: dict[str, float], pairs: list[tuple[str, str]],
            family: str) -> Closure:
    """G of one family over ``pairs`` of (base run, arm run), one pair per seed."""
    per_seed, du, dg, notes = [], [], [], set()
    for base, arm in pairs:
        gs = []
        for m in FAMILY_MEASURES[family]:
            d = dist.get(m, {})
            if base in d and arm in d and np.isfinite(floor.get(m, math.nan)):
                g = _g(d[base], d[arm], floor[m])
                if not np.isfinite(g):
                    notes.add(f"{m}: the unguided run is within the null floor (nothing to close)")
                gs.append(g)
                du.append(d[base])
                dg.append(d[arm])
        per_seed.append(float(np.mean(gs)) if gs and all(np.isfinite(gs)) else math.nan)
    arr = np.asarray(per_seed, dtype=float)
    out = Closure(family, arr, note="; ".join(sorted(notes)))
    finite = arr[np.isfinite(arr)]
    if finite.size:
        mean, lo, hi = t_interval(finite)
        out.mean, out.lo, out.hi = float(mean), float(lo), float(hi)
        out.d_unguided, out.d_guided = float(np.mean(du)), float(np.mean(dg))
        out.floor = float(np.nanmean([floor[m] for m in FAMILY_MEASURES[family]]))
        if finite.size < 2:
            out.note = "; ".join(filter(None, [out.note, "one seed: no interval over seeds"]))
    return out


def floor_units(dist: dict[str, dict[str, float]], floor: dict[str, float], runs: list[str], family: str) -> Closure:
    """Full-rank with a guide (a control): its distance to unguided full-rank in units of the null floor, per
    seed (mean over the family's measures) with a t interval; 1 = as far as a full-rank sibling."""
    per_seed = []
    for run in runs:
        r = [dist.get(m, {}).get(run, math.nan) / floor[m] for m in FAMILY_MEASURES[family]
             if floor.get(m, 0) > 0]
        per_seed.append(float(np.mean(r)) if r and all(np.isfinite(r)) else math.nan)
    arr = np.asarray(per_seed, dtype=float)
    out = Closure(family, arr)
    finite = arr[np.isfinite(arr)]
    if finite.size:
        out.mean, out.lo, out.hi = (float(x) for x in t_interval(finite))
    return out


def paired_change(table: pd.DataFrame, metric: str, pairs: list[tuple[str, str]],
                  exclude_names: tuple[str, ...] = ()) -> tuple[float, float, float, int]:
    """Mean (arm − base) of ``metric`` at the last step (averaged over names), its t interval, and n."""
    rows = table[(table["metric"] == metric) & table["value"].notna()]
    if exclude_names:
        rows = rows[~rows["name"].astype(str).isin(exclude_names)]
    vals = _model_last_any(rows)
    diffs = [vals[a] - vals[b] for b, a in pairs if a in vals and b in vals]
    if not diffs:
        return math.nan, math.nan, math.nan, 0
    mean, lo, hi = t_interval(np.asarray(diffs, dtype=float))
    return float(mean), float(lo), float(hi), len(diffs)


def _model_last_any(rows: pd.DataFrame) -> dict[str, float]:
    rows = _last(prefer_rows(rows))
    return {str(r): float(g["value"].mean()) for r, g in rows.groupby("run")}


def sign_check(diag: pd.DataFrame, guide: str, pairs: list[tuple[str, str]], refs: dict[str, str]) -> str:
    """The docs' prediction for ``guide`` (rwp: farther from full-rank on random sharpness; sam/msam: closer on
    top-1), checked on the paired change of |sharpness − sharpness_FR|."""
    if guide not in PREDICTION:
        return "no prediction for this guide"
    metric, sign = PREDICTION[guide]
    fn = metric + "_fn"
    metric = fn if metric == "rand_sharpness" and (diag["metric"] == fn).any() else metric
    vals = _model_last(diag, metric)
    diffs = [abs(vals[a] - vals[refs[a]]) - abs(vals[b] - vals[refs[b]]) for b, a in pairs
             if a in refs and b in refs and {a, b, refs[a], refs[b]} <= set(vals)]
    if not diffs:
        return f"not measured (no {metric} of these runs and of their full-rank reference)"
    mean, lo, hi = (float(x) for x in t_interval(np.asarray(diffs, dtype=float)))
    said = "farther from" if sign > 0 else "closer to"
    what = f"predicted {said} full-rank on {metric}; Δ|distance| = {mean:+.3g}"
    if len(diffs) < 2:
        moved = "as predicted" if mean * sign > 0 else "against the prediction"
        return f"{what} (one seed, no interval): {moved}"
    what += f" [{lo:+.3g}, {hi:+.3g}]"
    if (lo > 0 and sign > 0) or (hi < 0 and sign < 0):
        return f"{what}: confirmed"
    if (lo > 0 and sign < 0) or (hi < 0 and sign > 0):
        return f"{what}: contradicted"
    return f"{what}: interval includes 0, unresolved"


@dataclass
class GuideVerdict:
    """One (guide, method): closures per family, side checks, and the verdict in the spec's words."""

    guide: str
    method: str
    n: int
    closures: dict[str, Closure]
    word: str
    reasons: list[str] = field(default_factory=list)
    sign: str = ""
    changes: dict[str, tuple[float, float, float, int]] = field(default_factory=dict)
    cost_matched: dict[str, Closure] = field(default_factory=dict)
    extra_flops: float = math.nan
    ppl_change: float = math.nan  # mean relative change of final validation perplexity, arm vs base
    to_target: CostRatio | None = None  # FLOPs to the parity target over the unguided run's (parity.json)
    cost_matched_to_target: CostRatio | None = None  # the same for the cost-matched control


def cost_used(extra_flops: float, to_target: CostRatio | None) -> tuple[float, str]:
    """(extra cost as a fraction, what it is) for the verdict: the FLOPs to the parity target over the unguided
    run's, minus 1, when parity measured them for at least one paired seed; else the extra FLOPs per update."""
    if to_target is not None and to_target.measured:
        return to_target.mean - 1.0, "extra FLOPs to the parity target"
    return extra_flops, "extra FLOPs per update"


def verdict(closures: dict[str, Closure], guide: str, has_null: bool, *, downstream: tuple | None = None,
            extra_flops: float = math.nan, cost_matched: dict[str, Closure] | None = None,
            ppl_change: float = math.nan, tolerance: float = math.nan,
            to_target: CostRatio | None = None) -> tuple[str, list[str]]:
    """The spec's word for one arm, and why. Success: G ≥ 0.25 with an interval above 0 in ≥ 2 families, one of
    them not optimised by the guide, at parity (perplexity within ``tolerance`` of the base's, and the parity
    target reached), downstream not worse beyond its interval, extra cost ≤ 35 % (:func:`cost_used`: the FLOPs
    to the parity target when measured, else the extra FLOPs per update) or a gain the cost-matched control does
    not reach. Failure: G's interval below 0.25 in every family, or only the optimised family closes while the
    others are below 0.25. Anything else is inconclusive."""
    if not has_null:
        return NO_NULL, ["no full-rank sibling: the null floor d(FR, FR sibling) is unknown"]
    optimised = OPTIMISES.get(guide, "")
    closing = [f for f, c in closures.items() if c.closes]
    other = [f for f in closing if f != optimised]
    reasons = [f"closes the gap (G ≥ {CLOSES}, interval above 0): {', '.join(closing) or 'no family'}"]
    measured = [c for c in closures.values() if np.isfinite(c.mean)]
    if not measured:
        return INCONCLUSIVE, reasons + ["no family measured for this arm"]
    if closing and not other and all(c.inside_floor for f, c in closures.items() if f != optimised
                                     and np.isfinite(c.mean)):
        return FAILURE, reasons + [f"only the optimised family ({optimised}) moved"]
    if all(c.inside_floor for c in measured) and len(measured) == len(closures):
        return FAILURE, reasons + ["G inside the floor in every family"]
    if len(closing) < 2 or not other:
        why = "fewer than two families close" if len(closing) < 2 else f"only {optimised} (optimised) closes"
        return INCONCLUSIVE, reasons + [why]
    if np.isfinite(tolerance) and np.isfinite(ppl_change) and abs(ppl_change) > tolerance:
        return INCONCLUSIVE, reasons + [f"not at parity: perplexity differs by {ppl_change:+.1%} "
                                        f"(tolerance {tolerance:.0%})"]
    if to_target is not None and to_target.never_reached:
        return INCONCLUSIVE, reasons + ["not at parity: the guided run never reaches the parity target within "
                                        "the tolerance"]
    if downstream is not None and np.isfinite(downstream[2]) and downstream[2] < 0:
        return FAILURE, reasons + ["downstream accuracy worse beyond its interval"]
    cost, what = cost_used(extra_flops, to_target)
    if not (np.isfinite(cost) and cost <= MAX_EXTRA_FLOPS):
        cm = cost_matched or {}
        beaten = [f for f in other if f in cm and np.isfinite(cm[f].mean) and closures[f].lo > cm[f].mean]
        told = f"{what} {cost:+.0%}, above {MAX_EXTRA_FLOPS:.0%}" if np.isfinite(cost) else f"{what} unknown"
        if not cm:
            return INCONCLUSIVE, reasons + [f"{told}, and no cost-matched control: add controls.cost_matched"]
        if not beaten:
            return FAILURE, reasons + [f"{told}, and the cost-matched control closes as much for the same FLOPs"]
        reasons.append(f"{told}, but beats the cost-matched control in {', '.join(beaten)}")
    else:
        reasons.append(f"{what} {cost:+.0%} (≤ {MAX_EXTRA_FLOPS:.0%})")
    return SUCCESS, reasons
