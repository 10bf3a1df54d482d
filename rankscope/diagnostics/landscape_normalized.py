"""Sharpness along filter-normalised random directions: the number sharpness verdicts decide on.

Raw N(0,1) directions (``landscape_random``, the paper's number) are not invariant to reparameterisation:
scaling a layer's rows up and the next layer's down leaves the function unchanged but makes the same
minimum look flatter or sharper (Dinh et al. 2017). Here every 2-D weight's direction is rescaled row by
row to the norms of that weight's rows (Li et al. 2018), in the merged dense space every method shares
(CoLA, which has none, in its native factors, marked by ``space``). 1-D tensors (gains) are not perturbed.
α is then a *relative* step: α = 0.05 moves each row by 5 % of its own norm, hence the wider default grid
than the raw ±0.003. Directions and tokens are the seeded, shared ones of every run (evidence.md §3).
"""

from __future__ import annotations

from rankscope.diagnostics.context import AnalysisContext
from rankscope.diagnostics.landscape import curve_rows, line_stats
from rankscope.diagnostics.perturb import (
    limit_tokens,
    live_params,
    loss_line,
    make_grid,
    model_loss_fn,
    seeded_directions,
)
from rankscope.diagnostics.registry import diagnostic
from rankscope.diagnostics.table import Row


@diagnostic(
    "landscape_normalized", kind="checkpoint", axis="landscape",
    metrics=("rand_sharpness_fn", "rand_variance_fn", "rand_curve_fn"),
    n_directions=4, half_width=0.05, n_points=7, max_tokens=512,
)
def landscape_normalized(ctx: AnalysisContext, n_directions: int = 4, half_width: float = 0.05, n_points: int = 7,
                         max_tokens: int | None = 512) -> list[Row]:
    """Expected sharpness and variance along ``n_directions`` seeded, filter-normalised directions."""
    alphas = make_grid(half_width, n_points)
    batch = limit_tokens(ctx.batch, max_tokens)
    model, space = ctx.run.analysis_model(ctx.step)
    params = live_params(model)
    dirs = seeded_directions(params, ctx.seed, n_directions, filter_normalize=True, exclude_1d=True)
    st = line_stats(alphas, loss_line(params, dirs, alphas, batch, model_loss_fn(model, ctx.device)))
    settings = dict(n_directions=n_directions, grid=[float(alphas[0]), float(alphas[-1]), len(alphas)],
                    filter_normalize=True, max_tokens=max_tokens, direction_seed=ctx.seed,
                    directions="seeded N(0,1), rows rescaled to the weight's row norms")
    kw = dict(space=space, settings=settings, n_tokens=batch.n_tokens)
    return [
        ctx.row("rand_sharpness_fn", st.sharpness, stderr=st.sharpness_se, **kw),
        ctx.row("rand_variance_fn", st.variance, stderr=st.variance_se,
                note="" if n_directions > 1 else "undefined: variance across directions needs n_directions >= 2", **kw),
        *curve_rows(ctx, "rand_curve_fn", alphas, st.mean_curve, st.curve_se, **kw),
    ]
