"""LORO (Mo et al., ICLR 2025; mzf666/LORO-main): low-rank weights W = M Nᵀ trained on the rank-r manifold.

Every target becomes y = M (Nᵀ x) with M (m×r) and N (n×r), both Xavier-normal (std √(2/(m+r)) and
√(2/(n+r))), drawn from a CPU generator seeded from the loop-seeded global RNG. The optimizer
(:class:`~rankscope.optim.loro.LOROAdamW`) takes lazy Adam-normalised factor steps at lr·r/d_model and an
exact Riemannian step every K updates, and refreshes every parameter's Adam state with the same period.
The extras train with plain Adam in the same optimizer at the same lr (the release's "regular" group).
W = M Nᵀ is exact and linear, so LORO has a dense form and enters the cross-method barrier.

Schedule (:func:`cosine_with_restarts`): the run's warm-up + envelope (the recipe's cosine, or WSD for parity), and after
each K-update cycle a linear re-warm over ``rewarm`` updates (the release's ``--cosine_restart_warmup``,
default 5) to the envelope at the cycle start. Deviations: the release's first warm-up rises from
min_lr_ratio and its README shifts the cosine by ``--lr_adjust_steps -1000``; rankscope keeps the recipe's
envelope shared by every method so only the restarts differ. N need not be a multiple of K.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import Optimizer

from rankscope.methods.base import Method, MethodConfig, Schedule
from rankscope.methods.layers import SwappedLinear, _f32, _param, seeded_generator, swap_targets
from rankscope.methods.registry import register
from rankscope.methods.schedules import envelope
from rankscope.optim.loro import LOROAdamW


class LOROLinear(SwappedLinear):
    """y = M Nᵀ x: parameters ``loro_M`` (m×r, the release's weight_out) and ``loro_N`` (n×r, weight_in)."""

    def __init__(self, in_features: int, out_features: int, rank: int,
                 generator: torch.Generator | None = None, like: torch.Tensor | None = None) -> None:
        super().__init__(in_features, out_features, rank)
        m, n = out_features, in_features
        self.loro_N = _param(torch.randn(n, rank, generator=generator) * math.sqrt(2.0 / (n + rank)), like)
        self.loro_M = _param(torch.randn(m, rank, generator=generator) * math.sqrt(2.0 / (m + rank)), like)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x @ self.loro_N, self.loro_M)

    @torch.no_grad()
    def dense_weight(self) -> torch.Tensor:
        with torch.autocast(self.loro_M.device.type, enabled=False):
            return (_f32(self.loro_M) @ _f32(self.loro_N).t()).to(self.loro_M.dtype)


