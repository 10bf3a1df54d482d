"""The swapped layers of CoLA, SLTrain and ReLoRA (methods.md §2.4–2.6, §4).

Each layer replaces one ``nn.Linear`` target and exposes ``dense_weight()``: the m×n matrix the layer
applies, computed in fp32 with one cast to the parameter dtype at the end, so diagnostics see every
method through the same dense weights. CoLA has no such matrix (SiLU between its factors) and raises
:class:`~rankscope.methods.dense.NoDenseForm`; its ``linear_product()`` (B·A) is offered separately to
metrics that opt in.

Randomness: every constructor takes an optional CPU ``torch.Generator``. Values are drawn on the CPU and
then copied to the layer's device, so the same seed gives the same layer on any device (and the method
files can make all DDP ranks agree without relying on per-rank global RNG state).

Parameter names (what checkpoints and diagnostics see):
``cola_A`` (r×n), ``cola_B`` (m×r); ``lora_A`` (r×n), ``lora_B`` (m×r), ``sparse_values`` (⌊δmn⌋) and the
persistent buffer ``sparse_index``; ReLoRA keeps the frozen dense weight under the HF name ``weight``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def sparse_count(m: int, n: int, delta: float) -> int:
    """⌊δ·m·n⌋, robust to float error (0.03·mn must not floor to k−1 when it is exactly k)."""
    return math.floor(round(delta * m * n, 6))


def _f32(t: torch.Tensor) -> torch.Tensor:
    """At least fp32 (bf16/fp16 → fp32; fp64 stays fp64 so float64 tests stay exact)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def seeded_generator() -> torch.Generator:
    """A CPU generator seeded from the (loop-seeded) global RNG: reproducible, and the same on every
    DDP rank because ``prepare`` runs before any rank-specific randomness."""
    return torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,)).item()))


def _uniform(shape: tuple[int, ...], bound: float, generator: torch.Generator | None) -> torch.Tensor:
    return torch.empty(shape).uniform_(-bound, bound, generator=generator)


def kaiming_a_sqrt5(rows: int, fan_in: int, generator: torch.Generator | None) -> torch.Tensor:
    """Kaiming-uniform with a=√5 (nn.Linear's default): U(−1/√fan_in, 1/√fan_in), drawn on the CPU."""
    return _uniform((rows, fan_in), 1.0 / math.sqrt(fan_in), generator)


class SwappedLinear(nn.Module):
    """Common base: shape bookkeeping and the ``dense_weight`` contract."""

    def __init__(self, in_features: int, out_features: int, rank: int) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank

    def dense_weight(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def _param(t: torch.Tensor, like: torch.Tensor | None, requires_grad: bool = True) -> nn.Parameter:
    if like is not None:
        t = t.to(device=like.device, dtype=like.dtype)
    return nn.Parameter(t, requires_grad=requires_grad)


# ---------------------------------------------------------------------------------------------- CoLA
class CoLALinear(SwappedLinear):
    """y = B·SiLU(A x). Both factors ~ N(0,1)·r^{-1/4}·(n+m)^{-1/4}, so Var[(BA)_ij] ≈ 1/(n+m)."""

    def __init__(self, in_features: int, out_features: int, rank: int,
                 generator: torch.Generator | None = None, like: torch.Tensor | None = None) -> None:
        super().__init__(in_features, out_features, rank)
        std = rank ** -0.25 * (in_features + out_features) ** -0.25
        self.cola_A = _param(torch.randn(rank, in_features, generator=generator) * std, like)
        self.cola_B = _param(torch.randn(out_features, rank, generator=generator) * std, like)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.silu(F.linear(x, self.cola_A)), self.cola_B)

    def dense_weight(self) -> torch.Tensor:
        from rankscope.methods.dense import NoDenseForm

        raise NoDenseForm(
            "CoLA layers compute B·SiLU(A x): no single matrix reproduces them. Use "
            "rankscope.methods.dense.linearised_state(model) for the linear product B·A (metrics that opt "
            "in only; it is not the layer's function)."
        )

    @torch.no_grad()
    def linear_product(self) -> torch.Tensor:
        """B·A in fp32, cast once: rank ≤ r, NOT the map the layer applies (SiLU sits in between)."""
        with torch.autocast(self.cola_A.device.type, enabled=False):
            return (_f32(self.cola_B) @ _f32(self.cola_A)).to(self.cola_A.dtype)


