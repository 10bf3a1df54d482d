"""Low-Rank: every target W replaced by B A (rank r), both factors trained by AdamW (methods2.md).

The simplest member of the family (CoLA without its SiLU), studied by Glentis et al. (arXiv 2505.22922)
with two options offered here:

* ``refactor_every`` = T > 0: after every T-th update, re-factorise each layer from the SVD of B A,
  computed without forming the m×n product: B = Q_B R_B, Aᵀ = Q_A R_A, SVD of the r×r core R_B R_Aᵀ =
  U S Vᵀ, then B ← Q_B U √S and A ← √S Vᵀ Q_Aᵀ (the balanced split). B A is unchanged up to float error;
  only the factor geometry is reset (‖B‖ = ‖A‖ per direction).
* ``reset_moments`` (with re-factorisation): zero the AdamW moments of A and B at each re-factorisation
  (the old moments refer to the old factor coordinates). The Adam step counter is kept, as ReLoRA does.

As in Glentis et al.'s code (OptimAI-Lab/Memory_Efficient_Pretraining, ``pt_low_rank``): W = s·B A with
s = alpha/r (alpha 32), both factors Kaiming-uniform with a = √5 (nn.Linear's default: A ~ U(±1/√n),
B ~ U(±1/√r)), no dropout, lr 1.5e-3 at 60m (their script). Dense form: s·B A (fp32, one cast), so the
method enters every dense-weight diagnostic and the cross-method barrier. Deviations: the lr at the other
sizes and the re-factorisation period are rankscope choices [not paper-verified]; smoke/tiny keep
s = 0.25 (alpha 2 / 16 at rank 8 / 64), as ReLoRA does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import Optimizer

from rankscope.methods.base import Method, MethodConfig
from rankscope.methods.layers import (
    SwappedLinear,
    _f32,
    _param,
    kaiming_a_sqrt5,
    seeded_generator,
    swap_targets,
)
from rankscope.methods.registry import register

MOMENTS = ("exp_avg", "exp_avg_sq")


class LowRankLinear(SwappedLinear):
    """y = s·B (A x) with A (r×n), B (m×r), s = alpha/r: parameters ``lr_A``, ``lr_B``."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float | None = None,
                 generator: torch.Generator | None = None, like: torch.Tensor | None = None) -> None:
        super().__init__(in_features, out_features, rank)
        self.alpha = float(rank if alpha is None else alpha)
        self.scale = self.alpha / rank
        self.lr_A = _param(kaiming_a_sqrt5(rank, in_features, generator), like)
        self.lr_B = _param(kaiming_a_sqrt5(out_features, rank, generator), like)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(F.linear(x, self.lr_A), self.lr_B)

    @torch.no_grad()
    def dense_weight(self) -> torch.Tensor:
        with torch.autocast(self.lr_A.device.type, enabled=False):
            return (self.scale * (_f32(self.lr_B) @ _f32(self.lr_A))).to(self.lr_A.dtype)

    @torch.no_grad()
    def refactor(self) -> None:
        """Balanced re-factorisation B, A ← Q_B U √S, √S Vᵀ Q_Aᵀ from the SVD of B A (never formed); s is kept."""
        with torch.autocast(self.lr_A.device.type, enabled=False):
            B, A = _f32(self.lr_B), _f32(self.lr_A)
            qb, rb = torch.linalg.qr(B)  # m×r, r×r
            qa, ra = torch.linalg.qr(A.t())  # n×r, r×r
            u, s, vh = torch.linalg.svd(rb @ ra.t())
            root = s.sqrt()
            self.lr_B.copy_((qb @ u) * root)
            self.lr_A.copy_(root[:, None] * (vh @ qa.t()))


@register("low_rank")
class LowRank(Method):
    supports_fsdp = False  # re-factorisation needs whole factors

    @dataclass(frozen=True)
    class Config(MethodConfig):
        rank: int = 128  # r of A (r×n) and B (m×r)
        alpha: float = 32.0  # scale s = alpha / rank
        lr: float = 1.5e-3
        refactor_every: int = 0  # T: balanced SVD re-factorisation after every T-th update (0: off)
        reset_moments: bool = False  # zero A/B moments at each re-factorisation (Glentis et al.)

        def __post_init__(self) -> None:
            if self.rank < 1 or self.refactor_every < 0:
                raise ValueError("rank must be >= 1 and refactor_every >= 0")
            if self.reset_moments and not self.refactor_every:
                raise ValueError("reset_moments=True acts at re-factorisations: set refactor_every > 0")

    Config.PRESET_DEFAULTS = {
        "smoke": {"rank": 8, "alpha": 2.0},
        "tiny": {"rank": 64, "alpha": 16.0},
        "60m": {"rank": 128},  # Glentis et al.'s 60m script: r 128, alpha 32, lr 1.5e-3
        "130m": {"rank": 256},  # [not paper-verified] beyond 60m
        "350m": {"rank": 256},
        "1b": {"rank": 512},
    }

    def prepare(self, model: nn.Module) -> nn.Module:
        c, gen = self.config, seeded_generator()

        def build(_: str, linear: nn.Linear) -> nn.Module:
            return LowRankLinear(linear.in_features, linear.out_features, c.rank, c.alpha, gen, like=linear.weight)

        swap_targets(model, build)
        return model

    @torch.no_grad()
    def on_step_end(self, step: int, model: nn.Module, optimizer: Optimizer) -> dict[str, float]:
        c: LowRank.Config = self.config  # type: ignore[assignment]
        if not c.refactor_every or step % c.refactor_every:
            return {}
        for layer in model.modules():
            if isinstance(layer, LowRankLinear):
                layer.refactor()
                if c.reset_moments:
                    for p in (layer.lr_A, layer.lr_B):
                        for key in MOMENTS:
                            if key in optimizer.state.get(p, {}):
                                optimizer.state[p][key].zero_()
        return {"refactorisations": float(step // c.refactor_every)}

    @classmethod
    def theory_counts(cls, model_cfg, config: MethodConfig) -> dict[str, int]:
        """params = extras + Σ r(m+n) (rank clamped to min(m, n) is not applied: r ≤ min(m, n) expected)."""
        from rankscope.models.llama import extra_param_count, target_shapes

        n = extra_param_count(model_cfg) + sum(config.rank * (m + k) for _, m, k in target_shapes(model_cfg))
        return {"params": n, "trainable": n, "state": 2 * n, "buffers": 0}
