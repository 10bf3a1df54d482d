"""1-D loss landscapes along random and top-K SVD directions: expected sharpness and variance (§2.1).

L_j(α) = L(θ0 + α d_j); L̄ = mean_j L_j; V(α) = var_j L_j(α) (ddof 1: the release's estimator is unknown).
* Expected sharpness S = (1/K) Σ_k [½(L̄(α_k) + L̄(α_−k)) − L̄(0)]: the mean symmetric second difference,
  = ½·mean α_k²·mean_j d_jᵀHd_j on a quadratic (tested).
* Average variance = mean over all grid points of V(α) (V(0) = 0 is included; a constant factor).
* Centre gap = L̄(0) − min L̄ (> 0 means θ0 is not the minimum of the averaged line).

Defaults are sized so that every headline metric of 6 runs × 5 checkpoints of the tiny preset takes under
5 minutes on 2 cores: 4 random directions (standard error across them reported), 7 grid points, top-3 SVD
components and 512 evaluation tokens per point; sharpness is a loss *difference* on the same tokens, so
token noise largely cancels. S depends on the grid (½·mean α_k²·dᵀHd), so compare values computed with
the same grid; the settings are stored with every row. The study's setting is ``n_directions=100``,
``n_points=25``, K = 10 and a 65k-token budget (pass them with ``--settings``; faithful mode uses the
release's grids).

Curves go into the table as ``*_curve`` rows (scope ``curve``, ``name`` = α as text, value = mean loss,
stderr across directions), which the report can plot directly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from rankscope.diagnostics.context import AnalysisContext
from rankscope.diagnostics.perturb import (
    center_index,
    limit_tokens,
    live_params,
    loss_line,
    make_grid,
    model_loss_fn,
    release_grid,
    seeded_directions,
    svd_directions,
    svd_factors,
)
from rankscope.diagnostics.registry import diagnostic
from rankscope.diagnostics.table import Row


# ---------------------------------------------------------------------------------------------- statistics
def sharpness_per_curve(alphas: np.ndarray, curves: np.ndarray, strict: bool = True) -> np.ndarray:
    """S of each curve (rows of ``curves``); S of the mean curve equals the mean of these (S is linear)."""
    alphas = np.asarray(alphas)
    curves = np.atleast_2d(np.asarray(curves, dtype=np.float64))
    c = center_index(alphas, strict=strict)
    k = min(c, len(alphas) - 1 - c)
    if k < 1:
        raise ValueError("sharpness needs at least one grid point on each side of the centre")
    if strict and not np.allclose(alphas[c - k : c][::-1], -alphas[c + 1 : c + k + 1], rtol=0, atol=0):
        raise ValueError("sharpness needs a symmetric grid (use make_grid)")
    left = curves[:, c - k : c][:, ::-1]
    right = curves[:, c + 1 : c + k + 1]
    return (0.5 * (left + right) - curves[:, c : c + 1]).mean(axis=1)


def average_variance(curves: np.ndarray) -> float:
    """mean_α var_j L_j(α) (unbiased across directions; NaN with a single direction)."""
    curves = np.atleast_2d(curves)
    if curves.shape[0] < 2:
        return float("nan")
    return float(curves.var(axis=0, ddof=1).mean())


def center_gap(alphas: np.ndarray, mean_curve: np.ndarray, strict: bool = True) -> float:
    return float(mean_curve[center_index(alphas, strict=strict)] - np.min(mean_curve))


def jackknife_se(stat: Callable[[np.ndarray], float], curves: np.ndarray) -> float | None:
    """Leave-one-direction-out standard error of ``stat(curves)`` (None below 3 directions)."""
    n = curves.shape[0]
    if n < 3:
        return None
    loo = np.array([stat(np.delete(curves, i, axis=0)) for i in range(n)])
    return float(np.sqrt((n - 1) / n * np.sum((loo - loo.mean()) ** 2)))


@dataclass
class LineStats:
    alphas: np.ndarray
    mean_curve: np.ndarray
    curve_se: np.ndarray | None
    sharpness: float
    sharpness_se: float | None
    variance: float
    variance_se: float | None
    center_gap: float
    center_gap_se: float | None
    per_curve_sharpness: np.ndarray


def line_stats(alphas: np.ndarray, curves: np.ndarray, strict: bool = True) -> LineStats:
    """All landscape statistics of a set of curves [n_dirs, n_alphas], with errors across directions."""
    curves = np.atleast_2d(np.asarray(curves, dtype=np.float64))
    n = curves.shape[0]
    per = sharpness_per_curve(alphas, curves, strict)
    mean = curves.mean(axis=0)
    se = curves.std(axis=0, ddof=1) / np.sqrt(n) if n > 1 else None
    return LineStats(
        alphas=np.asarray(alphas), mean_curve=mean, curve_se=se,
        sharpness=float(per.mean()), sharpness_se=float(per.std(ddof=1) / np.sqrt(n)) if n > 1 else None,
        variance=average_variance(curves), variance_se=jackknife_se(average_variance, curves),
        center_gap=center_gap(alphas, mean, strict),
        center_gap_se=jackknife_se(lambda c: center_gap(alphas, c.mean(axis=0), strict), curves),
        per_curve_sharpness=per,
    )


# ---------------------------------------------------------------------------------------------- helpers
def _params_for(ctx: AnalysisContext):
    """(model, live params, space): dense merged weights by default, native tensors in faithful mode."""
    if ctx.mode == "faithful":
        from rankscope.methods.dense import native_tensors

        model = ctx.run.native_model(ctx.step)
        return model, native_tensors(model), "native"
    model, space = ctx.run.analysis_model(ctx.step)
    return model, live_params(model), space


def curve_rows(ctx: AnalysisContext, metric: str, alphas: np.ndarray, mean: np.ndarray,
               se: np.ndarray | None, **kw: Any) -> list[Row]:
    """One row per grid point: ``name`` = α as text (parse with float()), value = mean loss."""
    return [
        ctx.row(metric, float(mean[i]), stderr=None if se is None else float(se[i]), scope="curve",
                name=f"{float(a):.6g}", **kw)
        for i, a in enumerate(alphas)
    ]


# ---------------------------------------------------------------------------------------------- groups
@diagnostic(
    "landscape_random", kind="checkpoint", axis="landscape",
    metrics=("rand_sharpness", "rand_variance", "rand_center_gap", "rand_curve"),
    n_directions=4, half_width=0.003, n_points=7, filter_normalize=False, perturb_1d=True, max_tokens=512,
)
def landscape_random(
    ctx: AnalysisContext, n_directions: int = 4, half_width: float = 0.003, n_points: int = 7,
    filter_normalize: bool = False, perturb_1d: bool = True, max_tokens: int | None = 512,
) -> list[Row]:
    """Sharpness and variance along ``n_directions`` seeded N(0,1) directions on every named parameter.

    Faithful mode: native tensors (``space="native"``), raw directions on every tensor, the release grid
    (``linspace(-0.003, 0.003, 25)``). Directions stay seeded (the release's are not) and are tagged so.
    """
    faithful = ctx.mode == "faithful"
    alphas = release_grid("random") if faithful else make_grid(half_width, n_points)
    filter_normalize = filter_normalize and not faithful
    batch = limit_tokens(ctx.batch, max_tokens)
    model, params, space = _params_for(ctx)
    dirs = seeded_directions(params, ctx.seed, n_directions, filter_normalize=filter_normalize,
                             exclude_1d=not (perturb_1d or faithful))
    curves = loss_line(params, dirs, alphas, batch, model_loss_fn(model, ctx.device), strict_grid=not faithful)
    st = line_stats(alphas, curves, strict=not faithful)
    settings = dict(
        n_directions=n_directions, grid=[float(alphas[0]), float(alphas[-1]), len(alphas)],
        filter_normalize=filter_normalize, perturb_1d=perturb_1d or faithful, max_tokens=max_tokens,
        direction_seed=ctx.seed, directions="seeded N(0,1)" + (" (release: unseeded)" if faithful else ""),
    )
    kw = dict(space=space, settings=settings, n_tokens=batch.n_tokens)
    return [
        ctx.row("rand_sharpness", st.sharpness, stderr=st.sharpness_se, **kw),
        ctx.row("rand_variance", st.variance, stderr=st.variance_se,
                note="" if n_directions > 1 else "undefined: variance across directions needs n_directions >= 2", **kw),
        ctx.row("rand_center_gap", st.center_gap, stderr=st.center_gap_se, **kw),
        *curve_rows(ctx, "rand_curve", alphas, st.mean_curve, st.curve_se, **kw),
    ]


def _svd_landscape(ctx: AnalysisContext, prefix: str, sigma_weighted: bool, k: int, half_width: float,
                   n_points: int, one_d: str, max_tokens: int | None) -> list[Row]:
    faithful = ctx.mode == "faithful"
    if faithful:
        alphas, one_d = release_grid("pca_sigma" if sigma_weighted else "pca"), ("frozen" if sigma_weighted else "self")
    else:
        alphas = make_grid(half_width, n_points)
    batch = limit_tokens(ctx.batch, max_tokens)
    model, params, space = _params_for(ctx)
    factors = svd_factors(params, k)
    dirs = (svd_directions(params, kk, sigma_weighted, one_d, factors) for kk in range(1, k + 1))
    curves = loss_line(params, dirs, alphas, batch, model_loss_fn(model, ctx.device), strict_grid=not faithful)
    top1 = line_stats(alphas, curves[:1], strict=not faithful)
    topk = line_stats(alphas, curves, strict=not faithful)
    settings = dict(k=k, grid=[float(alphas[0]), float(alphas[-1]), len(alphas)], one_d=one_d,
                    sigma_weighted=sigma_weighted, max_tokens=max_tokens)
    kw = dict(space=space, settings=settings, n_tokens=batch.n_tokens)
    return [
        ctx.row(f"{prefix}_top1_sharpness", top1.sharpness, **kw),
        ctx.row(f"{prefix}_topk_sharpness", topk.sharpness, stderr=topk.sharpness_se, **kw),
        ctx.row(f"{prefix}_topk_variance", topk.variance, stderr=topk.variance_se,
                note="" if k > 1 else "undefined: variance across directions needs k >= 2", **kw),
        *curve_rows(ctx, f"{prefix}_top1_curve", alphas, top1.mean_curve, None, **kw),
        *curve_rows(ctx, f"{prefix}_topk_curve", alphas, topk.mean_curve, topk.curve_se, **kw),
    ]


@diagnostic(
    "landscape_svd", kind="checkpoint", axis="landscape",
    metrics=("pca_top1_sharpness", "pca_topk_sharpness", "pca_topk_variance", "pca_top1_curve", "pca_topk_curve"),
    k=3, half_width=0.25, n_points=7, one_d="frozen", max_tokens=512,
)
def landscape_svd(ctx: AnalysisContext, k: int = 3, half_width: float = 0.25, n_points: int = 7,
                  one_d: str = "frozen", max_tokens: int | None = 512) -> list[Row]:
    """The release's "PCA" landscape: every 2-D matrix moves along its own k-th rank-1 SVD component.

    Default: dense weights, 1-D tensors frozen, top-3 components, grid ±0.25 with 7 points (the release:
    K = 10, 101 points, step 0.005, and 1-D tensors scaled by (1+α); grid and scaling in faithful mode).
    """
    return _svd_landscape(ctx, "pca", False, k, half_width, n_points, one_d, max_tokens)


@diagnostic(
    "landscape_svd_sigma", kind="checkpoint", axis="landscape",
    metrics=("pca_sigma_top1_sharpness", "pca_sigma_topk_sharpness", "pca_sigma_topk_variance",
             "pca_sigma_top1_curve", "pca_sigma_topk_curve"),
    k=3, half_width=0.05, n_points=7, max_tokens=512,
)
def landscape_svd_sigma(ctx: AnalysisContext, k: int = 3, half_width: float = 0.05, n_points: int = 7,
                        max_tokens: int | None = 512) -> list[Row]:
    """Sigma-weighted variant d = σ_k u_k v_kᵀ. Faithful mode uses the release's 26-point grid, which
    lacks α = 0: its middle point (α = +0.002) then serves as the centre, as in the release."""
    return _svd_landscape(ctx, "pca_sigma", True, k, half_width, n_points, "frozen", max_tokens)