# ------------------------------------------------------------------------------------------- SLTrain
def _sltrain_weight(A: torch.Tensor, B: torch.Tensor, values: torch.Tensor, index: torch.Tensor,
                    scale: float) -> torch.Tensor:
    """s·B A + scatter(values → Ω), in fp32 (index is row-major into the m×n matrix)."""
    with torch.autocast(A.device.type, enabled=False):  # autocast would run B@A in bf16
        w = (_f32(B) @ _f32(A)).mul_(scale)
        w.view(-1).index_add_(0, index, _f32(values))
    return w


class _SLTrainFunction(torch.autograd.Function):
    """Linear with W = s·BA + S that never keeps W alive between forward and backward.

    Forward materialises W, applies it and drops it; backward rebuilds it (for ∇x) and forms the dense
    weight gradient G = grad_outᵀ x once, from which every factor gradient follows:
    ∇B = s·G Aᵀ, ∇A = s·Bᵀ G, ∇values = G[Ω]. So at most one dense m×n matrix per layer exists at a time.
    """

    @staticmethod
    def forward(ctx, x, A, B, values, index, scale: float):  # type: ignore[override]
        w = _sltrain_weight(A, B, values, index, scale)
        out = F.linear(x, w.to(x.dtype))  # under autocast this runs in the autocast dtype
        ctx.save_for_backward(x, A, B, values, index)
        ctx.scale, ctx.compute_dtype = scale, out.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, A, B, values, index = ctx.saved_tensors
        s, ct = ctx.scale, ctx.compute_dtype
        grad_out = grad_out.to(ct)
        grad_x = grad_A = grad_B = grad_values = None
        if ctx.needs_input_grad[0]:
            grad_x = F.linear(grad_out, _sltrain_weight(A, B, values, index, s).to(ct).t()).to(x.dtype)
        if any(ctx.needs_input_grad[1:4]):
            # G in the compute dtype (as a dense nn.Linear would form it), factor products in fp32.
            g = _f32(grad_out.reshape(-1, grad_out.shape[-1]).t() @ x.reshape(-1, x.shape[-1]).to(ct))
            with torch.autocast(A.device.type, enabled=False):
                if ctx.needs_input_grad[1]:
                    grad_A = (s * (_f32(B).t() @ g)).to(A.dtype)
                if ctx.needs_input_grad[2]:
                    grad_B = (s * (g @ _f32(A).t())).to(B.dtype)
            if ctx.needs_input_grad[3]:
                grad_values = g.view(-1).index_select(0, index).to(values.dtype)
        return grad_x, grad_A, grad_B, grad_values, None, None


