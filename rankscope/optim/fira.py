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

Two corrections over the first version (issue 14, item 8), both checked in tests/test_galore_fira.py:

* **Adam form and the limiter.** φ and the limiter read N, so N must be the actual normalised update. In the
  default ``"torch"`` form N = m̂/(√v̂+ε) and the step size is lr (see :mod:`rankscope.optim.galore`);
  before, 1/(1-β₁ᵏ) rode on the step size, φ was 10x too small at update 1 and grew towards 1x while the
  bias correction warmed up, and the limiter (which allows 1 % growth per update) read that as growth and
  held the residual back until 1.01ᵏ made up the factor 10 (up to ~230 updates). The issue's check: ζ 1.4
  instead of 14 after update 1, the residual applied at update 10 0.435x the equations' value (0.1x with
  the scripted gradients of tests/test_galore_fira.py). The ``"folded"`` form (``faithful_release``) keeps the packages' m/(√v+ε) with η_k on the step,
  which is what the fira package does, warm-up artefact included.
* **ζ when G lies almost in the subspace.** ‖S‖ comes from ‖g‖² − (2β−β²)·‖r‖² per row/column, which
  cancels catastrophically when the residual is tiny (4.6e-2 relative error at a 1e-3 residual; 3.4e-4·‖φG‖
  instead of ~0 for a rank-4 gradient at r = 6). Rows/columns where (2β−β²)·‖r‖² > 0.99·‖g‖² get their
  residual formed explicitly (only those rows: a k×r×n GEMM), the rest keep the cheap identity. ‖r‖² carries
  a relative error δ ≈ 1e-7-1e-6 from the fp32 projection, so the identity's error on ‖residual‖ is about
  δ/(2·residual share): ≤ 5e-5 above the threshold. Measured on the 60m gradients of
  benchmarks/bench_galore.py (r 128): the bare identity was off by up to 22 % on some rows; with the
  threshold 0.99, 27 % of the rows are formed and the rest are within 7.3e-5 of the exact float64 norm
  (0.9 would form 86 % for 4.9e-6; 0.999, 18 % for 6.5e-4).
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
#: Rows/columns with more than this share of ‖g‖² inside the subspace get their residual formed (item 8b).
CANCEL_SHARE = 0.99


def limit_norm_growth(norm: torch.Tensor, st: dict[str, Any], gamma: float) -> torch.Tensor | float:
    """Fira's norm-growth limiter on an update of norm ``norm``; returns the factor 1/c to apply to it.

    First update: ζ = ‖U‖, factor 1. Later: c = max(‖U‖/(ζ+1e-8), γ)/γ and ζ ← ‖U‖/c. State key ``zeta``
    (one scalar tensor). Tensor ops only, no host sync. Shared by Fira (on S) and APOLLO (on s⊙G).
    """
    if "zeta" not in st:
        st["zeta"] = norm
        return 1.0
    c = torch.clamp(norm / (st["zeta"] + ZETA_EPS), min=gamma) / gamma
    st["zeta"] = norm / c
    return 1.0 / c


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
        basis = self._basis(p, st)
        norm = torch.linalg.vector_norm(phi * self._residual_norms(p.grad, compact, basis, beta, dim))
        coeff = phi * limit_norm_growth(norm, st, group["limiter_gamma"])  # φ/c
        mixed = torch.addcmul(direction * group["scale"], compact, coeff, value=-beta)  # α·N − β·(φ/c)⊙R
        if dim == 1:
            p.addmm_(mixed, basis.t(), alpha=-step_size)  # −η·B(mixed)
        else:
            p.addmm_(basis, mixed, alpha=-step_size)
        p.addcmul_(p.grad, coeff, value=-step_size)  # −η·(φ/c)⊙G

    @staticmethod
    def _residual_norms(grad: torch.Tensor, compact: torch.Tensor, basis: torch.Tensor, beta: float,
                        dim: int) -> torch.Tensor:
        """Norms of G − β·B(R) along φ's axis (dim 1: rows, dim 0: columns).

        With R = G·B (rows; Bᵀ·G for columns) and orthonormal B: ‖g − β·g·B·Bᵀ‖² = ‖g‖² − (2β − β²)·‖r‖²,
        from one read of G. The difference cancels when g lies almost in the subspace, so rows/columns with
        (2β − β²)·‖r‖² > 0.99·‖g‖² are formed explicitly instead (module docstring, item 8b). Finding them
        costs one host sync per matrix.
        """
        g2 = torch.linalg.vector_norm(grad, dim=dim, keepdim=True, dtype=torch.float64).square()
        r2 = torch.linalg.vector_norm(compact, dim=dim, keepdim=True, dtype=torch.float64).square()
        inside = (2 * beta - beta * beta) * r2
        out = (g2 - inside).clamp_min(0).sqrt().to(grad.dtype)
        idx = (inside > CANCEL_SHARE * g2).flatten().nonzero().flatten()
        if idx.numel():
            if dim == 1:  # rows: g_i − β·r_i·Bᵀ
                formed = grad.index_select(0, idx) - beta * (compact.index_select(0, idx) @ basis.t())
                out.index_copy_(0, idx, torch.linalg.vector_norm(formed, dim=1, keepdim=True))
            else:  # columns: g_j − β·B·r_j
                formed = grad.index_select(1, idx) - beta * (basis @ compact.index_select(1, idx))
                out.index_copy_(1, idx, torch.linalg.vector_norm(formed, dim=0, keepdim=True))
        return out
