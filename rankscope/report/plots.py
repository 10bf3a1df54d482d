"""Figure builders for the report: training curves, landscapes, downstream accuracy, predictor.

Each builder takes plain tables (no training imports, style.md §2.10) and returns a ``Figure`` whose
``missing`` field says why it could not be drawn, so the report can list absent data instead of
failing. ``build_figures`` is the one ordered list the renderer walks; a new figure is one new
builder added there. Geometry figures (barriers, spectra, activations) live in ``plots_geometry``.
"""

from __future__ import annotations

from collections.abc import Callable

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import EngFormatter
from scipy import stats as sps

from rankscope.report.findings import final_rows, per_method
from rankscope.report.load import RunInfo, StudyData, prefer_rows
from rankscope.report.noise_floor import NEGATIVE_FLAG, barrier_null_figure
from rankscope.report.plots_common import (
    Figure,
    fig_to_uri,
    label_axes,
    method_bands,
    method_color,
    ordered,
    panels,
    plot_band,
    png_to_uri,
    seed_band,
)
from rankscope.report.plots_geometry import activations, barrier_heatmap, ckpt_barriers, spectra


def _curve_frame(runs: list[RunInfo], attr: str, column: str) -> pd.DataFrame:
    frames = []
    for r in runs:
        f = getattr(r, attr)
        if not f.empty and column in f and "step" in f:
            part = f[["step", column] + (["tokens"] if "tokens" in f else [])].copy()
            frames.append(part.assign(run=r.name, method=r.method, value=part[column]))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def training_curves(runs: list[RunInfo], baselines: dict | None = None) -> Figure:
    fig_ = Figure(
        "training-curves",
        "Training curves",
        "Left: training loss; right: validation perplexity (log scale), against tokens seen. "
        "Mean over seeds; shaded = 95% band across seeds when there are several. Grey lines: exact unigram "
        "(dotted) and bigram (dash-dot) perplexity of the validation split, when computed.",
    )
    train, evals = _curve_frame(runs, "train", "loss"), _curve_frame(runs, "evals", "val_ppl")
    if train.empty and evals.empty:
        fig_.missing = "no train or eval lines in any metrics.jsonl"
        return fig_
    fig, (ax1, ax2) = panels(2, width=5.5)
    for ax, frame, ylabel in ((ax1, train, "train loss"), (ax2, evals, "val perplexity")):
        if frame.empty:
            ax.text(0.5, 0.5, "no data", ha="center", transform=ax.transAxes)
            continue
        use_tokens = "tokens" in frame and frame["tokens"].notna().all()
        x = "tokens" if use_tokens else "step"
        for method in ordered(frame["method"].unique()):
            sub = frame[frame["method"] == method]
            band = seed_band(sub, "step", stderr=None)
            if use_tokens:
                band["tokens"] = band["step"].map(sub.groupby("step")["tokens"].mean())
            plot_band(ax, band, x, method)
        ax.set_xlabel(x)
        ax.xaxis.set_major_formatter(EngFormatter())  # 400k rather than 400000: ticks stay legible
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    for key, style in (("unigram_ppl", ":"), ("bigram_ppl", "-.")):
        if (baselines or {}).get(key) and not evals.empty:
            ax2.axhline(baselines[key], ls=style, color="grey", lw=1, label=key.split("_")[0])
    ax2.set_yscale("log")
    ax1.legend(fontsize=8)
    fig_.uri = fig_to_uri(fig)
    return fig_


