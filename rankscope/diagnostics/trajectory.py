"""Trajectory PCA (Li et al. 2018): the README's literal "PCA directions of the trajectory" (§2.6).

Rows x_i = θ_{t_i} − θ_final over the earlier checkpoints, centred across rows. Instead of an n × P data
matrix (sklearn: a dense 14 GB matrix at 350M), the n × n Gram matrix G = Σ_tensors X_T X_Tᵀ is accumulated
tensor by tensor in fp64 and diagonalised with ``eigh``; direction j is d_j = Σ_i u_{ji} x̃_i / √λ_j
(unit norm), built tensor by tensor. Explained-variance ratios λ_j/Σλ equal sklearn PCA's (tested), and
coordinates are √λ_j u_{ji}.

Registered as kind ``checkpoint`` but it only does work at a run's **last** saved step (earlier steps
return no rows): it needs the whole trajectory, and the registry's kinds are per checkpoint. The rows are
attributed to that last step. A run with fewer than 3 checkpoints gets one ``traj_pca_evr`` row with value
NaN and a ``skipped: ...`` note, so the table says why the metric is missing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from rankscope.diagnostics.context import AnalysisContext
from rankscope.diagnostics.landscape import curve_rows, line_stats
from rankscope.diagnostics.perturb import limit_tokens, live_params, loss_line, make_grid, model_loss_fn
from rankscope.diagnostics.registry import diagnostic
from rankscope.diagnostics.table import Row

State = Mapping[str, torch.Tensor]


@dataclass
class TrajectoryPCA:
    names: list[str]
    eigenvalues: np.ndarray  # λ_j, descending
    eigenvectors: np.ndarray  # u_j as columns [n, n]
    explained_variance_ratio: np.ndarray
    coordinates: np.ndarray  # [n, n_components]: row i = coordinates of checkpoint i
    final_coordinates: np.ndarray  # the final checkpoint (x = 0, so −mean·d_j after centring)
    _centred: dict[str, torch.Tensor]

    def direction(self, j: int) -> dict[str, torch.Tensor]:
        """Unit-norm d_j (0-based j) over every tensor, fp32."""
        w = torch.from_numpy(self.eigenvectors[:, j] / np.sqrt(self.eigenvalues[j]))
        return {n: torch.tensordot(w.to(x.dtype), x, dims=1).float() for n, x in self._centred.items()}


def trajectory_pca(states: Sequence[State], final: State, names: Sequence[str] | None = None) -> TrajectoryPCA:
    """PCA of the rows θ_i − θ_final (states exclude the final one), via the fp64 Gram matrix."""
    names = list(names if names is not None else final.keys())
    n = len(states)
    if n < 2:
        raise ValueError("trajectory PCA needs at least two checkpoints before the final one")
    gram = torch.zeros(n, n, dtype=torch.float64)
    centred: dict[str, torch.Tensor] = {}
    means: dict[str, torch.Tensor] = {}
    for name in names:
        x = torch.stack([s[name].detach().double().reshape(-1) - final[name].detach().double().reshape(-1)
                         for s in states])
        means[name] = x.mean(dim=0)
        x -= means[name]
        gram += x @ x.T
        centred[name] = x.float().reshape(n, *final[name].shape)
    lam, u = torch.linalg.eigh(gram)
    lam, u = lam.flip(0).clamp_min(0).numpy(), u.flip(1).numpy()
    keep = lam > lam[0] * 1e-12 if lam[0] > 0 else np.zeros_like(lam, dtype=bool)
    lam, u = lam[keep], u[:, keep]  # centring removes one dimension; drop null components
    # Final point: −mean·d_j = −Σ_i u_ji (mean·x̃_i)/√λ_j, accumulated tensor by tensor.
    mean_dot = sum(centred[k].reshape(n, -1).double() @ means[k] for k in names).numpy()
    final_coords = -(u.T @ mean_dot) / np.sqrt(lam)
    return TrajectoryPCA(names, lam, u, lam / lam.sum(), u * np.sqrt(lam), final_coords, centred)


def _state(ctx: AnalysisContext, step: int) -> dict[str, torch.Tensor]:
    if ctx.run.has_dense_form:
        return {k: v.clone() for k, v in ctx.run.dense_state(step).items()}
    model = ctx.run.native_model(step)
    return {n: p.detach().float().clone() for n, p in model.named_parameters()}


@diagnostic(
    "trajectory", kind="checkpoint", axis="extra",
    metrics=("traj_pca_evr", "traj_pca_coord", "traj_pc1_sharpness", "traj_pc1_curve"),
    n_components=2, half_width=1.0, n_points=11, max_tokens=512,
)
def trajectory(ctx: AnalysisContext, n_components: int = 2, half_width: float = 1.0, n_points: int = 11,
               max_tokens: int | None = 512) -> list[Row]:
    """Explained variance, coordinates and the loss line along PC1 at the final checkpoint.

    Rows: ``traj_pca_evr`` (name = component j, 1-based), ``traj_pca_coord`` (name = "pc<j>:<step>"),
    ``traj_pc1_sharpness`` (grid ±``half_width`` on the unit-norm d_1), ``traj_pc1_curve``.
    """
    steps = [s for s in ctx.run.steps if s <= ctx.step]
    if ctx.step != ctx.run.steps[-1]:
        return []
    if len(steps) < 3:
        note = (f"skipped: trajectory PCA needs at least 3 checkpoints (2 before the final one); run "
                f"{ctx.run.name!r} has {len(steps)} (steps {steps}): save more (--save-every / --save-steps)")
        return [ctx.row("traj_pca_evr", math.nan, scope="component", name="1", note=note,
                        space="dense" if ctx.run.has_dense_form else "native", settings=dict(steps=steps))]
    model, space = ctx.run.analysis_model(ctx.step)
    params = live_params(model)
    final = {n: p.clone() for n, p in params.items()}
    names = list(params)
    pca = trajectory_pca([_state(ctx, s) for s in steps[:-1]], final, names)
    settings = dict(n_components=n_components, half_width=half_width, n_points=n_points, max_tokens=max_tokens,
                    steps=steps)
    kw = dict(space=space, settings=settings)
    rows = [ctx.row("traj_pca_evr", float(r), scope="component", name=str(j + 1), **kw)
            for j, r in enumerate(pca.explained_variance_ratio[:n_components])]
    for j in range(min(n_components, pca.coordinates.shape[1])):
        rows += [ctx.row("traj_pca_coord", float(pca.coordinates[i, j]), scope="component",
                         name=f"pc{j + 1}:{s}", **kw) for i, s in enumerate(steps[:-1])]
        rows.append(ctx.row("traj_pca_coord", float(pca.final_coordinates[j]), scope="component",
                            name=f"pc{j + 1}:{steps[-1]}", **kw))
    alphas, batch = make_grid(half_width, n_points), limit_tokens(ctx.batch, max_tokens)
    curve = loss_line(params, [pca.direction(0)], alphas, batch, model_loss_fn(model, ctx.device))
    st = line_stats(alphas, curve)
    rows.append(ctx.row("traj_pc1_sharpness", st.sharpness, n_tokens=batch.n_tokens, **kw))
    rows += curve_rows(ctx, "traj_pc1_curve", alphas, st.mean_curve, None, n_tokens=batch.n_tokens, **kw)
    return rows
