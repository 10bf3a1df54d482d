"""APOLLOAdamW: Adam moments on a seeded random projection set a scaling of the *raw* gradient (methods2.md).

APOLLO (Zhu et al., MLSys 2025, arXiv 2412.05270). For a projected m×n target with gradient G:

* P: Gaussian, entries N(0, 1/r), drawn from a seed and redrawn with the next seed every ``update_proj_gap``
  updates (counter read before its increment, as GaLore's refresh). R = G Pᵀ (m ≥ n) or Pᵀ G (m < n).
* Adam on R (moments kept across redraws), N = m̂/(√v̂+ε) in the group's Adam form.
* Scaling s = ‖N_i‖/(‖R_i‖ + 1e-8) per row (m ≥ n) or column (m < n) (``scale_type="channel"``), or
  ‖N‖/(‖R‖ + 1e-8) (``"tensor"``, APOLLO-Mini).
* U = s ⊙ G times √α, then Fira's norm-growth limiter (:func:`~rankscope.optim.fira.limit_norm_growth`, state
  ``zeta``); with ``scale_front`` √α is applied before the limiter, otherwise after. W ← W − η·U.

The update is one fused pass over G (U is never formed; ‖s⊙G‖ comes from G's row/column norms). Plain groups,
Adam forms, decay placement and the refresh counter are :class:`~rankscope.optim.galore.GaLoreAdamW`'s.

**State is tensors only, and P is not in it**: per target ``exp_avg``, ``exp_avg_sq`` (r × max(m, n)),
``seed`` (int64 scalar, the seed of the current P), ``zeta`` and ``step``. P is regenerated from ``seed``
whenever it is needed: every step by default (the memory the paper claims; one P at a time exists during
the step; ≈ 0.2x the projection GEMM's time at 60m), or once per redraw with ``cache_projection=True`` (r·min(m, n) more elements held outside the
state dict, dropped on ``load_state_dict``). ``load_state_dict`` restores ``seed`` as int64 (torch would
cast it to the parameter's float dtype and lose its low bits).

Alignment with apollo-torch 1.0.3 (the test oracle; CC-BY-NC, never imported at runtime): the first seed of
a parameter is its 1-based position in the optimizer's parameter order (plus ``projection_seed``, 0 by
default); the next seed is the last of 15 ``torch.randint(0, 2**63 - 1)`` draws from a CPU generator seeded
with the current one; P = ``torch.randn`` from a generator seeded with the seed on the parameter's device,
in float32, divided by √r, cast to the parameter's dtype. With ``adam_form="folded"`` and ε = 1e-6 the
trajectory then equals the package's. Deviations from the package: the default Adam form is ``"torch"``
(N is the bias-corrected normalised update, so the limiter does not read the warm-up of 1/(1-β₁ᵏ) as growth,
as for Fira), the rank is clamped to min(m, n), and P is not kept in memory unless asked.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from rankscope.optim.fira import PHI_EPS, limit_norm_growth
from rankscope.optim.galore import GaLoreAdamW, adamw_defaults
from rankscope.optim.projectors import projection_side

SCALE_TYPES = ("channel", "tensor")
_INT64_MAX = torch.iinfo(torch.int64).max


def next_seed(seed: int) -> int:
    """The seed that follows ``seed`` (apollo-torch's rule: the 15th int64 draw of a generator seeded with it)."""
    gen = torch.Generator().manual_seed(seed)
    return int(torch.randint(0, _INT64_MAX, (15,), generator=gen)[-1])


def random_projection(shape: torch.Size | tuple[int, int], rank: int, seed: int, device: torch.device | str,
                      dtype: torch.dtype) -> torch.Tensor:
    """APOLLO's P for an m×n matrix as a ``(min(m, n), r)`` basis (the layout of GaLore's projectors).

    m ≥ n: P is drawn as r×n and returned transposed (R = G Pᵀ); m < n: drawn as m×r (R = Pᵀ G).
    """
    m, n = shape
    gen = torch.Generator(device=device).manual_seed(seed)
    size = (rank, n) if projection_side(shape) == "right" else (m, rank)
    p = torch.randn(size, generator=gen, device=device, dtype=torch.float32) / math.sqrt(rank)
    p = p.t() if projection_side(shape) == "right" else p
    return p.to(dtype)


class APOLLOAdamW(GaLoreAdamW):
    """AdamW with APOLLO's scaled raw-gradient update on groups that carry ``rank`` (module docstring)."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float | None = None,
        weight_decay: float = 0.0,
        *,
        adam_form: str = "torch",
        update_proj_gap: int = 200,
        scale: float = 1.0,
        scale_type: str = "channel",
        scale_front: bool = False,
        limiter_gamma: float | None = 1.01,
        projection_seed: int = 0,
        cache_projection: bool = False,
    ) -> None:
        defaults = adamw_defaults(
            lr, betas, eps, weight_decay, adam_form, update_proj_gap=update_proj_gap, scale=scale,
            scale_type=scale_type, scale_front=scale_front, limiter_gamma=limiter_gamma,
            projection_seed=projection_seed,
        )
        self.cache_projection = cache_projection
        self._projections: dict[torch.Tensor, tuple[int, torch.Tensor]] = {}  # param -> (seed, P)
        self._reset_counters()  # GaLoreAdamW's interface; a random draw never needs a skip
        Optimizer.__init__(self, params, defaults)  # GaLoreAdamW's defaults name SVD options APOLLO lacks

    def _check_projected_group(self, group: dict[str, Any]) -> None:
        if group["scale_type"] not in SCALE_TYPES:
            raise ValueError(f"scale_type={group['scale_type']!r}; choose one of: {', '.join(SCALE_TYPES)}")
        gamma = group["limiter_gamma"]
        if gamma is not None and gamma < 1.0:
            raise ValueError(f"limiter_gamma must be >= 1 (or None: no limiter), got {gamma}")

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = super().step(closure)
        if not self.cache_projection:
            self._projections.clear()  # P never outlives a step: the memory is moments + seed + ζ
        return loss

    # --- projection ------------------------------------------------------------------------------
    def _needs_refresh(self, st: dict[str, Any], group: dict[str, Any]) -> bool:
        return "seed" not in st or int(st["step"]) % int(group["update_proj_gap"]) == 0

    def _refresh(self, p: torch.Tensor, st: dict[str, Any], group: dict[str, Any]) -> bool:
        """Advance to the next seed (the first is the parameter's position) and draw its P."""
        if "seed" not in st:
            seed = int(group["projection_seed"]) + self._param_index(p)
        else:
            seed = next_seed(int(st["seed"]))
        st["seed"] = torch.tensor(seed, dtype=torch.int64)
        self._projections[p] = (seed, random_projection(p.shape, self._rank(p, group), seed, p.device, p.dtype))
        return True

    def _basis(self, p: torch.Tensor, st: dict[str, Any]) -> torch.Tensor:
        """P of ``p``: the cached one, else regenerated from ``st["seed"]``.

        Without ``cache_projection`` the entry is dropped as it is handed out (P is only needed to form R;
        the update uses G), so at most one P exists at a time.
        """
        seed = int(st["seed"])
        cached = self._projections.get(p) if self.cache_projection else self._projections.pop(p, None)
        if cached is None or cached[0] != seed:  # after a resume, or P is not cached between steps
            group = next(g for g in self.param_groups if any(q is p for q in g["params"]))
            cached = (seed, random_projection(p.shape, self._rank(p, group), seed, p.device, p.dtype))
            if self.cache_projection:
                self._projections[p] = cached
        return cached[1]

    # --- update ------------------------------------------------------------------------------------
    def _apply_update(self, p: torch.Tensor, st: dict[str, Any], compact: torch.Tensor,
                      direction: torch.Tensor, step_size: float, group: dict[str, Any]) -> None:
        """W ← W − η·(√α·s/c)⊙G, with ‖s⊙G‖ for the limiter from G's row/column norms."""
        grad = p.grad
        if group["scale_type"] == "channel":
            dim = 1 if projection_side(p.shape) == "right" else 0  # one factor per row (m ≥ n) or column
            s = torch.linalg.vector_norm(direction, dim=dim, keepdim=True) / (
                torch.linalg.vector_norm(compact, dim=dim, keepdim=True) + PHI_EPS)
            norm = torch.linalg.vector_norm(s * torch.linalg.vector_norm(grad, dim=dim, keepdim=True))
        else:
            s = torch.linalg.vector_norm(direction) / (torch.linalg.vector_norm(compact) + PHI_EPS)
            norm = s * torch.linalg.vector_norm(grad)
        root_alpha = math.sqrt(group["scale"])
        coeff = s * root_alpha
        if group["limiter_gamma"] is not None:
            front = root_alpha if group["scale_front"] else 1.0  # the limiter sees √α only with scale_front
            coeff = coeff * limit_norm_growth(norm * front, st, group["limiter_gamma"])
        p.addcmul_(grad, coeff, value=-step_size)

    # --- state -------------------------------------------------------------------------------------
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch casts state tensors to the parameter's dtype; put the int64 seeds back as saved."""
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        seeds = {i: state_dict["state"][i]["seed"].clone() for i in saved_ids
                 if i in state_dict["state"] and "seed" in state_dict["state"][i]}
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        for i, p in zip(saved_ids, params):
            if i in seeds:
                self.state[p]["seed"] = seeds[i].to(device="cpu", dtype=torch.int64)
        self._projections.clear()