class SLTrainLinear(SwappedLinear):
    """W = s·B A + S with s = alpha/r, B = 0 at init (so W₀ = S) and a fixed random support Ω.

    Ω holds ⌊δmn⌋ sorted row-major flat indices, drawn once by ``randperm`` and never changed; it is a
    persistent buffer (int32 when mn < 2³¹, else int64) so checkpoints restore it exactly.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, delta: float,
                 generator: torch.Generator | None = None, like: torch.Tensor | None = None) -> None:
        super().__init__(in_features, out_features, rank)
        if not 0.0 < delta <= 1.0:
            raise ValueError(f"SLTrain density delta must be in (0, 1], got {delta}")
        m, n = out_features, in_features
        self.alpha, self.delta, self.scale = alpha, delta, alpha / rank
        k = sparse_count(m, n, delta)
        index = torch.randperm(m * n, generator=generator)[:k].sort().values
        index = index.to(torch.int32 if m * n < 2**31 else torch.int64)
        self.lora_A = _param(kaiming_a_sqrt5(rank, n, generator), like)
        self.lora_B = _param(torch.zeros(m, rank), like)
        self.sparse_values = _param(_uniform((k,), 1.0 / math.sqrt(n), generator), like)
        if like is not None:
            index = index.to(like.device)
        self.register_buffer("sparse_index", index, persistent=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SLTrainFunction.apply(x, self.lora_A, self.lora_B, self.sparse_values, self.sparse_index,
                                      self.scale)

    @torch.no_grad()
    def dense_weight(self) -> torch.Tensor:
        w = _sltrain_weight(self.lora_A, self.lora_B, self.sparse_values, self.sparse_index, self.scale)
        return w.view(self.out_features, self.in_features).to(self.lora_A.dtype)

    def extra_repr(self) -> str:
        nnz = self.sparse_index.numel()
        return f"{super().extra_repr()}, alpha={self.alpha}, delta={self.delta}, nnz={nnz}"


# -------------------------------------------------------------------------------------------- ReLoRA
class ReLoRALinear(SwappedLinear):
    """h = W x + s·B(A·drop(x)), W frozen (a requires_grad=False parameter named ``weight``, HF-compatible).

    ``zero_init_A=True`` reproduces the release's zero A (defect Q1: no factor gradient until the first
    merge). Dropout acts on the adapter input only and only in training mode.
    """

    def __init__(self, weight: torch.Tensor, rank: int, alpha: float, dropout: float = 0.1,
                 zero_init_A: bool = False, generator: torch.Generator | None = None) -> None:
        m, n = weight.shape
        super().__init__(n, m, rank)
        self.alpha, self.scale = alpha, alpha / rank
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        a = torch.zeros(rank, n) if zero_init_A else kaiming_a_sqrt5(rank, n, generator)
        self.lora_A = _param(a, weight)
        self.lora_B = _param(torch.zeros(m, rank), weight)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        adapter = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)
        return F.linear(x, self.weight) + self.scale * adapter

    @torch.no_grad()
    def dense_weight(self) -> torch.Tensor:
        with torch.autocast(self.weight.device.type, enabled=False):
            w = _f32(self.weight) + self.scale * (_f32(self.lora_B) @ _f32(self.lora_A))
        return w.to(self.weight.dtype)

    @torch.no_grad()
    def merge_and_reinit(self, generator: torch.Generator | None = None) -> None:
        """W ← W + s·B A (fp32, one cast), then A ← Kaiming-uniform(a=√5) and B ← 0: function unchanged."""
        self.weight.copy_(self.dense_weight())
        self.lora_A.copy_(kaiming_a_sqrt5(self.rank, self.in_features, generator))
        self.lora_B.zero_()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, alpha={self.alpha}"


# ----------------------------------------------------------------------------------------- swapping
def swap_targets(model: nn.Module, build: Callable[[str, nn.Linear], nn.Module]) -> list[str]:
    """Replace every ``nn.Linear`` whose attribute name is in TARGET_NAMES by ``build(qualname, linear)``.

    Selection is by type plus the exact name list (never a substring match), and zero matches is an
    error: a method that silently trains nothing low-rank would be a wrong experiment, not a slow one.
    """
    from rankscope.models.llama import TARGET_NAMES

    found = [(name, mod) for name, mod in model.named_modules()
             if isinstance(mod, nn.Linear) and name.rsplit(".", 1)[-1] in TARGET_NAMES]
    if not found:
        raise ValueError(
            f"no target layers found: expected nn.Linear modules named one of {TARGET_NAMES} "
            f"in {type(model).__name__} (already swapped, or not a rankscope LLaMA?)"
        )
    for name, linear in found:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, build(name, linear))
    return [name for name, _ in found]
