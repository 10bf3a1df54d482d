"""Momentum-SAM (Becker et al. 2024, arXiv 2401.12033): ascent along the negated momentum.

Per update: θ̃ = θ − ρ·m/‖m‖ with m the guide's running average of past guided gradients
(m ← β1·m + (1 − β1)·g, the method's β1, in the checkpoint), one forward+backward at θ̃, weights restored by
copy, optimizer step with that gradient. No extra pass (≈ free), one extra parameter-sized buffer. The
guide keeps its own m rather than reading the optimizer's because not every method's optimizer has a
momentum in parameter space (GaLore's is projected). The first guided update (m = 0) is a plain one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rankscope.guides import params as P
from rankscope.guides.base import Guide, GuideConfig
from rankscope.guides.registry import register


@dataclass(frozen=True)
class MsamConfig(GuideConfig):
    rho: float = 0.05  # radius of the step against the momentum

    def __post_init__(self) -> None:
        if not self.rho > 0:
            raise ValueError(f"option rho={self.rho} must be a positive number")


@register("msam")
class Msam(Guide):
    Config = MsamConfig
    summary = "gradient at θ − ρ·m/‖m‖ (m: momentum of past gradients), no extra pass"

    def setup(self, model, optimizer, info) -> None:
        super().setup(model, optimizer, info)
        self.beta1 = self.run.method_config().beta1
        self.m = [torch.zeros_like(p, dtype=torch.float64 if p.dtype == torch.float64 else torch.float32)
                  for p in self.params]

    def accumulate(self, step, micro_pass):
        norm = P.global_norm(self.m)
        if norm > 0 and torch.isfinite(norm):
            saved = P.snapshot(self.params)
            P.add_(self.params, P.scaled(self.m, -self.config.rho / norm))
            loss = micro_pass()
            P.restore(self.params, saved)
        else:
            loss = micro_pass()
        with torch.no_grad():
            for m, g in zip(self.m, P.grads(self.params)):
                if g is not None:
                    m.mul_(self.beta1).add_(g.to(m.dtype), alpha=1.0 - self.beta1)
        return loss

    def state_dict(self):
        return {f"m.{i}": m for i, m in enumerate(self.m)}

    def load_state_dict(self, state):
        for i, m in enumerate(self.m):
            if f"m.{i}" in state:
                m.copy_(state[f"m.{i}"])
