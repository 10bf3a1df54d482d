"""The perturbation engine shared by landscapes, interpolation, the Hessian and trajectory PCA.

Design (diagnostics.md §1, style.md §2.9):

* Parameters are a ``dict[name, Tensor]`` of *live* tensors (a model's parameters, detached views, or the
  tensors of a synthetic loss). Every point is written fresh as θ0 + α·d (or ``lerp(θA, θB, α)``) from an
  fp32 shadow copy, never by incremental add/subtract, so no rounding residue accumulates; the originals are
  restored bit-exactly in ``finally`` even if the loss raises.
* Engines take ``loss_fn(params, batch)``, so a quadratic runs through the same code as a LLaMA
  (diagnostics.md §6). For models, :func:`model_loss_fn` reads the live tensors the engine just wrote.
* Directions are regenerated from (seed, j, name), never stored: tensor ``name`` of direction ``j`` is the
  same on every device, checkpoint and method that has that tensor, so sharpness differences between
  methods are paired comparisons on identical noise.
* α = 0 is evaluated once and shared by every direction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rankscope.diagnostics.context import EvalBatch

Params = dict[str, torch.Tensor]
Direction = Mapping[str, torch.Tensor]
LossFn = Callable[[Params, Any], "float | np.ndarray"]


# ---------------------------------------------------------------------------------------------- directions
def _tensor_seed(seed: int, j: int, name: str) -> int:
    """A stable 63-bit seed from (seed, j, name): Python's ``hash`` is salted per process, blake2b is not."""
    digest = hashlib.blake2b(f"{seed}|{j}|{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def seeded_tensor(shape: Sequence[int], seed: int, j: int, name: str) -> torch.Tensor:
    """N(0, 1) fp32 on CPU from a generator seeded by (seed, j, name): identical on every device."""
    gen = torch.Generator(device="cpu").manual_seed(_tensor_seed(seed, j, name))
    return torch.randn(tuple(shape), generator=gen, dtype=torch.float32)


def filter_normalize_(direction: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Li et al. 2018: rescale each row of a 2-D direction to the norm of the same row of θ0 (in place)."""
    ref = reference.detach().float()
    scale = ref.norm(dim=1, keepdim=True) / direction.norm(dim=1, keepdim=True).clamp_min(1e-30)
    return direction.mul_(scale)


def seeded_direction(
    params: Mapping[str, torch.Tensor], seed: int, j: int, filter_normalize: bool = False,
    exclude_1d: bool = True,
) -> dict[str, torch.Tensor]:
    """Direction ``j``: an i.i.d. N(0,1) tensor per parameter, regenerated from (seed, j, name).

    Drawn in fp32 on CPU, then moved to the parameter's device (fp32). Tensors that are not perturbed
    (1-D ones when ``exclude_1d`` or ``filter_normalize``: the filter-normalised direction of a gain vector
    is zero) are simply absent, which the engine treats as a zero direction.
    """
    out: dict[str, torch.Tensor] = {}
    for name, p in params.items():
        if p.ndim <= 1 and (exclude_1d or filter_normalize):
            continue
        d = seeded_tensor(p.shape, seed, j, name)
        if filter_normalize:
            filter_normalize_(d.view(p.shape[0], -1), p.reshape(p.shape[0], -1).cpu())
        out[name] = d.to(p.device)
    return out


def svd_factors(params: Mapping[str, torch.Tensor], k_max: int) -> dict[str, tuple[torch.Tensor, ...]]:
    """Top-``k_max`` (U, S, Vᵀ) of every 2-D tensor (full SVD, fp32 or wider), computed once for all K curves."""
    out = {}
    for name, p in params.items():
        if p.ndim == 2:
            u, s, vh = torch.linalg.svd(p.detach().to(torch.promote_types(p.dtype, torch.float32)), full_matrices=False)
            out[name] = (u[:, :k_max].clone(), s[:k_max].clone(), vh[:k_max].clone())
    return out


def svd_directions(
    params: Mapping[str, torch.Tensor], k: int, sigma_weighted: bool = False, one_d: str = "frozen",
    factors: Mapping[str, tuple[torch.Tensor, ...]] | None = None,
) -> dict[str, torch.Tensor]:
    """The release's "PCA" direction k (1-based): d = u_k v_kᵀ per 2-D matrix, ‖d‖_F = 1.

    W + α·u_k v_kᵀ = U(S + α e_k e_kᵀ)Vᵀ moves exactly one singular value per matrix (σ_k → σ_k + α).
    ``sigma_weighted``: d = σ_k u_k v_kᵀ. Matrices with fewer than k singular values are left out.
    ``one_d``: "frozen" (default; scaling every RMSNorm gain is a temperature change that would dominate)
    or "self" (γ → (1+α)γ, the release).
    """
    if one_d not in ("frozen", "self"):
        raise ValueError(f"one_d must be 'frozen' or 'self', got {one_d!r}")
    factors = factors if factors is not None else svd_factors(params, k)
    out: dict[str, torch.Tensor] = {}
    for name, p in params.items():
        if p.ndim == 2 and name in factors:
            u, s, vh = factors[name]
            if k > s.numel():
                continue
            d = torch.outer(u[:, k - 1], vh[k - 1])
            out[name] = (d * s[k - 1]) if sigma_weighted else d
        elif p.ndim <= 1 and one_d == "self":
            out[name] = p.detach().to(torch.promote_types(p.dtype, torch.float32)).clone()
    return out


# ---------------------------------------------------------------------------------------------- grids
def make_grid(half_width: float, n_points: int) -> np.ndarray:
    """Symmetric, odd-length grid k·step, k = −K..K: α = 0 is contained exactly and ±α are exact negatives."""
    if not (half_width > 0 and np.isfinite(half_width)):
        raise ValueError(f"grid half_width must be a positive finite number, got {half_width}")
    if n_points < 3 or n_points % 2 == 0:
        raise ValueError(f"grid n_points must be odd and ≥ 3 so that it contains 0, got {n_points}")
    k = (n_points - 1) // 2
    step = half_width / k
    return np.arange(-k, k + 1, dtype=np.float64) * step


#: The released scripts' grids (faithful mode only; methods.md Q5). ``pca_sigma`` has 26 points and no 0.
RELEASE_GRIDS = {
    "random": lambda: np.linspace(-0.003, 0.003, 25),
    "pca": lambda: np.linspace(-0.25, 0.25, 101),
    "pca_sigma": lambda: np.linspace(-0.05, 0.05, 26),
}


def release_grid(name: str) -> np.ndarray:
    """A grid exactly as the release builds it (may lack α = 0): only for ``mode="faithful"``."""
    return RELEASE_GRIDS[name]()


def center_index(alphas: np.ndarray, strict: bool = True) -> int:
    """Index of α = 0; with ``strict=False`` (release grids) the middle index is the centre."""
    zeros = np.flatnonzero(np.asarray(alphas) == 0.0)
    if len(zeros) == 1:
        return int(zeros[0])
    if strict:
        raise ValueError("grid does not contain α = 0 exactly once (use make_grid)")
    return len(alphas) // 2


# ---------------------------------------------------------------------------------------------- writing
def live_params(model: nn.Module) -> Params:
    """Detached views of a model's parameters: writing into them changes the model (restored by the engine)."""
    return {name: p.detach() for name, p in model.named_parameters()}


@contextmanager
def perturbed(params: Params, names: Iterable[str] | None = None) -> Iterator[Params]:
    """Snapshot ``params`` (or the subset ``names``); yield fp32 θ0 shadows; restore bit-exactly afterwards."""
    names = list(params) if names is None else list(names)
    originals = {n: params[n].detach().clone() for n in names}
    # fp32 (or wider) shadow; for fp32/fp64 tensors the snapshot itself serves (it is never written).
    theta0 = {n: t.to(torch.promote_types(t.dtype, torch.float32)) for n, t in originals.items()}
    try:
        yield theta0
    finally:
        with torch.no_grad():
            for n, t in originals.items():
                params[n].copy_(t)


@torch.no_grad()
def write_point(params: Params, theta0: Params, direction: Direction, alpha: float) -> None:
    """params[n] ← θ0[n] + α·d[n] for every n in the direction, computed fresh (no accumulation)."""
    for n, d in direction.items():
        dst = params[n]
        if dst.dtype == theta0[n].dtype:
            torch.add(theta0[n], d, alpha=float(alpha), out=dst)
        else:
            dst.copy_(torch.add(theta0[n], d, alpha=float(alpha)))


@torch.no_grad()
def write_lerp(params: Params, theta_a: Params, theta_b: Mapping[str, torch.Tensor], alpha: float) -> None:
    """params[n] ← lerp(θA, θB, α) in fp32 or wider (exact at both ends)."""
    for n, a in theta_a.items():
        b = theta_b[n].to(device=a.device, dtype=a.dtype)
        dst = params[n]
        if dst.dtype == a.dtype:
            torch.lerp(a, b, float(alpha), out=dst)
        else:
            dst.copy_(torch.lerp(a, b, float(alpha)))


# ---------------------------------------------------------------------------------------------- lines
def loss_line(
    params: Params, directions: Iterable[Direction], alphas: Sequence[float], batch: Any,
    loss_fn: LossFn, strict_grid: bool = True,
) -> np.ndarray:
    """L(θ0 + α d_j) for every direction j and grid point α: array [n_dirs, n_alphas, *loss shape].

    ``directions`` may be a lazy iterable (e.g. a generator of :func:`seeded_direction`), so only one
    direction is in memory at a time. The α = 0 point (or the release grid's middle point when
    ``strict_grid`` is False and 0 is absent) is evaluated once and shared when the grid contains exactly 0.
    """
    alphas = np.asarray(alphas, dtype=np.float64)
    zero = np.flatnonzero(alphas == 0.0)
    if strict_grid and len(zero) != 1:
        raise ValueError("grid must contain α = 0 exactly once (use make_grid; release grids: strict_grid=False)")
    rows: list[list[np.ndarray]] = []
    with perturbed(params) as theta0:
        base = np.asarray(loss_fn(params, batch), dtype=np.float64) if len(zero) else None
        for direction in directions:
            row = []
            for i, a in enumerate(alphas):
                if base is not None and i == zero[0]:
                    row.append(base)
                    continue
                write_point(params, theta0, direction, a)
                row.append(np.asarray(loss_fn(params, batch), dtype=np.float64))
            # Back to θ0 before the next direction, which may cover other tensors.
            write_point(params, theta0, direction, 0.0)
            rows.append(row)
    return np.asarray(rows, dtype=np.float64)


def lerp_line(
    params: Params, theta_b: Mapping[str, torch.Tensor], alphas: Sequence[float], batch: Any, loss_fn: LossFn,
    known: Mapping[int, np.ndarray] | None = None,
) -> np.ndarray:
    """L(lerp(θA, θB, α)) with θA = the live params: array [n_alphas, *loss shape]. Restored afterwards.

    ``known`` maps grid indices to losses already computed elsewhere (the end points θA and θB, which are
    checkpoints: lerp is exact at α = 0 and 1, so the same forward would give the same numbers).
    """
    missing = sorted(set(params) - set(theta_b))
    if missing:
        raise KeyError(f"interpolation end point lacks tensors: {missing[:5]}")
    known = known or {}
    out = []
    with perturbed(params) as theta_a:
        for i, a in enumerate(alphas):
            if i in known:
                out.append(np.asarray(known[i], dtype=np.float64))
                continue
            write_lerp(params, theta_a, theta_b, a)
            out.append(np.asarray(loss_fn(params, batch), dtype=np.float64))
    return np.asarray(out, dtype=np.float64)


# ---------------------------------------------------------------------------------------------- LM losses
def limit_tokens(batch: EvalBatch, max_tokens: int | None) -> EvalBatch:
    """The leading sequences of ``batch`` holding at least ``max_tokens`` counted tokens (None: all)."""
    if max_tokens is None:
        return batch
    counted = (batch.labels != -100).sum(dim=1).cumsum(0)
    n_seq = int((counted < max_tokens).sum()) + 1
    n_seq = min(n_seq, batch.input_ids.shape[0])
    return EvalBatch(batch.input_ids[:n_seq], batch.labels[:n_seq], batch.micro_batch)


def model_loss_fn(model: nn.Module, device: str | torch.device = "cpu", per_sequence: bool = False) -> LossFn:
    """``loss_fn(params, batch)`` for a model whose live parameters the engine writes.

    Returns the token-mean NLL (Σ NLL ÷ non-pad tokens), or with ``per_sequence`` an array [n_seq, 2] of
    (Σ NLL, tokens) per sequence, from which callers derive standard errors across sequences for free.
    """

    def loss(params: Params, batch: EvalBatch) -> float | np.ndarray:
        sums = []
        with torch.inference_mode():
            for ids, labels in batch.chunks():
                labels = labels.to(device)
                logits = model(ids.to(device)).float()
                nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                                      reduction="none").view(labels.shape)
                sums.append(torch.stack([nll.double().sum(1), (labels != -100).sum(1).double()], dim=1))
        arr = torch.cat(sums).cpu().numpy()
        return arr if per_sequence else float(arr[:, 0].sum() / max(arr[:, 1].sum(), 1.0))

    return loss


def chunk_mean(sums: np.ndarray) -> np.ndarray:
    """Token-mean loss from per-sequence (Σ NLL, tokens) arrays [..., n_seq, 2]."""
    return sums[..., 0].sum(-1) / np.maximum(sums[..., 1].sum(-1), 1.0)


def seeded_directions(
    params: Mapping[str, torch.Tensor], seed: int, n: int, filter_normalize: bool = False, exclude_1d: bool = True,
) -> Iterator[dict[str, torch.Tensor]]:
    """Lazily regenerate directions 0..n-1, so only one is in memory at a time."""
    for j in range(n):
        yield seeded_direction(params, seed, j, filter_normalize=filter_normalize, exclude_1d=exclude_1d)