def cosine_with_restarts(t: int, sched: Schedule, cycle: int, rewarm: int) -> float:
    """LR factor for the update after t completed updates: t/W₀ in the warm-up; in the first ``rewarm``
    updates of every later K-cycle a ramp (t mod K)/w·E(⌊t/K⌋K); else E(t). E is the run's envelope
    (:func:`rankscope.methods.schedules.envelope`: the recipe's cosine, or warmup-stable-decay for parity
    runs, so restarts ride the stable phase and the cooldown alike, as ReLoRA's do)."""
    if t < sched.warmup_steps:
        return t / sched.warmup_steps
    if cycle > 0 and rewarm > 0 and t >= cycle and t % cycle < rewarm:
        return (t % cycle) / rewarm * envelope((t // cycle) * cycle, sched)
    return envelope(t, sched)


@register("loro")
class LORO(Method):
    supports_fsdp = False  # QR/SVD of whole factors

    @dataclass(frozen=True)
    class Config(MethodConfig):
        rank: int = 128  # r of M (m×r) and N (n×r); 2r <= min(m, n)
        lr: float = 0.01  # peak LR of every group
        exact_every: int = 500  # K: exact Riemannian step at updates K, 2K, ... (0: lazy only)
        refresh_every: int = -1  # Adam-state refresh period (-1: = exact_every; 0: never)
        lr_scaler: float = -1.0  # lazy-step LR multiplier (-1: r / d_model, the release's choice)
        rewarm: int = 5  # linear re-warm after each K-cycle (0: plain cosine)
        adam_form: str = "torch"  # torch (eps 1e-8) | folded (the release, eps 1e-6)

        def __post_init__(self) -> None:
            if self.rank < 1 or self.exact_every < 0 or self.refresh_every < -1 or self.rewarm < 0:
                raise ValueError("rank must be >= 1, exact_every/rewarm >= 0, refresh_every >= -1")
            if self.adam_form not in ("torch", "folded"):
                raise ValueError(f"adam_form={self.adam_form!r}; choose torch or folded")
            if self.exact_every and self.rewarm >= self.exact_every:
                raise ValueError(f"rewarm={self.rewarm} must be shorter than exact_every={self.exact_every}")

    # Release README / paper: lr 0.01, rank 128 (60M) and 256 (130M, 350M), K 500. CPU sizes: K 50.
    Config.PRESET_DEFAULTS = {
        "smoke": {"rank": 8, "exact_every": 50},
        "tiny": {"rank": 64, "exact_every": 50},
        "60m": {"rank": 128},
        "130m": {"rank": 256},
        "350m": {"rank": 256},
        "1b": {"rank": 512},  # [not paper-verified]
    }
    Config.FAITHFUL = {"adam_form": "folded", "adam_eps": 1e-6}

    def prepare(self, model: nn.Module) -> nn.Module:
        rank, gen = self.config.rank, seeded_generator()

        def build(name: str, linear: nn.Linear) -> nn.Module:
            if 2 * rank > min(linear.in_features, linear.out_features):
                raise ValueError(f"LORO rank {rank} is too large for {name} ({linear.out_features}×"
                                 f"{linear.in_features}): the exact step needs 2·rank <= min(m, n)")
            return LOROLinear(linear.in_features, linear.out_features, rank, gen, like=linear.weight)

        self.d_model = model.config.d_model if hasattr(model, "config") else 0
        swap_targets(model, build)
        return model

    def lr_factor(self, step: int) -> float:
        c: LORO.Config = self.config  # type: ignore[assignment]
        return cosine_with_restarts(step, self.schedule, c.exact_every, c.rewarm)

    def build_optimizer(self, model: nn.Module) -> Optimizer:
        c: LORO.Config = self.config  # type: ignore[assignment]
        layers = [m for m in model.modules() if isinstance(m, LOROLinear)]
        if not layers:
            raise ValueError("LORO: no LOROLinear layers in the model (call prepare first)")
        pairs = [p for layer in layers for p in (layer.loro_M, layer.loro_N)]
        ids = {id(p) for p in pairs}
        extras = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        d_model = getattr(self, "d_model", 0) or max(layers[0].in_features, layers[0].out_features)
        scaler = c.rank / d_model if c.lr_scaler < 0 else c.lr_scaler
        groups = [{"params": pairs, "lr": c.lr, "base_lr": c.lr, "loro_pairs": True, "lr_scaler": scaler}]
        if extras:
            groups.append({"params": extras, "lr": c.lr, "base_lr": c.lr})
        refresh = c.exact_every if c.refresh_every < 0 else c.refresh_every
        return LOROAdamW(groups, lr=c.lr, betas=(c.beta1, c.beta2), eps=c.adam_eps, weight_decay=c.weight_decay,
                         exact_every=c.exact_every, refresh_every=refresh, adam_form=c.adam_form)

    @classmethod
    def theory_counts(cls, model_cfg, config: MethodConfig) -> dict[str, int]:
        """params = extras + Σ r(m+n); state 2·params plus one update counter per parameter tensor."""
        from rankscope.models.llama import extra_param_count, target_shapes

        shapes = target_shapes(model_cfg)
        n = extra_param_count(model_cfg) + sum(config.rank * (m + k) for _, m, k in shapes)
        tensors = 2 * len(shapes) + 2 + 2 * model_cfg.n_layers + 1
        return {"params": n, "trainable": n, "state": 2 * n + tensors, "buffers": 0}
