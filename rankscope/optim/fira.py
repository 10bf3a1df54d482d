"""FiraAdamW: GaLore plus a norm-scaled residual for the gradient outside the subspace (methods.md §2.3).

Everything GaLore does (refresh rule, compact Adam, α-scaled back-projection, Adam forms, failure policy,
tensors-only state) is inherited from :class:`GaLoreAdamW`; this file only adds the residual term:

* φ_i = ‖N_i‖ / (‖R_i‖ + 1e-8) per index of the uncompressed side (rows when m ≥ n, columns when m < n);
* S = φ ⊙ (G − B(R)) (the paper), or φ ⊙ (G − α·B(R)) with ``residual_alpha_scaled=True`` (the release, Q7:
  at α = 0.25 it leaves 75 % of the in-subspace gradient in the residual);
* norm-growth limiter with γ (1.01): first update ζ = ‖S‖; later c = max(‖S‖/(ζ+1e-8), γ)/γ, S ← S/c,
  ζ ← ‖S_before‖/c. ζ is one scalar tensor per matrix, state key ``zeta``;
* W ← W − η·(α·B(N) + S): the residual gets the bias-corrected step but no α. S is never formed: the
  update is rearranged into one back-projection GEMM plus one pass over G (see ``_apply_update``).
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
        """W ← W − η·(α·B(N) + S) with S = (φ/c) ⊙ (G − β·B(R)), rearranged so that S is never formed.

        φ scales rows (right side) or columns (left side), and such scalings commute with the
        back-projection (diag(φ)·R·Bᵀ = (diag(φ)·R)·Bᵀ; likewise on the left), so
        α·B(N) + S = B(α·N − β·(φ/c)⊙R) + (φ/c)⊙G: GaLore's one back-projection GEMM with a modified
        compact matrix, plus one fused pass over G. That saves the m×r×n GEMM and the m×n temporary of
        G − β·B(R). The limiter's ‖S‖ comes from :meth:`_residual_norms` without forming S either.
        """
        beta = group["scale"] if group["residual_alpha_scaled"] else 1.0
        dim = 1 if projection_side(p.shape) == "right" else 0  # φ is per row (right side) or per column
        phi = torch.linalg.vector_norm(direction, dim=dim, keepdim=True) / (
            torch.linalg.vector_norm(compact, dim=dim, keepdim=True) + PHI_EPS
        )
        norm = torch.linalg.vector_norm(phi * self._residual_norms(p.grad, compact, beta, dim))
        coeff = self._limit(norm, phi, st, group["limiter_gamma"])  # φ/c
        mixed = torch.addcmul(direction * group["scale"], compact, coeff, value=-beta)  # α·N − β·(φ/c)⊙R
        basis = st["projector"]
        if dim == 1:
            p.addmm_(mixed, basis.t(), alpha=-step_size)  # −η·B(mixed)
        else:
            p.addmm_(basis, mixed, alpha=-step_size)
        p.addcmul_(p.grad, coeff, value=-step_size)  # −η·(φ/c)⊙G

    @staticmethod
    def _residual_norms(grad: torch.Tensor, compact: torch.Tensor, beta: float, dim: int) -> torch.Tensor:
        """Norms of G − β·B(R) along φ's axis, from G's and R's norms alone (no m×n work beyond one read).

        With R = G·B (rows; Bᵀ·G for columns) and orthonormal B: ‖g − β·g·B·Bᵀ‖² = ‖g‖² − (2β − β²)·‖r‖².
        Summed in float64 and clamped at 0, since the difference cancels when g lies almost in the subspace.
        """
        g2 = torch.linalg.vector_norm(grad, dim=dim, keepdim=True, dtype=torch.float64).square()
        r2 = torch.linalg.vector_norm(compact, dim=dim, keepdim=True, dtype=torch.float64).square()
        return (g2 - (2 * beta - beta * beta) * r2).clamp_min(0).sqrt().to(grad.dtype)

    @staticmethod
    def _limit(norm: torch.Tensor, phi: torch.Tensor, st: dict[str, Any], gamma: float) -> torch.Tensor:
        """Norm-growth limiter on ‖S‖ = ``norm``; returns the factor φ/c that scales the residual.

        First update: ζ = ‖S‖. Later: c = max(‖S‖/(ζ+1e-8), γ)/γ and ζ ← ‖S‖/c. Tensor ops only (no host
        sync).
        """
        if "zeta" not in st:
            st["zeta"] = norm
            return phi
        c = torch.clamp(norm / (st["zeta"] + ZETA_EPS), min=gamma) / gamma
        st["zeta"] = norm / c
        return phi / c
