"""Top-r gradient bases for GaLore/Fira (methods.md §2.2, performance.md §5).

A basis is always stored as a ``(min(m, n), r)`` matrix with orthonormal columns on the *smaller* side of
the m×n gradient G (GaLore's ``std`` projection):

* ``side == "right"`` (m ≥ n): B spans the top right singular vectors; R = G B is m×r, back: N Bᵀ.
* ``side == "left"``  (m < n): B spans the top left singular vectors; R = Bᵀ G is r×n, back: B N.

One orientation for both sides keeps the optimizer code free of transposes-by-case and makes the state
tensor the same shape whichever side is used.

Backends (``PROJECTORS``):

* ``svd`` - ``torch.linalg.svd`` of G *as stored*, exactly what galore-torch/fira do (faithful mode; the
  wide ``down_proj`` gradient is 1.6-2.5x slower than its transpose on MKL).
* ``svd_tall`` - the same SVD on the tall orientation (same basis up to signs; a free speed-up).
* ``gram_eigh`` - eigh of the small-side Gram matrix, last r eigenvectors (default; ~4x faster than the
  package SVD at 60m with the same retained energy). The Gram matrix squares the condition number, which
  is harmless for the leading directions; ``fp64=True`` is there for ill-conditioned gradients.
* ``randomized`` - Gaussian range finder with power iterations (Halko et al.); useful when r << min(m, n).

GoLore's random bases (:func:`random_basis`) are not a backend: they ignore G and are drawn from a seed.

Failure handling lives in :func:`refresh_basis`: a non-finite gradient keeps the previous basis, a failed
decomposition is retried in float64 and otherwise keeps the previous basis. Neither ever raises.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch

log = logging.getLogger(__name__)

PROJECTORS = ("svd", "svd_tall", "gram_eigh", "randomized")
Side = Literal["left", "right"]

#: Fixed seed of the randomized range finder, so a resumed run draws the same sketch.
RANDOMIZED_SEED = 0


def projection_side(shape: tuple[int, ...] | torch.Size) -> Side:
    """GaLore ``std``: project on the right (row space) when m ≥ n, else on the left (column space)."""
    m, n = shape[-2], shape[-1]
    return "right" if m >= n else "left"


def canonicalize_signs(basis: torch.Tensor) -> torch.Tensor:
    """Flip each column so that its largest-|entry| is positive (first index wins ties).

    Why: moments are kept across refreshes, so an arbitrary sign flip of a basis vector from one
    decomposition to the next would flip the sign of the matching moment coordinates' meaning.
    """
    idx = basis.abs().argmax(dim=0, keepdim=True)
    signs = torch.sign(basis.gather(0, idx))
    signs[signs == 0] = 1
    return basis * signs


def _tall(g: torch.Tensor) -> torch.Tensor:
    """G itself when m ≥ n, else Gᵀ: the wanted basis is then always the right one of this matrix."""
    return g if g.shape[0] >= g.shape[1] else g.t()


def _svd(g: torch.Tensor, rank: int) -> torch.Tensor:
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    return vh[:rank].t() if projection_side(g.shape) == "right" else u[:, :rank]


def _svd_tall(g: torch.Tensor, rank: int) -> torch.Tensor:
    _, _, vh = torch.linalg.svd(_tall(g), full_matrices=False)
    return vh[:rank].t()


def _gram_eigh(g: torch.Tensor, rank: int) -> torch.Tensor:
    a = _tall(g)
    # eigh sorts ascending: the top-r directions are the last r columns; reverse to match SVD order.
    # Only the eigenvectors are used: tiny negative eigenvalues (round-off of a PSD matrix) sit at the
    # bottom of the order, so they never reach the top r and need no clamping here (they are clamped
    # where singular values are derived from them, see gram_singular_values).
    _, evecs = torch.linalg.eigh(a.t() @ a)
    return evecs[:, -rank:].flip(-1)


def gram_singular_values(grad: torch.Tensor, fp64: bool = True) -> torch.Tensor:
    """Singular values of G from its small-side Gram matrix, descending; negative round-off clamped to 0."""
    a = _tall(grad.to(torch.float64 if fp64 else torch.float32))
    return torch.linalg.eigvalsh(a.t() @ a).clamp_min(0).flip(-1).sqrt()


def _randomized(g: torch.Tensor, rank: int, oversample: int = 16, power_iters: int = 2) -> torch.Tensor:
    # Range finder on Aᵀ (b×a): its left singular vectors are A's right ones, the basis we want.
    at = _tall(g).t()
    b, a = at.shape
    k = min(rank + oversample, b)
    gen = torch.Generator(device=g.device).manual_seed(RANDOMIZED_SEED)
    omega = torch.randn(a, k, generator=gen, device=g.device, dtype=g.dtype)
    q = torch.linalg.qr(at @ omega).Q
    for _ in range(max(1, power_iters)):  # at least one: without it the energy drops to ~0.89 (§5)
        q = torch.linalg.qr(at.t() @ q).Q
        q = torch.linalg.qr(at @ q).Q
    u_small, _, _ = torch.linalg.svd(q.t() @ at, full_matrices=False)
    return q @ u_small[:, :rank]


_BACKENDS = {"svd": _svd, "svd_tall": _svd_tall, "gram_eigh": _gram_eigh, "randomized": _randomized}


def top_basis(
    grad: torch.Tensor,
    rank: int,
    backend: str = "gram_eigh",
    *,
    canonical_signs: bool = True,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Top-``rank`` basis of ``grad`` on its smaller side, shape ``(min(m, n), rank)``, in ``dtype``.

    May raise (e.g. ``torch.linalg.LinAlgError``); :func:`refresh_basis` is the never-raising wrapper.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"unknown projector {backend!r}; choose one of: {', '.join(PROJECTORS)}")
    if grad.ndim != 2:
        raise ValueError(f"GaLore projects 2-D matrices, got shape {tuple(grad.shape)}")
    rank = min(rank, *grad.shape)
    basis = _BACKENDS[backend](grad.to(dtype), rank)
    if canonical_signs:
        basis = canonicalize_signs(basis)
    return basis.contiguous()


def refresh_basis(
    grad: torch.Tensor,
    rank: int,
    previous: torch.Tensor | None,
    backend: str = "gram_eigh",
    *,
    canonical_signs: bool = True,
    fp64: bool = False,
    name: str = "",
) -> tuple[torch.Tensor | None, str]:
    """New basis for ``grad`` with the failure policy; returns ``(basis, status)``. Never raises.

    ``status`` is ``"ok"``, ``"retried_fp64"`` (first attempt failed, float64 worked), ``"nonfinite_grad"``
    (G has NaN/Inf: ``previous`` is returned) or ``"failed"`` (float64 failed too: ``previous`` is returned).
    ``previous`` may be None, in which case the returned basis is None on failure; the caller decides what
    to do with the step (GaLoreAdamW skips the parameter's update).
    """
    if not bool(torch.isfinite(grad).all()):
        log.warning("GaLore projector %s: non-finite gradient at a refresh; keeping the previous projector",
                    name)
        return previous, "nonfinite_grad"
    first = torch.float64 if fp64 else torch.float32
    for dtype in dict.fromkeys((first, torch.float64)):  # fp32 then fp64, or fp64 once
        try:
            basis = top_basis(grad, rank, backend, canonical_signs=canonical_signs, dtype=dtype)
        except (RuntimeError, torch.linalg.LinAlgError) as exc:  # LinAlgError subclasses RuntimeError
            log.warning("GaLore projector %s: %s failed in %s (%s)", name, backend, dtype, exc)
            continue
        if bool(torch.isfinite(basis).all()):
            return basis, ("ok" if dtype == first else "retried_fp64")
        log.warning("GaLore projector %s: %s gave a non-finite basis in %s", name, backend, dtype)
    log.warning("GaLore projector %s: decomposition failed; keeping the previous projector", name)
    return previous, "failed"


def mix_seed(*values: int) -> int:
    """One 63-bit seed from several integers (SplitMix64 finaliser over a running mix), stable across runs.

    Why not ``hash()``: a seed must be the same on every machine, Python version and resume.
    """
    mask = (1 << 64) - 1
    z = 0x9E3779B97F4A7C15
    for v in values:
        z = (z ^ (int(v) & mask)) * 0xBF58476D1CE4E5B9 & mask
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB & mask
        z ^= z >> 31
    return z >> 1


def random_basis(dim: int, rank: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """A ``(dim, rank)`` basis drawn uniformly (Haar) from the Stiefel manifold, fp32, from ``seed``.

    GoLore (He et al., arXiv 2410.11289): Gaussian Z, orthonormalised by QR with the signs of R's diagonal
    moved into Q, which makes Q Haar-distributed (a plain QR is not: LAPACK's sign convention biases it).
    Drawn on ``device`` with its own generator, so the global RNG is untouched and a resumed run redraws
    nothing (the basis is saved in the state like every projector).
    """
    rank = min(rank, dim)
    gen = torch.Generator(device=device).manual_seed(seed)
    z = torch.randn(dim, rank, generator=gen, device=device, dtype=torch.float32)
    q, r = torch.linalg.qr(z)
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1
    return (q * signs).contiguous()


def project(grad: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Compact gradient R: G B (m×r) on the right side, Bᵀ G (r×n) on the left side."""
    return grad @ basis if projection_side(grad.shape) == "right" else basis.t() @ grad


def project_back(compact: torch.Tensor, basis: torch.Tensor, side: Side) -> torch.Tensor:
    """B(X) without any scale: X Bᵀ (right side) or B X (left side)."""
    return compact @ basis.t() if side == "right" else basis @ compact


def retained_energy(
    grad: torch.Tensor, basis: torch.Tensor, side: Side | None = None, *, sigma: torch.Tensor | None = None
) -> float:
    """Share of the exact top-r energy that ``basis`` keeps: ‖proj(G)‖²_F / Σ_{i≤r} σ_i² (in float64).

    1.0 means the basis captures as much of G as the exact top-r singular basis (performance.md §5).
    ``sigma`` (G's singular values) may be passed to reuse one exact SVD across several bases.
    """
    g = grad.detach().double()
    b = basis.detach().double()
    side = side or projection_side(g.shape)
    kept = (g @ b if side == "right" else b.t() @ g).pow(2).sum()
    sigma = torch.linalg.svdvals(g) if sigma is None else sigma.double()
    best = sigma[: b.shape[1]].pow(2).sum()
    return float(kept / best) if best > 0 else 1.0
