"""The report section "Did guidance move low-rank toward full-rank?" (spec guides.md §4).

:func:`guide_verdicts` assembles, per (guide, method) of a guide study, the gap closure per family, the sign
prediction, the downstream / shift / forgetting changes, the cost and the verdict from the tables
(rankscope/report/guide_closure.py holds the rules); :func:`guide_html` renders them. Full-rank with a guide is
shown as a control: its distance to unguided full-rank in units of the null floor (how far the guide moves
full-rank itself), without a verdict.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from rankscope.report.guide_closure import (
    CLOSES,
    FAMILIES,
    FAMILY_MEASURES,
    NO_NULL,
    REFERENCE,
    Arm,
    GuideVerdict,
    arms_from_study,
    closure,
    distances,
    floor_units,
    null_floor,
    paired_change,
    references,
    sign_check,
    verdict,
)
from rankscope.report.guide_cost import NO_PARITY, cost_ratio, parity_rows, reason
from rankscope.report.htmlkit import esc, table
from rankscope.report.load import normalise_table
from rankscope.report.parity_section import load_parity

# (label, metric, names left out): higher accuracy is better; lower bits/byte and forgetting are better
CHANGES = (("downstream accuracy", "avg_acc", ()), ("shift bits/byte", "heldout_bpb", ("val", "in-domain")),
           ("forgetting", "ft_forgetting", ()))


def guide_verdicts(diag: pd.DataFrame, others: pd.DataFrame, arms: list[Arm], ppl: Mapping[str, float],
                   tolerance: float = math.nan, parity: Mapping[str, Any] | None = None) -> list[GuideVerdict]:
    """One verdict per (guide, method) of the guided arms; ``others``: downstream, held-out and fine-tuning rows;
    ``parity``: results/parity.json (its cost rows give the cost to the parity target; None: no parity stage)."""
    costs = parity_rows(parity or {})
    dist = distances(diag, arms)
    floor = null_floor(diag, dist, arms)
    has_null = any(np.isfinite(v) for v in floor.values())
    refs = references(diag, arms)
    out = []
    groups: dict[tuple[str, str], list[Arm]] = {}
    for a in arms:
        groups.setdefault((a.guide, a.method), []).append(a)
    for (guide, method), group in sorted(groups.items()):
        guided = [(a.base, a.run) for a in group if a.role == "guided"]
        if not guided:
            continue
        cm_pairs = [(a.base, a.run) for a in group if a.role == "cost_matched"]
        if method == REFERENCE:
            closures = {f: floor_units(dist, floor, [a for _, a in guided], f) for f in FAMILIES}
        else:
            closures = {f: closure(dist, floor, guided, f) for f in FAMILIES}
        cm = {f: closure(dist, floor, cm_pairs, f) for f in FAMILIES} if cm_pairs else {}
        changes = {label: paired_change(others, metric, guided, names) for label, metric, names in CHANGES}
        extra = float(np.nanmean([a.extra_flops for a in group if a.role == "guided"] or [math.nan]))
        to_target = cost_ratio(costs, guided) if costs else None
        cm_to_target = cost_ratio(costs, cm_pairs) if costs and cm_pairs else None
        rel = [ppl[a] / ppl[b] - 1 for b, a in guided if ppl.get(a, 0) > 0 and ppl.get(b, 0) > 0]
        ppl_change = float(np.mean(rel)) if rel else math.nan
        if method == REFERENCE:
            word, reasons = "control", ["full-rank with the guide: how far the guide moves full-rank itself"]
        else:
            word, reasons = verdict(closures, guide, has_null, downstream=changes["downstream accuracy"],
                                    extra_flops=extra, cost_matched=cm, ppl_change=ppl_change,
                                    tolerance=tolerance, to_target=to_target)
        if to_target is not None:
            reasons = [*reasons, reason("guided / unguided", to_target)]
            if to_target.measured:
                reasons += [reason("guided / unguided", cost_ratio(costs, guided, key))
                            for key in ("tokens_to_target", "peak_mib")]
        if cm_to_target is not None:
            reasons.append(reason("cost-matched control / unguided", cm_to_target))
        out.append(GuideVerdict(guide, method, len(guided), closures, word, reasons,
                                sign_check(diag, guide, guided, refs), changes, cm, extra, ppl_change,
                                to_target, cm_to_target))
    return out


def _num(x: float, fmt: str = "{:+.2f}") -> str:
    return fmt.format(x) if np.isfinite(x) else "–"


def _closure_cell(c) -> str:
    if not np.isfinite(c.mean):
        return "–" + (f" ({c.note})" if c.note else "")
    iv = f" [{_num(c.lo)}, {_num(c.hi)}]" if np.isfinite(c.lo) else " (one seed)"
    return f"{_num(c.mean)}{iv}"


def _control_cell(c) -> str:
    """Full-rank + guide: its distance to unguided full-rank in floor units."""
    if not np.isfinite(c.mean):
        return "–"
    iv = f" [{c.lo:.2f}, {c.hi:.2f}]" if np.isfinite(c.lo) else ""
    return f"{c.mean:.2f}{iv} × floor"


def _change_cell(ch: tuple[float, float, float, int]) -> str:
    mean, lo, hi, n = ch
    if n == 0:
        return "–"
    return f"{mean:+.3g}" + (f" [{lo:+.3g}, {hi:+.3g}]" if n >= 2 else " (one seed)")


def guide_html(verdicts: list[GuideVerdict]) -> str:
    """The section body: a table of G per family and verdicts, then one line of reasons per arm."""
    if not verdicts:
        return "<p>No guided arms in this study (add a <code>guides:</code> section to the study config).</p>"
    head = ["guide", "method", "seeds", *(f"G {f}" for f in FAMILIES), "sign prediction",
            *(label for label, _, _ in CHANGES), "Δ ppl", "extra FLOPs per update", "FLOPs to target (× unguided)",
            "verdict"]
    rows = []
    for v in verdicts:
        cells = [_control_cell(v.closures[f]) if v.word == "control" else _closure_cell(v.closures[f])
                 for f in FAMILIES]
        rows.append([v.guide, v.method, v.n, *cells, v.sign, *(_change_cell(v.changes[k]) for k, _, _ in CHANGES),
                     _num(v.ppl_change, "{:+.1%}"), _num(v.extra_flops, "{:+.0%}"),
                     v.to_target.cell() if v.to_target is not None else NO_PARITY, v.word])
    measures = "; ".join(f"{f}: {', '.join(m)}" for f, m in FAMILY_MEASURES.items())
    intro = (
        "<p>Gap closure per family, G = (d(unguided, FR) − d(guided, FR)) / (d(unguided, FR) − d(FR, FR sibling)),"
        f" per paired seed, mean and 95 % t interval over seeds. 1 = the guided arm is as close to full-rank as a "
        f"full-rank sibling; 0 = no change; &lt; 0 = farther. Measures ({esc(measures)}). Success needs G ≥ "
        f"{CLOSES} with an interval above 0 in two families, one of them not optimised by the guide, at parity, "
        "downstream not worse beyond its interval, and extra FLOPs ≤ 35 % or a gain the cost-matched control "
        "does not reach (docs/guides.md \"The guide study\"). Full-rank with the guide is a control: its "
        "distance to unguided full-rank in units of the null floor. FLOPs to target: the FLOPs the guided run "
        "needs to reach the study's parity target perplexity (its guide's extra passes counted) over its "
        "unguided run's, per paired seed, mean and 95 % t interval; when parity measured it, it is the cost the "
        "35 % rule reads (else the extra FLOPs per update).</p>")
    reasons = [f"<li><strong>{esc(v.guide)} on {esc(v.method)}: {esc(v.word)}</strong>: {esc('; '.join(v.reasons))}"
               + "".join(f"; cost-matched control G {esc(f)} {esc(_closure_cell(c))}" for f, c in
                         v.cost_matched.items() if np.isfinite(c.mean)) + "</li>" for v in verdicts]
    null = "" if all(v.word != NO_NULL for v in verdicts) else (
        '<p class="missing">No full-rank sibling in this study: the null floor is unknown (add '
        "<code>siblings: {methods: [full_rank], data_seeds: [1]}</code>).</p>")
    return intro + null + table(head, rows, "guides") + f'<ul class="guide-verdicts">{"".join(reasons)}</ul>'


HEADING = "Did guidance move low-rank toward full-rank?"


def without_arms(data):
    """The study data without its guided and cost-matched arms: the paper's findings, the noise floor and parity
    compare methods, and an arm (method galore, guide sam) must not be pooled with its unguided method."""
    arms = {a.run for a in arms_from_study(data.study)}
    if not arms:
        return data
    diag = data.diagnostics
    mine = diag["run"].isin(arms) | ((diag["scope"] == "pair") & diag["name"].isin(arms))
    return replace(data, runs=[r for r in data.runs if r.name not in arms], diagnostics=diag[~mine],
                   downstream=data.downstream[~data.downstream["run"].isin(arms)])


def guide_parts(data, robust) -> list[str]:
    """The section's heading and body for a study with ``guide_arms`` in study.json (nothing otherwise)."""
    arms = arms_from_study(data.study)
    if not arms:
        return []
    frames = [f for f in (data.downstream, robust.heldout, robust.finetune) if f is not None and not f.empty]
    others = normalise_table(pd.concat(frames, ignore_index=True) if frames else None)
    ppl = {r.name: r.final_val_ppl for r in data.runs}
    tolerance = float((data.study.get("parity") or {}).get("tolerance") or math.nan)
    verdicts = guide_verdicts(data.diagnostics, others, arms, ppl, tolerance, load_parity(data.root) or None)
    return [f'<h2 id="guides">{esc(HEADING)}</h2>', guide_html(verdicts)]
