"""The report's perplexity-parity section, n-gram baseline verdicts, and the "differ at parity?" finding.

Reads only files: ``results/parity.json`` (target, choices, costs, curves), ``results/baselines.json`` (the
exact unigram / bigram perplexities of the validation split), and the parity models' tables under
``results/parity/``. A finding evaluated on runs of which one has not passed the unigram perplexity gets the
verdict :data:`NOT_APPLICABLE`: such a comparison is about how far each model got, not about the methods.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from rankscope.diagnostics.registry import display_name
from rankscope.downstream.item_rows import read_items
from rankscope.report.glossary import metric_label
from rankscope.report.htmlkit import esc, fmt, fmt_interval, table, verdict_badge
from rankscope.report.load import RunInfo, normalise_table
from rankscope.report.parity_verdicts import differ_at_parity, speed_html
from rankscope.report.plots_common import Figure, ordered
from rankscope.report.stats import Finding

__all__ = ["NOT_APPLICABLE", "apply_baseline_verdicts", "differ_at_parity", "parity_html"]

NOT_APPLICABLE = "not applicable: these models have not learned beyond unigram statistics"
EARLY_NOTE = ("At this scale the findings describe early training: the models are small and trained for a short "
              "budget, so every verdict below is about early-training behaviour of these runs, not about the "
              "methods at convergence.")
SMALL_SCALES = ("smoke", "tiny")


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def load_baselines(root: Path) -> dict[str, Any]:
    got = _json(Path(root) / "results" / "baselines.json").get("baselines") or {}
    if not got:
        got = _json(Path(root) / "results" / "parity.json").get("baselines") or {}
    return got if "unigram_ppl" in got else {}


def load_parity(root: Path) -> dict[str, Any]:
    return _json(Path(root) / "results" / "parity.json")


def past(ppl: float | None, baseline: float | None) -> bool | None:
    if ppl is None or baseline is None or not math.isfinite(ppl):
        return None
    return ppl < baseline


def not_past_unigram(runs: list[RunInfo], baselines: dict[str, Any]) -> list[str]:
    uni = baselines.get("unigram_ppl")
    return [r.name for r in runs if past(r.final_val_ppl, uni) is False]


def mark_not_applicable(findings: list[Finding], reason: str) -> None:
    """Replace each verdict by :data:`NOT_APPLICABLE` with ``reason``, keeping the verdict it had as a note."""
    for f in findings:
        f.notes.append(f"verdict before the baseline check: {f.verdict}")
        f.verdict = NOT_APPLICABLE
        f.reason = reason


def apply_baseline_verdicts(findings: list[Finding], runs: list[RunInfo], baselines: dict[str, Any]) -> None:
    """Replace each verdict by :data:`NOT_APPLICABLE` when any compared run is not past the unigram ppl."""
    stuck = not_past_unigram(runs, baselines)
    if stuck:
        mark_not_applicable(findings, f"runs {', '.join(stuck)} have a validation perplexity at or above the "
                                      f"unigram baseline ({baselines['unigram_ppl']:.4g}); a comparison with them "
                                      "says how far each model got")


def baseline_table(runs: list[RunInfo], baselines: dict[str, Any], label: str = "") -> str:
    if not baselines:
        return '<p class="missing">No n-gram baselines (results/baselines.json) for this study.</p>'
    uni, bi = baselines.get("unigram_ppl"), baselines.get("bigram_ppl")
    rows = []
    for r in runs:
        ppl = r.final_val_ppl
        rows.append((r.name, r.method, ppl, _yes(past(ppl, uni)), _yes(past(ppl, bi))))
    intro = (f"<p>Exact n-gram perplexities of the validation split with the study's tokenizer (counts from the "
             f"training split, no sampling): unigram (add-½) <b>{fmt(uni)}</b>, interpolated bigram "
             f"<b>{fmt(bi)}</b> (λ = {fmt(baselines.get('bigram_lambda'))}, chosen on a held-out tail of the "
             f"training split). {esc(label)}</p>")
    return intro + table(["run", "method", "final val ppl", "past unigram", "past bigram"], rows)


def _yes(v: bool | None) -> str:
    return "–" if v is None else ("yes" if v else "no")


def parity_curves(parity: dict[str, Any], baselines: dict[str, Any]) -> Figure:
    """ppl(tokens) of every cooled model per run, the target and the n-gram baselines."""
    from rankscope.report.plots_common import fig_to_uri, panels

    fig_ = Figure("parity-curves", "Cooled models: validation perplexity against tokens",
                  "Each point is a cooled model (a WSD cooldown branch or a full schedule); lines join one run's "
                  "models. Dashed: the parity target; dotted: unigram and bigram baselines.")
    curves = parity.get("curves") or {}
    if not curves:
        fig_.missing = "no parity curves in results/parity.json"
        return fig_
    fig, (ax,) = panels(1, width=6.0)
    for name, pts in curves.items():
        pts = sorted(pts, key=lambda p: p["tokens"])
        ax.plot([p["tokens"] for p in pts], [p["ppl"] for p in pts], marker="o", label=name)
    target = (parity.get("target") or {}).get("ppl")
    if target:
        ax.axhline(target, ls="--", color="black", lw=1, label="target")
    for key, style in (("unigram_ppl", ":"), ("bigram_ppl", "-.")):
        if baselines.get(key):
            ax.axhline(baselines[key], ls=style, color="grey", lw=1, label=key.split("_")[0])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(parity.get("x_axis", "tokens"))  # "step" for parity among existing checkpoints
    ax.set_ylabel("val perplexity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig_.uri = fig_to_uri(fig)
    return fig_


def cost_table(parity: dict[str, Any]) -> str:
    rows = []
    target = (parity.get("target") or {}).get("ppl")
    for r in parity.get("runs", []):
        dev = None if r.get("ppl") is None or not target else 100 * (r["ppl"] / target - 1)
        mem = r.get("memory_bytes")
        rows.append((r["main_run"], r["method"], r["status"], r.get("run") or "–", r.get("ppl"),
                     None if dev is None else f"{dev:+.1f} %", r.get("tokens_to_target"), r.get("flops_to_target"),
                     r.get("seconds_to_target"), None if mem is None else mem / 2**20, r.get("peak_mib"),
                     r.get("best_ppl"), r.get("equal_step_ppl")))
    return table(["run", "method", "status", "parity model", "achieved ppl", "vs target", "tokens to target",
                  "FLOPs to target", "train seconds to target", "weights+grads+state (MiB)", "peak (MiB)",
                  "best ppl", "equal-step ppl"], rows)


def interval_table(parity: dict[str, Any]) -> str:
    rows = []
    for method, d in (parity.get("per_method") or {}).items():
        cells = [method, f"{d.get('reached', 0)}/{d.get('seeds', 0)}"]
        for key in ("ppl", "tokens_to_target", "flops_to_target", "seconds_to_target"):
            v = d.get(key) or {}
            cells.append(f"{fmt(v.get('mean'))} {fmt_interval(v.get('lo'), v.get('hi'))}" if v.get("n") else "–")
        rows.append(cells)
    return table(["method", "seeds reached", "achieved ppl", "tokens", "FLOPs", "seconds"], rows)


def diagnostics_side_by_side(equal: pd.DataFrame, at_parity: pd.DataFrame, metrics: tuple[str, ...]) -> str:
    """Per method: each headline checkpoint metric at the equal-step final checkpoint and at parity."""
    eq, par = normalise_table(equal), normalise_table(at_parity)
    rows = []
    for metric in metrics:
        a = _per_method_final(eq, metric)
        b = _per_method_final(par, metric)
        for method in ordered(set(a) | set(b)):
            rows.append((metric_label(metric, display_name(metric)), method, a.get(method), b.get(method)))
    if not rows:
        return '<p class="missing">No diagnostic rows for the parity models.</p>'
    return table(["metric", "method", "equal steps (final)", "at parity"], rows)


def _per_method_final(frame: pd.DataFrame, metric: str) -> dict[str, float]:
    from rankscope.report.plots_common import model_rows

    rows = model_rows(frame, metric)
    rows = rows[rows["value"].notna()] if not rows.empty else rows
    if rows.empty:
        return {}
    last = rows[rows["step"] == rows.groupby("run")["step"].transform("max")]
    return last.groupby("method")["value"].mean().to_dict()


def parity_runs(root: Path, parity: dict[str, Any], main_runs: list[RunInfo]) -> list[RunInfo]:
    """RunInfo of every parity model (from runs/ or parity_runs/)."""
    from rankscope.report.load import _load_run

    by = {r.name: r for r in main_runs}
    out = []
    for name in parity.get("models", []):
        if name in by:
            out.append(by[name])
        elif (Path(root) / "parity_runs" / name).is_dir():
            out.append(_load_run(Path(root) / "parity_runs" / name, []))
    return out


def _without_arm_models(root: Path, parity: dict[str, Any], diag: pd.DataFrame, down: pd.DataFrame,
                        models: list[RunInfo]):
    """The parity findings compare methods: the parity models of a guide study's arms (study.json guide_arms) are
    left out of them (the cost table above lists the arms, and the guide section judges them)."""
    import json

    try:
        arms = {a["run"] for a in json.loads((Path(root) / "study.json").read_text()).get("guide_arms") or []}
    except (OSError, ValueError):
        arms = set()
    if not arms:
        return diag, down, models
    drop = {r.get("run") for r in parity.get("runs") or [] if r.get("main_run") in arms} - {None}
    drop |= arms

    def keep(frame: pd.DataFrame) -> pd.DataFrame:
        if frame.empty:
            return frame
        mine = frame["run"].isin(drop) | ((frame["scope"] == "pair") & frame["name"].isin(drop))
        return frame[~mine]

    return keep(diag), keep(down), [m for m in models if m.name not in drop]


def parity_html(root: Path, main_runs: list[RunInfo], equal_diag: pd.DataFrame, baselines: dict[str, Any],
                scale: str, headline: tuple[str, ...], render_finding, render_downstream) -> str:
    """The whole section: early-training note, baselines, target and costs, diagnostics and downstream at parity."""
    from rankscope.report.findings import evaluate_findings
    from rankscope.report.htmlkit import figure
    from rankscope.report.load import _read_json, _read_table

    parts = ['<h2 id="parity">Perplexity parity and baselines</h2>']
    if scale in SMALL_SCALES:
        parts.append(f'<p class="note"><b>{esc(EARLY_NOTE)}</b></p>')
    parts.append(baseline_table(main_runs, baselines, "Equal-step runs (final checkpoints):"))
    parity = load_parity(root)
    if not parity:
        parts.append('<p class="missing">No parity comparison in this study (study config: parity.protocol is off, '
                     'or the parity stage did not finish; see status.json).</p>')
        return "".join(parts)
    t = parity.get("target") or {}
    s = parity.get("settings") or {}
    parts.append(f"<p>Protocol <b>{esc(parity.get('protocol'))}</b>; target perplexity <b>{fmt(t.get('ppl'))}</b> "
                 f"({esc(t.get('how'))}); tolerance ±{fmt(100 * float(s.get('tolerance', 0)))} %; cap "
                 f"{fmt(s.get('cap'))}× the study's steps. A parity model is the cooled model closest to the target "
                 f"within the tolerance (status <i>within</i>); <i>outside</i> marks the nearest one when no model "
                 f"fell inside the band; <i>not reached</i> gives the best perplexity within the cap.</p>")
    parts.append(figure(parity_curves(parity, baselines)))
    parts.append("<h3>Cost to the target</h3>" + cost_table(parity))
    parts.append(speed_html(parity, equal_diag))
    if any((d.get("seeds") or 0) > 1 for d in (parity.get("per_method") or {}).values()):
        parts.append("<h3>Across seeds (mean [95% t-interval])</h3>" + interval_table(parity))
    models = parity_runs(root, parity, main_runs)
    miss: list[str] = []
    pdir = Path(root) / "results" / "parity"
    diag = _read_table(pdir / "diagnostics.parquet", miss, "parity diagnostics")
    down = _read_table(pdir / "downstream.parquet", miss, "parity downstream")
    pred = _read_json(pdir / "prediction.json", miss, "parity predictor")
    diag, down, models = _without_arm_models(root, parity, diag, down, models)
    parts.append(baseline_table(models, baselines, "Parity models:"))
    parts.append("<h3>Diagnostics: equal steps and at parity</h3>"
                 "<p>Model-level value of each headline metric at each method's equal-step final checkpoint and at "
                 "its parity model (mean over seeds). At parity, pairwise and reference metrics (IMIB/IMBH, CKA "
                 "against full-rank) pair the parity models themselves, each at its own step.</p>")
    parts.append(diagnostics_side_by_side(equal_diag, diag, headline))
    parts.append("<h3>Downstream at parity</h3>" + render_downstream(down))
    equal_down = _read_table(Path(root) / "results" / "downstream.parquet", [], "downstream")
    findings = evaluate_findings(diag, down, pred, models, null_diagnostics_df=equal_diag,
                                 null_downstream_df=equal_down, null_runs=main_runs)
    apply_baseline_verdicts(findings, models, baselines)
    p1 = differ_at_parity(down, pd.concat([equal_diag, diag], ignore_index=True), null_down=equal_down,
                          items=read_items(pdir / "downstream.parquet"))
    apply_baseline_verdicts([p1], models, baselines)
    rows = "".join(f"<tr><td>{esc(f.id)}</td><td>{esc(f.statement)}</td><td>{verdict_badge(f.verdict)}</td></tr>"
                   for f in [p1, *findings])
    parts.append("<h3>Findings at parity</h3><p>The same checks as above, evaluated on the parity models (label "
                 "<i>at parity</i>), plus P1, the question the study asks: trained to the same perplexity, do the "
                 "methods still differ downstream?</p>"
                 f"<table><thead><tr><th>#</th><th>finding (at parity)</th><th>verdict</th></tr></thead>"
                 f"<tbody>{rows}</tbody></table>")
    parts += [render_finding(f) for f in [p1, *findings]]
    if miss:
        parts.append("<p class=\"missing\">" + esc("; ".join(miss)) + "</p>")
    return "".join(parts)
