"""Random weight perturbation: the opposite-sign control for SAM (Bisla et al., low-pass filtering SGD, AISTATS 2022).

Per update: ε has entries N(0, (σ·‖row‖)²/n) for each row of each trainable matrix (a vector is one row of
length n), drawn from a generator seeded by (salt, the run's data seed, the update index), so the noise is a
function of the run and the step alone: nothing to store, and a resumed run draws exactly the noise an
uninterrupted one does; every DDP rank draws the same ε. The gradient is
(1 − λ)·∇L(θ) + λ·∇L(θ + ε): with λ = 1 (default) one pass at θ + ε (the logged loss is then the loss at
θ + ε), with λ < 1 a clean pass too (≈ 2× cost; the logged loss is the clean one). Random directions lower
the Hessian trace (random-direction sharpness), not the top curvature: docs/guides.md states the sign
prediction this control tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rankscope.guides import params as P
from rankscope.guides.base import Guide, GuideConfig
from rankscope.guides.registry import register

#: Salt of the noise stream (distinct from the batch order's and the method's streams).
RWP_SALT = 0x52_57_50


@dataclass(frozen=True)
class RwpConfig(GuideConfig):
    sigma: float = 0.01  # noise scale relative to each row's norm: ε_ij ~ N(0, (σ·‖W_i‖)²/n)
    mix: float = 1.0  # λ in (1-λ)·∇L(θ) + λ·∇L(θ+ε); below 1 also runs the clean pass

    def __post_init__(self) -> None:
        if not self.sigma > 0:
            raise ValueError(f"option sigma={self.sigma} must be a positive number")
        if not 0 < self.mix <= 1:
            raise ValueError(f"option mix={self.mix} must be in (0, 1]")


def noise_seed(data_seed: int, step: int) -> int:
    from rankscope.optim.projectors import mix_seed

    return mix_seed(RWP_SALT, data_seed, step)


@torch.no_grad()
def rwp_noise(params: list[torch.Tensor], sigma: float, seed: int) -> list[torch.Tensor]:
    """ε for every parameter, row-scaled, from one CPU generator (same draws on any device and world size).

    Draws are float32 (float64 for float64 parameters): on CPU a float64 normal draw costs about four times
    a float32 one, which made the noise the larger part of rwp's step time on the tiny model."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for p in params:
        rows = p.detach().reshape(p.shape[0], -1) if p.ndim >= 2 else p.detach().reshape(1, -1)
        dtype = torch.float64 if p.dtype == torch.float64 else torch.float32  # fp64 draws cost ~4x fp32 on CPU
        z = torch.randn(rows.shape, generator=gen, dtype=dtype)
        scale = sigma * rows.to(dtype).norm(dim=1, keepdim=True).cpu() / rows.shape[1] ** 0.5
        out.append((z * scale).reshape(p.shape).to(device=p.device, dtype=p.dtype))
    return out


@register("rwp")
class Rwp(Guide):
    Config = RwpConfig
    summary = "step with ∇L(θ+ε), ε row-scaled Gaussian noise regenerated from the data seed (control for sam)"

    def accumulate(self, step, micro_pass):
        lam = self.config.mix
        clean_loss, clean = None, None
        if lam < 1:
            clean_loss = micro_pass()
            clean = [None if g is None else g.clone() for g in P.grads(self.params)]
            P.zero_grads(self.params)
        saved = P.snapshot(self.params)
        P.add_(self.params, rwp_noise(self.params, self.config.sigma, noise_seed(self.run.train.order_seed, step)))
        loss = micro_pass()
        P.restore(self.params, saved)
        if clean is not None:
            with torch.no_grad():
                for p, c in zip(self.params, clean):
                    if p.grad is not None and c is not None:
                        p.grad.mul_(lam).add_(c, alpha=1.0 - lam)
        return loss if clean_loss is None else clean_loss

    @classmethod
    def cost(cls, config, model_cfg, seq_len, method, method_config):
        from rankscope.methods.flops import estimate

        if config.mix >= 1:
            return 0.0, 0.0  # one pass, at θ + ε (the draw is elementwise: not counted, as Adam is not)
        return estimate(method, model_cfg, method_config, seq_len).per_token, 0.0
