"""Stable-SPAM (Huang et al., 2025; TianjinYellow/StableSPAM): SPAM with adaptive spike rules.

Per parameter, update k (global, 1-based) with gradient g, counter s (restarted at each reset) and the
training-progress factor ρ_k = η + (1−η)·½(1 + cos(π k/(T+1))) (T = total updates, η = 0.5):

1. **AdaClip** (adaptive spike threshold): a running max of |g|,
   μ ← γ₃μ + (1−γ₃)·max|g|, μ̂ = μ/(1−γ₃ˢ); coordinates with |g| > μ̂ are rescaled to g·μ̂/max|g|.
2. **Adaptive gradient-norm scaling**: with n = ‖g‖ (after 1), a ← γ₁ρ·a + (1−γ₁ρ)·n, b ← γ₂b + (1−γ₂)·n²,
   â = a/(1−(γ₁ρ)ˢ), b̂ = b/(1−γ₂ˢ); then g ← g/n · â/(√b̂ + ε) (skipped when n = 0).
3. **Momentum reset** every ΔT updates (k mod ΔT = 0): m, v ← 0 and s ← 1 (μ, a, b are kept).
4. Adam with β₁' = β₁ρ: m ← β₁'m + (1−β₁')g, v ← β₂v + (1−β₂)g², W ← W(1−lr·wd) − lr/(1−β₁'ˢ) ·
   m/(√v/√(1−β₂ˢ) + ε) (torch's AdamW form, as the release).

Defaults are the release's 130M script: γ₁ 0.85, γ₂ 0.99999, γ₃ 0.999, ΔT 1000, η 0.5, T = run length.

Deviation from the release: at a reset step the release rebinds ``state["exp_avg"]`` to fresh zeros *after*
taking local references, so that step still updates and uses the old moments (with s = 1 bias
correction) and the zeros take effect one update later. Here the reset zeroes m and v before the moment
update of the reset step, as the paper describes. Everything else follows the release's code.

Speed: steps 1-2 rewrite the gradient in place; step 4 is torch's multi-tensor AdamW kernel with
betas (β₁ρ, β₂), whose bias correction 1 − (β₁ρ)ˢ is the release's.

State per parameter, all tensors: ``step`` (s), ``total_step`` (k), ``exp_avg``, ``exp_avg_sq`` and the
scalars ``max_ema`` (μ), ``norm_ema`` (a), ``norm_sq_ema`` (b).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from rankscope.optim.closure import loss_of
from rankscope.optim.galore import _plain_adamw
from rankscope.optim.state_dtypes import load_keeping

SCALARS = ("max_ema", "norm_ema", "norm_sq_ema")


def progress_factor(k: int, total: int, eta: float) -> float:
    """ρ_k: cosine from 1 to η over the run (the release's CosineAnnealingLR with T_max = T + 1)."""
    if total <= 0:
        return 1.0
    return eta + (1.0 - eta) * 0.5 * (1.0 + math.cos(math.pi * k / (total + 1)))


class StableSPAMAdamW(Optimizer):
    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, *, gamma1: float = 0.85, gamma2: float = 0.99999,
                 gamma3: float = 0.999, reset_every: int = 1000, total_steps: int = 0, eta: float = 0.5) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, gamma1=gamma1, gamma2=gamma2,
                        gamma3=gamma3, reset_every=reset_every, total_steps=total_steps, eta=eta)
        super().__init__(params, defaults)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Counters and running scalars stay float32 (torch would cast them to a bf16 parameter's dtype)."""
        keys = {"step": "step", **{k: "param" for k in ("total_step", *SCALARS)}}
        load_keeping(self, super().load_state_dict, state_dict, keys)

    @torch.no_grad()
    def step(self, closure=None):
        loss = loss_of(closure)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            buckets: dict[float, list[tuple[torch.Tensor, dict]]] = {}  # ρ -> (param, state)
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self._state(p)
                state["total_step"] += 1
                k = int(state["total_step"].item())
                rho = progress_factor(k, group["total_steps"], group["eta"])
                if group["reset_every"] > 0 and k % group["reset_every"] == 0:
                    state["exp_avg"].zero_()
                    state["exp_avg_sq"].zero_()
                    state["step"].zero_()  # the Adam kernel below counts it to s = 1
                self._transform_grad(p, state, group, rho, int(state["step"].item()) + 1)
                buckets.setdefault(rho, []).append((p, state))
            for rho, items in buckets.items():  # step 4: AdamW with β₁' = β₁ρ, torch's multi-tensor kernel
                ps, sts = [p for p, _ in items], [st for _, st in items]
                _plain_adamw(ps, [p.grad for p in ps], [st["exp_avg"] for st in sts],
                             [st["exp_avg_sq"] for st in sts], [st["step"] for st in sts], lr=group["lr"],
                             betas=(beta1 * rho, beta2), eps=group["eps"], weight_decay=group["weight_decay"])
        return loss

    def _state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if not state:  # ``step`` where the fused kernel wants it (device for CUDA, else CPU)
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device if p.is_cuda else "cpu")
            for key in ("total_step", *SCALARS):
                state[key] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        return state

    @staticmethod
    def _transform_grad(p: torch.Tensor, state: dict, group: dict, rho: float, s: int) -> None:
        """Steps 1-2 on p.grad, in place (computed in at least fp32), with s the update's moment counter."""
        g1, g2, g3, eps = group["gamma1"], group["gamma2"], group["gamma3"], group["eps"]
        g = p.grad.float()  # the same tensor for fp32 gradients
        factor = g.abs()  # becomes the per-coordinate AdaClip factor: μ̂/max|g| on spikes, else 1
        gmax = factor.max()
        mu = state["max_ema"].mul_(g3).add_((1 - g3) * gmax)
        mu_hat = mu / (1 - g3 ** s)
        torch.where(factor > mu_hat, mu_hat / gmax, torch.ones((), dtype=g.dtype, device=g.device), out=factor)
        g.mul_(factor)
        del factor
        n = g.norm()
        a = state["norm_ema"].mul_(g1 * rho).add_((1 - g1 * rho) * n)
        b = state["norm_sq_ema"].mul_(g2).add_((1 - g2) * n * n)
        c = (a / (1 - (g1 * rho) ** s)) / ((b / (1 - g2 ** s)).sqrt() + eps)
        g.mul_(torch.where(n > 0, c / n.clamp_min(torch.finfo(g.dtype).tiny), torch.ones_like(n)))
        if g is not p.grad:
            p.grad.copy_(g)
