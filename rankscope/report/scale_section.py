"""The scale axis of a multi-size report: findings across sizes (table and details) and the figures over size.

Two figures where scale matters: each headline metric against model size, one line per method (mean over seeds
with a t band), and validation perplexity against downstream accuracy, one panel per size (the F6 question: do the
two orders agree at this size?). The words come from :mod:`rankscope.report.scale_findings`.
"""

from __future__ import annotations

import math

import pandas as pd

from rankscope.report.htmlkit import bullet_list, esc, fmt, fmt_interval, table, verdict_badge
from rankscope.report.nulls import SIBLING, model_values
from rankscope.report.plots_common import (
    Figure,
    fig_to_uri,
    label_axes,
    method_color,
    ordered,
    panels,
    plot_band,
    seed_band,
)
from rankscope.report.scale_findings import ScaleFinding, ScaleFindings, size_params
from rankscope.report.stats import kendall_tau
from rankscope.report.verdict_rules import is_exploratory

SCALE_METRICS = ("val_ppl", "avg_acc", "rand_sharpness", "pca_top1_sharpness", "w_erank", "w_stable_rank",
                 "act_cka", "dw_rel_fro")


def _x(sizes: list[str]) -> tuple[dict[str, float], str]:
    params = {s: size_params(s) for s in sizes}
    if all(math.isfinite(v) for v in params.values()):
        return params, "parameters (log scale)"
    return {s: float(i) for i, s in enumerate(sizes)}, "model size"


def metric_vs_size(diag: pd.DataFrame, down: pd.DataFrame, runs: pd.DataFrame, sizes: list[str]) -> Figure:
    """One panel per metric: the final value per run, mean over seeds per (method, size), t band."""
    fig_ = Figure("scale-metrics", "Metrics against model size",
                  "Each metric at each run's final step against model size, one line per method: mean over seeds, "
                  "shaded = 95% t band across seeds (none with one seed). Siblings are left out. val_ppl is the "
                  "trainer's last validation perplexity; avg_acc the one average downstream accuracy.")
    xs, xlabel = _x(sizes)
    frames = []
    mains = runs[~runs["sibling"]] if "sibling" in runs.columns else runs
    ppl = mains[["run", "method", "scale", "ppl"]].rename(columns={"ppl": "value"}).assign(metric="val_ppl")
    frames.append(ppl[ppl["value"].notna()])
    for metric in SCALE_METRICS[1:]:
        source = down if metric == "avg_acc" else diag
        if source is None or source.empty:
            continue
        vals = model_values(source, metric)
        if vals.empty:
            continue
        size_of = dict(zip(source["run"].astype(str), source["scale"].astype(str), strict=True))
        vals = vals[vals["null"] != SIBLING]
        frames.append(vals.assign(metric=metric, scale=[size_of.get(str(r), "") for r in vals["run"]])[
            ["run", "method", "scale", "value", "metric"]])
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if rows.empty:
        fig_.missing = "no final values at any size"
        return fig_
    rows = rows[rows["scale"].isin(sizes)].assign(x=lambda f: f["scale"].map(xs))
    metrics = [m for m in SCALE_METRICS if m in set(rows["metric"])]
    fig, axes = panels(len(metrics), width=3.6, height=2.9)
    for ax, metric in zip(axes, metrics, strict=True):
        part = rows[rows["metric"] == metric]
        for method in ordered(part["method"].unique()):
            band = seed_band(part[part["method"] == method], "x", stderr=None)
            plot_band(ax, band, "x", method, marker="o")
        if xlabel.startswith("parameters"):
            ax.set_xscale("log")
        ax.set_xticks([xs[s] for s in sizes], sizes)
        ax.minorticks_off()
        label_axes(ax, metric, xlabel, metric)
    axes[0].legend(fontsize=7)
    fig_.uri = fig_to_uri(fig)
    return fig_


