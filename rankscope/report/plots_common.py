"""Shared pieces of the figure builders: the Figure record, PNG encoding, colours, seed averaging.

Figures are rendered with matplotlib's Agg backend and embedded as base64 PNG data URIs so the report
is one file that opens with no network and no JavaScript.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display, safe under pytest and on clusters

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats as sps  # noqa: E402

from rankscope.methods.order import METHOD_ORDER, in_order  # noqa: E402
from rankscope.report.load import prefer_rows  # noqa: E402
from rankscope.report.stats import Z95  # noqa: E402

# One colour per method in METHOD_ORDER (rankscope/methods/order.py): tab10 keeps the paper's six as before,
# then four darker tones so 14 methods stay distinguishable in one figure.
_PALETTE = tuple(plt.get_cmap("tab10").colors) + tuple(
    matplotlib.colors.to_rgb(c) for c in ("#393b79", "#8c6d31", "#7b4173", "#000000"))


@dataclass
class Figure:
    """One report figure: a data URI plus caption, or the reason it could not be drawn."""

    name: str  # stable id, used as data-figure="NAME" in the HTML
    title: str
    caption: str = ""
    uri: str = ""  # data:image/png;base64,...
    missing: str = ""  # non-empty when the data for this figure is absent


def method_color(method: str) -> tuple[float, float, float]:
    """Fixed colour per method so a method looks the same in every figure."""
    if method in METHOD_ORDER:
        return _PALETTE[METHOD_ORDER.index(method)]
    return _PALETTE[(len(METHOD_ORDER) + sum(map(ord, method))) % len(_PALETTE)]


def ordered(methods: object) -> list[str]:
    """Methods in the study's canonical order, unknown ones appended alphabetically."""
    return in_order(methods)


def fig_to_uri(fig: plt.Figure, dpi: int = 90) -> str:
    """Encode a matplotlib figure as a PNG data URI and close it (figures leak memory otherwise)."""
    buf = io.BytesIO()
    fig.savefig(
        buf, format="png", dpi=dpi
    )  # constrained layout already fits labels; "tight" costs a 2nd pass
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def png_to_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def seed_band(frame: pd.DataFrame, x: str, y: str = "value", stderr: str | None = "stderr") -> pd.DataFrame:
    """Mean over runs (seeds) at each x, with a 95 % band.

    With several seeds the band is ±t(n − 1)·sd/√n across seeds; with one seed it falls back to ±1.96·stderr
    of the row when the diagnostic recorded one, and to no band otherwise.
    """
    cols = [c for c in (y, stderr) if c and c in frame]
    if "run" in frame:  # one value per run first, so n counts seeds rather than duplicate rows
        frame = frame.groupby(["run", x], as_index=False)[cols].mean()
    grouped = frame.groupby(x)
    out = pd.DataFrame({"mean": grouped[y].mean(), "n": grouped[y].count(), "sd": grouped[y].std(ddof=1)})
    t95 = sps.t.ppf(0.975, (out["n"] - 1).clip(lower=1))  # seed-level: t with n − 1 df, never 1.96
    half = t95 * out["sd"] / np.sqrt(out["n"].clip(lower=1))
    if stderr and stderr in frame:
        row_se = grouped[stderr].mean()
        half = half.where(out["n"] >= 2, Z95 * row_se)
    out["lo"], out["hi"] = out["mean"] - half, out["mean"] + half
    return out.reset_index().sort_values(x)


def plot_band(
    ax: plt.Axes, band: pd.DataFrame, x: str, method: str, label: str | None = None, **kw: object
) -> None:
    """Line for the mean, shaded band where the band is defined."""
    color = kw.pop("color", method_color(method))
    ax.plot(band[x], band["mean"], color=color, label=label if label is not None else method, **kw)
    ok = band["lo"].notna() & band["hi"].notna()
    if ok.any():
        ax.fill_between(band[x][ok], band["lo"][ok], band["hi"][ok], color=color, alpha=0.2, linewidth=0)


def method_bands(ax: plt.Axes, rows: pd.DataFrame, x: str, marker: str | None = ".") -> None:
    """One mean line with its 95 % seed band per method, in the canonical method order."""
    for method in ordered(rows["method"].unique()):
        plot_band(ax, seed_band(rows[rows["method"] == method], x), x, method, marker=marker)


def label_axes(ax: plt.Axes, title: str = "", xlabel: str = "", ylabel: str = "") -> None:
    """Title, axis labels and the light grid every line panel of the report uses."""
    if title:
        ax.set_title(title, fontsize=10)
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def panels(
    n: int, width: float = 4.2, height: float = 3.2, sharey: bool = False
) -> tuple[plt.Figure, list[plt.Axes]]:
    """``n`` panels, at most 4 per row; constrained layout keeps labels from overlapping."""
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(width * cols, height * rows), squeeze=False, layout="constrained", sharey=sharey
    )
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def model_rows(diag: pd.DataFrame, metric: str, scope: str = "model") -> pd.DataFrame:
    """Rows of one metric and scope with finite values, preferring mode "default"."""
    return prefer_rows(diag[(diag["metric"] == metric) & (diag["scope"] == scope) & diag["value"].notna()])
