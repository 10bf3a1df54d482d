"""F7 (and F6, re-exported): the findings about perplexity versus downstream accuracy (diagnostics.md §9).

Kept apart from the geometric checks because their uncertainty is different: F6 (``finding_f6``) compares the
perplexity and accuracy differences of method pairs with the sibling spreads; F7 reads the paired bootstrap
interval the predictor already computed and never recomputes the regression here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from rankscope.report.finding_f6 import check_f6
from rankscope.report.stats import HOLDS, Estimate, Evidence, Finding, evidence_from, verdict_above

Score = tuple[float, float, float]  # value, 95% CI low, 95% CI high (NaN when absent)
PARTS = (("baseline", ("baseline",)), ("extended", ("extended",)), ("difference", ("difference", "diff")))


def _pair(ci: Any) -> tuple[float, float]:
    ok = isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(x, (int, float)) for x in ci)
    return (float(ci[0]), float(ci[1])) if ok else (math.nan, math.nan)


def _scores(values: Mapping[str, Any], cis: Mapping[str, Any]) -> dict[str, Score]:
    """Numeric entries of ``values`` with their CI from ``cis[k]`` or from ``values[k + '_ci']``."""
    out = {}
    for k, v in values.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = (float(v), *_pair(cis.get(k, values.get(f"{k}_ci"))))
    return out


def _first(d: Mapping[str, Any], keys: tuple[str, ...]) -> Mapping[str, Any]:
    return next((d[k] for k in keys if isinstance(d.get(k), Mapping)), {})


def prediction_schemes(pred: Mapping[str, Any]) -> dict[str, dict[str, dict[str, Score]]]:
    """{scheme: {baseline|extended|difference: {score: (value, lo, hi)}}} from either prediction.json layout.

    downstream/predict.py writes ``schemes.<loo|lomo>.{baseline, extended, diff, ci}``; the study-folder
    contract also allows top-level ``baseline``/``extended``/``difference`` with ``<score>_ci`` keys.
    """
    out: dict[str, dict[str, dict[str, Score]]] = {}
    blocks = [
        (str(n), s, s.get("ci") or {})
        for n, s in (pred.get("schemes") or {}).items()
        if isinstance(s, Mapping)
    ]
    if any(isinstance(pred.get(k), Mapping) for k in ("baseline", "extended")):
        blocks.append(("main", pred, {}))
    for name, block, ci in blocks:
        parts = {part: _scores(_first(block, keys), _first(ci, keys)) for part, keys in PARTS}
        for k in set(parts["baseline"]) & set(parts["extended"]) - set(parts["difference"]):
            parts["difference"][k] = (parts["extended"][k][0] - parts["baseline"][k][0], math.nan, math.nan)
        out[name] = parts
    return out


def check_f7(prediction: Mapping[str, Any]) -> Finding:
    """Extended (log-PPL + metrics) minus baseline (log-PPL) CV R², paired bootstrap interval above 0."""
    f = Finding(
        "F7",
        "Adding geometric and spectral metrics to perplexity improves prediction of downstream accuracy.",
        "CV R² of log-PPL + metrics minus CV R² of log-PPL alone > 0 (paired bootstrap 95% interval from the "
        "predictor; leave-one-out scheme when there are several); MAE difference used when R² is absent.",
    )
    if not prediction:
        f.reason = "missing: results/prediction.json"
        return f
    return _gain_verdict(f, prediction)


# Beyond zero-shot accuracy (downstream/predict.py TARGETS): what each extra target asks of the metrics.
TARGET_CLAIMS = {
    "shift_nll": "perplexity on a shifted held-out text",
    "ft_acc": "task accuracy after the fine-tuning probe",
    "forgetting": "forgetting under the fine-tuning probe (in-domain NLL after − before)",
}


def check_targets(predictions: Mapping[str, Mapping[str, Any]]) -> list[Finding]:
    """One F7-style row per extra prediction target: do the metrics add predictive power beyond log-PPL?"""
    out = []
    for target, pred in sorted(predictions.items()):
        kind, _, text = target.partition(":")
        what = TARGET_CLAIMS.get(kind, target) + (f" ({text})" if text else "")
        f = Finding(
            f"F7·{target}",
            f"Geometric and spectral metrics add predictive power beyond in-domain perplexity for {what}.",
            "Same predictor, CV and paired bootstrap as F7, with this target instead of zero-shot accuracy.",
        )
        out.append(_gain_verdict(f, pred) if isinstance(pred, Mapping) else f)
        if not isinstance(pred, Mapping):
            f.reason = f"missing: {pred}"
    return out


def _gain_verdict(f: Finding, prediction: Mapping[str, Any]) -> Finding:
    """Verdict from the predictor's paired interval of (extended − baseline) CV R² (or MAE)."""
    schemes = prediction_schemes(prediction)
    name = next((n for n in ("loo", "main") if n in schemes), next(iter(schemes), None))
    chosen = schemes.get(name or "", {})
    for key, sign in (("r2", 1.0), ("mae", -1.0)):  # lower MAE is better, so flip its sign
        if key not in chosen.get("difference", {}):
            continue
        for part in ("baseline", "extended"):
            if key in chosen[part]:
                f.evidence.append(Evidence(f"{part} {key} ({name})", *chosen[part][key]))
        d, lo, hi = chosen["difference"][key]
        est = Estimate(
            sign * d, source="given", lo_given=min(sign * lo, sign * hi), hi_given=max(sign * lo, sign * hi)
        )
        v, why = verdict_above(est)
        if not est.has_interval:
            why = "no paired bootstrap interval for the difference in prediction.json"
        label = f"extended − baseline R² ({name})" if key == "r2" else f"baseline − extended MAE ({name})"
        f.evidence.append(evidence_from(label, est, v, why))
        f.verdict, f.reason = v, why or ("interval above 0" if v == HOLDS else "interval below 0")
        for other, parts in schemes.items():
            if other != name and key in parts["difference"]:
                f.evidence.append(Evidence(f"extended − baseline {key} ({other})", *parts["difference"][key]))
        break
    else:
        f.reason = "missing: no r2 or mae for both baseline and extended in prediction.json"
    n = prediction.get("n_runs", prediction.get("n"))
    if n is not None:
        f.notes.append(models_note(prediction, n))
    if prediction.get("bootstrap"):
        f.notes.append(f"the predictor's bootstrap {prediction['bootstrap']}")
    for w in prediction.get("warnings") or []:
        f.notes.append(f"predictor warning: {w}")
    return f


def models_note(prediction: Mapping[str, Any], n: Any) -> str:
    """How many models the predictor had, per size and per feature (log-PPL counts as one)."""
    by_size = prediction.get("n_by_size") or {}
    sizes = f" ({', '.join(f'{v} at {k}' for k, v in by_size.items())})" if len(by_size) > 1 else ""
    feats = prediction.get("features")
    per = prediction.get("models_per_feature")
    if not isinstance(per, (int, float)) and isinstance(feats, list) and feats:
        per = float(n) / (len([x for x in feats if x != "log_ppl"]) + 1)
    if isinstance(per, (int, float)) and math.isfinite(per):
        k = len([x for x in feats if x != "log_ppl"]) + 1 if isinstance(feats, list) else None
        feat_txt = f" for {k} features" if k else ""
        return (f"n = {n} final models{sizes}{feat_txt}: {per:.2g} models per feature"
                + ("; exploratory (about 5 per feature are needed for a stable fit)" if per < 5 else ""))
    return f"n = {n} final models{sizes}: exploratory at this size"


__all__ = ["check_f6", "check_f7", "check_targets", "models_note", "prediction_schemes"]