def sharpness(diag: pd.DataFrame) -> Figure:
    fig_ = Figure(
        "sharpness",
        "Sharpness at the final step",
        "Expected sharpness along random directions (F1) and along the top-1 SVD direction (F2), "
        "per method, with 95% intervals (stderr across directions, or a t interval across seeds). Red hatched "
        f"bars: negative sharpness, {NEGATIVE_FLAG} (the loss falls on both sides); no verdict is drawn from them.",
    )
    metrics = [
        m
        for m in ("rand_sharpness", "pca_top1_sharpness", "pca_topk_sharpness")
        if not final_rows(diag, m).empty
    ]
    if not metrics:
        fig_.missing = "no rand_sharpness / pca_*_sharpness rows"
        return fig_
    fig, axes = panels(len(metrics))
    for ax, metric in zip(axes, metrics, strict=True):
        est = per_method(final_rows(diag, metric))
        methods = ordered(est)
        vals = [est[m].value for m in methods]
        err = [max(0.0, est[m].hi - est[m].value) if est[m].has_interval else 0.0 for m in methods]
        bars = ax.bar(methods, vals, yerr=err, capsize=3, color=[method_color(m) for m in methods])
        for bar, v in zip(bars, vals, strict=True):
            if v < 0:  # the loss falls on both sides: no minimum along these directions (no verdict drawn)
                bar.set_hatch("///")
                bar.set_edgecolor("red")
                ax.annotate("no minimum", (bar.get_x() + bar.get_width() / 2, 0), ha="center", va="bottom",
                            fontsize=7, color="red")
        ax.axhline(0, color="black", lw=0.6)
        ax.set_title(metric, fontsize=10)
        ax.tick_params(axis="x", rotation=30, labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig_.uri = fig_to_uri(fig)
    return fig_


def landscape_curve_ids(diag: pd.DataFrame) -> list[str]:
    """Landscape curve metrics with data: random first, then SVD ones.

    ckpt_curve / imib_curve also end in ``_curve`` but are interpolation paths (α in [0, 1]), not landscapes.
    """
    ids = {
        str(m)
        for m in diag.loc[diag["value"].notna(), "metric"].unique()
        if str(m).endswith("_curve") and not str(m).startswith(("ckpt_", "imib_"))
    }
    first = {"rand_curve": 0, "pca_top1_curve": 1, "pca_topk_curve": 2}
    return sorted(ids, key=lambda m: (first.get(m, 3), m))


def landscape_curves(diag: pd.DataFrame) -> Figure:
    fig_ = Figure(
        "landscape-curves",
        "1-D loss landscapes at the final step",
        'Mean loss change L(α) − L(0) along random directions and along SVD ("PCA") directions, '
        "per method. Shaded = 95% band across seeds.",
    )
    curve_ids = landscape_curve_ids(diag)
    if not curve_ids:
        fig_.missing = "no *_curve rows (landscape curves)"
        return fig_
    fig, axes = panels(len(curve_ids))
    for ax, metric in zip(axes, curve_ids, strict=True):
        rows = prefer_rows(diag[(diag["metric"] == metric) & diag["value"].notna()]).copy()
        rows = rows[rows["step"] == rows.groupby("run")["step"].transform("max")]
        rows["alpha"] = pd.to_numeric(rows["name"], errors="coerce")
        rows = rows[rows["alpha"].notna()]
        for _run, grp in rows.groupby("run"):  # centre each run's curve on its own α = 0 loss
            centre = grp.loc[grp["alpha"].abs().idxmin(), "value"]
            rows.loc[grp.index, "value"] = grp["value"] - centre
        method_bands(ax, rows, "alpha")
        label_axes(ax, metric, "α", "L(α) − L(0)")
    axes[0].legend(fontsize=8)
    fig_.uri = fig_to_uri(fig)
    return fig_


def downstream_bars(down: pd.DataFrame) -> Figure:
    fig_ = Figure(
        "downstream",
        "Downstream accuracy per task",
        "Accuracy per task and method at the final checkpoint; error bars are 95% intervals "
        "(the evaluator's CI, widened to the seed spread when there are several seeds).",
    )
    rows = down[(down["scope"] == "task") & down["value"].notna()]
    metric = next((m for m in ("acc", "acc_norm") if (rows["metric"] == m).any()), None)
    if metric is None:
        fig_.missing = "no per-task acc / acc_norm rows"
        return fig_
    rows = rows[rows["metric"] == metric]
    rows = rows[rows["step"] == rows.groupby("run")["step"].transform("max")]
    tasks, methods = sorted(rows["name"].unique()), ordered(rows["method"].unique())
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(tasks) + 2), 3.6), layout="constrained")
    for i, method in enumerate(methods):
        sub = rows[rows["method"] == method].groupby("name")
        mean = sub["value"].mean().reindex(tasks)
        ci_half = ((sub["ci_high"].mean() - sub["ci_low"].mean()) / 2).reindex(tasks)
        count = sub["value"].count()
        t95 = pd.Series(sps.t.ppf(0.975, (count - 1).clip(lower=1)), index=count.index)  # seeds: t, n − 1 df
        seed_half = (t95 * sub["value"].std(ddof=1) / np.sqrt(count)).reindex(tasks)
        err = pd.concat([ci_half, seed_half], axis=1).max(axis=1).fillna(0)
        xs = np.arange(len(tasks)) + (i - (len(methods) - 1) / 2) * width
        ax.bar(xs, mean, width, yerr=err, capsize=2, label=method, color=method_color(method))
    ax.set_xticks(np.arange(len(tasks)), tasks, rotation=20, fontsize=8)
    ax.set_ylabel(metric)
    ax.set_ylim(
        0, 1.12 if float(rows["value"].max()) <= 1 else None
    )  # headroom keeps the legend off the bars
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=min(len(methods), 6), loc="upper center")
    fig_.uri = fig_to_uri(fig)
    return fig_


def prediction_plot(png: bytes | None) -> Figure:
    fig_ = Figure(
        "prediction",
        "Predicted versus measured downstream accuracy",
        "Figure written by the predictor (results/prediction.png), embedded as is.",
    )
    if not png:
        fig_.missing = "results/prediction.png not found"
    else:
        fig_.uri = png_to_uri(png)
    return fig_


# (section, figure name, builder) in report order; the name is repeated here so a crash keeps its slot.
BUILDERS: list[tuple[str, str, Callable[[StudyData], Figure]]] = [
    ("noise", "barrier-null", lambda d: barrier_null_figure(d.diagnostics)),
    ("training", "training-curves", lambda d: training_curves(d.runs, d.baselines)),
    ("landscape", "sharpness", lambda d: sharpness(d.diagnostics)),
    ("landscape", "landscape-curves", lambda d: landscape_curves(d.diagnostics)),
    ("interpolation", "barrier-heatmap", lambda d: barrier_heatmap(d.diagnostics)),
    ("interpolation", "ckpt-barriers", lambda d: ckpt_barriers(d.diagnostics)),
    ("spectra", "spectra", lambda d: spectra(d.diagnostics)),
    ("activations", "activations", lambda d: activations(d.diagnostics)),
    ("downstream", "downstream", lambda d: downstream_bars(d.downstream)),
    ("prediction", "prediction", lambda d: prediction_plot(d.prediction_png)),
]
FIGURE_NAMES = [name for _, name, _ in BUILDERS]


def build_figures(data: StudyData) -> list[tuple[str, Figure]]:
    """Every figure as (section, Figure); a builder that crashes becomes a missing figure, not a crash."""
    out = []
    for section, name, build in BUILDERS:
        try:
            out.append((section, build(data)))
        except Exception as exc:  # noqa: BLE001 - one bad table must not cost the whole report
            plt.close("all")
            out.append((section, Figure(name, name, missing=f"figure failed: {type(exc).__name__}: {exc}")))
    return out