def ppl_vs_downstream(down: pd.DataFrame, runs: pd.DataFrame, sizes: list[str]) -> Figure:
    """One panel per size: final validation perplexity against average accuracy, one marker per run."""
    fig_ = Figure("scale-ppl-downstream", "Perplexity against downstream accuracy, per size",
                  "One panel per model size, one marker per run (colour = method). τ: Kendall τ between the method "
                  "order by mean perplexity (lower is better) and by mean accuracy; F6 asks whether τ < 1 at some "
                  "size (its interval is in the findings).")
    if down is None or down.empty:
        fig_.missing = "no downstream table"
        return fig_
    from rankscope.downstream.average import average_accuracy, primary_task_set

    acc = average_accuracy(primary_task_set(down))
    both = runs.merge(acc.rename("acc"), left_on="run", right_index=True)
    both = both[both["ppl"].notna() & both["acc"].notna()]
    if both.empty:
        fig_.missing = "no run has both a validation perplexity and downstream accuracy"
        return fig_
    fig, axes = panels(len(sizes), width=3.6, height=3.0)
    for ax, size in zip(axes, sizes, strict=True):
        part = both[both["scale"] == size]
        for method in ordered(part["method"].unique()):
            mine = part[part["method"] == method]
            ax.scatter(mine["ppl"], mine["acc"], color=method_color(method), label=method, s=22)
        means = part.groupby("method")[["ppl", "acc"]].mean()
        tau = kendall_tau(-means["ppl"].to_numpy(float), means["acc"].to_numpy(float)) if len(means) >= 2 else math.nan
        label_axes(ax, f"{size}: τ = {fmt(tau, 3)}", "validation perplexity", "average accuracy")
    axes[0].legend(fontsize=7)
    fig_.uri = fig_to_uri(fig)
    return fig_


def _trend_text(f: ScaleFinding) -> str:
    """How many comparisons strengthen, weaken or show no trend ("2 of 5 strengthen with size; 3 no trend")."""
    if not f.trends:
        return "–"
    counts: dict[str, int] = {}
    for t in f.trends:
        word = t.word.split(" (")[0]
        counts[word] = counts.get(word, 0) + 1
    n = len(f.trends)
    return "; ".join(f"{k} of {n}: {w}" for w, k in sorted(counts.items(), key=lambda x: -x[1]))


def short_word(verdict: str) -> str:
    """A per-size cell's word: the exploratory wording without its numbers (they are in the finding's details)."""
    return "exceeds the noise floor (exploratory)" if is_exploratory(verdict) else verdict


def _cell(verdict: str) -> str:
    return f'<td title="{esc(verdict)}">{verdict_badge(short_word(verdict))}</td>'


def summary_html(res: ScaleFindings) -> str:
    """One row per finding: the word across sizes, the verdict at each size, the trend words."""
    head = ["#", "across sizes", *(f"at {s}" for s in res.sizes), "trend over size"]
    rows = []
    for f in res.findings:  # the statement is in each finding's heading below; the table stays narrow
        cells = "".join(_cell(f.per_size[s].verdict) for s in res.sizes)
        rows.append(f'<tr><td title="{esc(f.statement)}"><a href="#scale-{esc(f.id)}">{esc(f.id)}</a></td>'
                    f"<td>{verdict_badge(f.verdict)}</td>{cells}<td>{esc(_trend_text(f))}</td></tr>")
    heads = "".join(f"<th>{esc(h)}</th>" for h in head)
    return f'<table class="scale-summary"><thead><tr>{heads}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def finding_html(f: ScaleFinding, sizes: list[str], one_size_html) -> str:
    """The word and its reason, the trends with their intervals, each size's evidence folded."""
    trend_rows = [(t.label, fmt(t.slope), fmt_interval(t.lo, t.hi), t.unit, ", ".join(t.sizes), t.word)
                  for t in f.trends]
    trends = table(["comparison", "slope", "95% interval", "unit", "sizes", "trend"], trend_rows) if trend_rows else ""
    folded = "".join(
        f'<details data-size="{esc(s)}"><summary>{esc(s)}: {esc(f.per_size[s].verdict)}</summary>'
        f"{one_size_html(f.per_size[s])}</details>"
        for s in (["pooled"] if "pooled" in f.per_size else []) + sizes)
    return (f'<div class="finding" data-finding="{esc(f.id)}-scale" id="scale-{esc(f.id)}"><h3>{esc(f.id)}. {esc(f.statement)} '
            f"{verdict_badge(f.verdict)}</h3><p><b>Why:</b> {esc(f.reason or '–')}</p>{trends}"
            f"{bullet_list(f.notes, 'note')}{folded}</div>")


def runs_frame(runs: list, size_of: dict[str, str]) -> pd.DataFrame:
    """run, method, scale, ppl (and whether it is a sibling) of RunInfo records already renamed ``<run>@<size>``."""
    def sibling(r) -> bool:  # a data-order sibling: its data seed differs from its init seed
        init, data = r.meta.get("init_seed", r.seed), r.meta.get("data_seed", r.seed)
        return init is not None and data is not None and init != data

    return pd.DataFrame([{"run": r.name, "method": r.method, "seed": r.seed, "scale": size_of.get(r.name, ""),
                          "ppl": r.final_val_ppl, "val_ppl": r.final_val_ppl, "sibling": sibling(r)} for r in runs],
                        columns=["run", "method", "seed", "scale", "ppl", "val_ppl", "sibling"]).astype({"ppl": float, "sibling": bool})


__all__ = ["finding_html", "metric_vs_size", "ppl_vs_downstream", "runs_frame", "summary_html"]
