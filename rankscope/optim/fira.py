"""FiraAdamW: GaLore plus a norm-scaled residual for the gradient outside the subspace (methods.md §2.3).

Everything GaLore does (refresh rule, compact Adam, α-scaled back-projection, Adam forms, failure policy,
tensors-only state) is inherited from :class:`GaLoreAdamW`; this file only adds the residual term:

* φ_i = ‖N_i‖ / (‖R_i‖ + 1e-8) per index of the uncompressed side (rows when m ≥ n, columns when m < n);
* S = φ ⊙ (G − B(R)) (the paper), or φ ⊙ (G − α·B(R)) with ``residual_alpha_scaled=True`` (the release, Q7:
  at α = 0.25 it leaves 75 % of the in-subspace gradient in the residual);
* norm-growth limiter with γ (1.01): first update ζ = ‖S‖; later c = max(‖S‖/(ζ+1e-8), γ)/γ, S ← S/c,
  ζ ← ‖S_before‖/c. ζ is one scalar tensor per matrix, state key ``zeta``;
* W ← W − η·(α·B(N) + S): the residual gets the bias-corrected step but no α.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from rankscope.optim.galore import GaLoreAdamW
from rankscope.optim.projectors import projection_side

#: Same constants as the release: the φ denominator guard and the limiter's ζ guard.
PHI_EPS = 1e-8
ZETA_EPS = 1e-8


class FiraAdamW(GaLoreAdamW):
    """GaLoreAdamW + Fira's scaled residual and norm-growth limiter on projected groups."""

    def __init__(
        self,
        params: Iterable[Any],
        *args: Any,
        residual_alpha_scaled: bool = False,
        limiter_gamma: float = 1.01,
        **kwargs: Any,
    ) -> None:
        if limiter_gamma < 1.0:
            raise ValueError(f"limiter_gamma must be >= 1, got {limiter_gamma}")
        super().__init__(params, *args, residual_alpha_scaled=residual_alpha_scaled,
                         limiter_gamma=limiter_gamma, **kwargs)

    def _apply_update(self, p: torch.Tensor, st: dict[str, Any], compact: torch.Tensor,
                      direction: torch.Tensor, step_size: float, group: dict[str, Any]) -> None:
        raw, phi, dim = self._residual(p.grad, st["projector"], compact, direction, group)
        coeff = self._limit(raw, phi, dim, st, group["limiter_gamma"])
        super()._apply_update(p, st, compact, direction, step_size, group)  # α·B(N)
        p.addcmul_(raw, coeff, value=-step_size)  # S = (φ/c) ⊙ raw, never materialised

    @staticmethod
    def _residual(grad: torch.Tensor, basis: torch.Tensor, compact: torch.Tensor, direction: torch.Tensor,
                  group: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """G − β·B(R) (β = α in the release, 1 in the paper) as one GEMM, and φ with the axis it varies along.

        φ is one factor per row (right side: R, N are m×r) or per column (left side: r×n), returned with
        keepdim so that it broadcasts against the m×n residual.
        """
        beta = group["scale"] if group["residual_alpha_scaled"] else 1.0
        if projection_side(grad.shape) == "right":
            raw, dim = torch.addmm(grad, compact, basis.t(), alpha=-beta), 1
        else:
            raw, dim = torch.addmm(grad, basis, compact, alpha=-beta), 0
        phi = torch.linalg.vector_norm(direction, dim=dim, keepdim=True) / (
            torch.linalg.vector_norm(compact, dim=dim, keepdim=True) + PHI_EPS
        )
        return raw, phi, dim

    @staticmethod
    def _limit(raw: torch.Tensor, phi: torch.Tensor, dim: int, st: dict[str, Any], gamma: float) -> torch.Tensor:
        """Norm-growth limiter; returns the per-row/column factor φ/c that turns ``raw`` into S.

        ‖S‖ = ‖φ ⊙ raw‖ comes from the norms of raw along φ's axis (φ is constant there), so the scaled
        residual is never written out: one read pass instead of scale, norm and divide passes. Tensor ops
        only (no host sync).
        """
        norm = torch.linalg.vector_norm(phi * torch.linalg.vector_norm(raw, dim=dim, keepdim=True))
        if "zeta" not in st:
            st["zeta"] = norm
            return phi
        c = torch.clamp(norm / (st["zeta"] + ZETA_EPS), min=gamma) / gamma
        st["zeta"] = norm / c
        return phi / c
