"""Figure builders for the geometry axes: barriers, weight/update spectra, activation similarity.

Same contract as ``plots``: tables in, a ``Figure`` out, ``missing`` filled when the rows are absent.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import colormaps

from rankscope.report.load import pair_labels
from rankscope.report.plots_common import (
    Figure,
    fig_to_uri,
    label_axes,
    method_bands,
    model_rows,
    ordered,
    panels,
    plot_band,
    seed_band,
)

SPECTRA = ("w_erank", "w_stable_rank", "dw_rel_fro", "dw_erank")


def barrier_heatmap(diag: pd.DataFrame) -> Figure:
    fig_ = Figure(
        "barrier-heatmap",
        "Inter-method interpolation barriers (IMIB, also called IMBH: one quantity)",
        "imib (Frankle form, loss units) for every method pair (rows) at every saved step "
        "(columns), mean over seeds. Grey 'n/a' = excluded (CoLA has no dense form).",
    )
    rows = diag[(diag["metric"] == "imib") & (diag["scope"] == "pair") & (diag["null"] != "sibling")].copy()
    if rows.empty:
        fig_.missing = "no imib rows"
        return fig_
    rows["pair"] = pair_labels(rows, diag)
    grid = rows.pivot_table(index="pair", columns="step", values="value", aggfunc="mean", dropna=False)
    grid = grid.reindex(sorted(rows["pair"].unique()))
    values = grid.to_numpy(float)
    fig, (ax,) = panels(1, width=max(5.0, 0.9 * grid.shape[1] + 3), height=max(2.5, 0.35 * len(grid) + 1))
    cmap = colormaps["magma_r"].with_extremes(bad="#dddddd")  # excluded pairs (NaN) show grey
    im = ax.imshow(np.ma.masked_invalid(values), aspect="auto", cmap=cmap)
    ax.set_xticks(range(grid.shape[1]), [str(int(s)) for s in grid.columns], fontsize=8)
    ax.set_yticks(range(len(grid)), list(grid.index), fontsize=8)
    ax.set_xlabel("step")
    finite = values[np.isfinite(values)]
    mid = float(np.median(finite)) if finite.size else 0.0
    for (i, j), v in np.ndenumerate(values):
        text = "n/a" if not np.isfinite(v) else f"{v:.3g}"
        ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if v > mid else "black")
    fig.colorbar(im, ax=ax, label="imib (IMBH)")
    fig_.uri = fig_to_uri(fig)
    return fig_


def ckpt_barriers(diag: pd.DataFrame) -> Figure:
    fig_ = Figure(
        "ckpt-barriers",
        "Barriers between consecutive checkpoints",
        "ckpt_barrier (Frankle form) between each pair of consecutive saved checkpoints of one run, "
        "plotted at the later step; mean over seeds, 95% band.",
    )
    rows = model_rows(diag, "ckpt_barrier")
    if rows.empty:
        fig_.missing = "no ckpt_barrier rows"
        return fig_
    rows = rows.assign(at=rows["step_b"].fillna(rows["step"]))
    fig, (ax,) = panels(1, width=6.0)
    method_bands(ax, rows, "at", marker="o")
    ax.axhline(0, color="grey", lw=0.8)
    label_axes(ax, xlabel="step (later checkpoint)", ylabel="ckpt_barrier")
    ax.legend(fontsize=8)
    fig_.uri = fig_to_uri(fig)
    return fig_


def spectra(diag: pd.DataFrame) -> Figure:
    fig_ = Figure(
        "spectra",
        "Weight and update spectra over training",
        "Model means (over q, k, v, o, gate, up, down matrices) of the weight effective rank and stable "
        "rank, and of the update ΔW between consecutive checkpoints (plotted at the later step), per method.",
    )
    present = [m for m in SPECTRA if not model_rows(diag, m).empty]
    if not present:
        fig_.missing = "no w_erank / w_stable_rank / dw_rel_fro / dw_erank model rows"
        return fig_
    fig, axes = panels(len(present))
    for ax, metric in zip(axes, present, strict=True):
        rows = model_rows(diag, metric)
        # ΔW rows carry step = earlier, step_b = later checkpoint; plot an update where it ends.
        rows = rows.assign(
            at=rows["step_b"].fillna(rows["step"]) if metric.startswith("dw_") else rows["step"]
        )
        method_bands(ax, rows, "at")
        label_axes(ax, metric, "step")
    axes[0].legend(fontsize=8)
    fig_.uri = fig_to_uri(fig)
    return fig_


def activations(diag: pd.DataFrame) -> Figure:
    fig_ = Figure(
        "activations",
        "Activation similarity to full-rank per layer",
        "Linear CKA between each method's and full-rank's activations at the same step, per layer "
        "(0 = embedding output); one line per saved step, darker = later. Full-rank (CKA = 1 "
        "by construction) is omitted.",
    )
    rows = model_rows(diag, "act_cka", scope="layer")
    rows = rows.assign(layer=pd.to_numeric(rows["name"], errors="coerce"))
    rows = rows[rows["layer"].notna() & (rows["method"] != "full_rank")]
    if rows.empty:
        fig_.missing = "no layer-scope act_cka rows for low-rank methods"
        return fig_
    methods = ordered(rows["method"].unique())
    steps = sorted(rows["step"].unique())
    cmap = colormaps["viridis"]
    fig, axes = panels(len(methods), width=3.6, height=3.0, sharey=True)
    for ax, method in zip(axes, methods, strict=True):
        sub = rows[rows["method"] == method]
        for k, step in enumerate(steps):
            at = sub[sub["step"] == step]
            if at.empty:
                continue
            shade = cmap(0.15 + 0.75 * k / max(1, len(steps) - 1))
            plot_band(ax, seed_band(at, "layer"), "layer", method, label=f"step {int(step)}", color=shade,
                      marker=".")
        label_axes(ax, method, "layer", "act_cka")
    axes[0].legend(fontsize=7)
    fig_.uri = fig_to_uri(fig)
    return fig_
