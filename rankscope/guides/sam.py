"""Sharpness-aware minimisation (Foret et al., ICLR 2021, arXiv 2010.01412) and its Adam-preconditioned form.

Per update, on the accumulated clean gradient g (all micro-batches, all-reduced under DDP):
ε = ρ·Pg/‖Pg‖ with P = I (plain) or P = diag(1/(√v̂ + eps)) (``precondition=adam``: v̂ the bias-corrected
second moment of g, kept by the guide with the method's β2 and eps, like Adam's, cf. Kwon et al. 2021 for
scaled neighbourhoods); then the gradient at θ + ε replaces g and the weights are restored exactly before
the method's own optimizer steps. The logged loss is the clean one. ε lives in the trainable parameters
(docs/guides.md has the table per method). Cost: two forward+backward passes per update.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rankscope.guides import params as P
from rankscope.guides.base import Guide, GuideConfig
from rankscope.guides.registry import register


@dataclass(frozen=True)
class SamConfig(GuideConfig):
    rho: float = 0.05  # radius of the ascent step ε (in the trainable parameters' norm)
    precondition: str = "none"  # none | adam (ε along the Adam direction g/(√v̂+eps), normalised)

    def __post_init__(self) -> None:
        if not self.rho > 0:
            raise ValueError(f"option rho={self.rho} must be a positive number")
        if self.precondition not in ("none", "adam"):
            raise ValueError(f"option precondition={self.precondition!r} is not valid; choose none or adam")


def sam_direction(grads: list, second: list | None, beta2: float, eps: float, t: int) -> list:
    """Pg for the plain (``second`` None) or Adam-preconditioned ascent (``second``: running Σ of g², step t)."""
    if second is None:
        return list(grads)
    correction = 1.0 - beta2**t
    return [None if g is None else g / ((v / correction).sqrt() + eps) for g, v in zip(grads, second)]


@register("sam")
class Sam(Guide):
    Config = SamConfig
    summary = "ascent ε = ρ·Pg/‖Pg‖ on the accumulated gradient, step with ∇L(θ+ε) (P = I or Adam's 1/√v̂)"

    def setup(self, model, optimizer, info) -> None:
        super().setup(model, optimizer, info)
        self.adam = self.config.precondition == "adam"
        method_cfg = self.run.method_config()
        self.beta2, self.eps = method_cfg.beta2, method_cfg.adam_eps
        self.t = 0
        self.v = [torch.zeros_like(p, dtype=torch.float32 if p.dtype != torch.float64 else p.dtype)
                  for p in self.params] if self.adam else None

    def accumulate(self, step, micro_pass):
        loss = micro_pass()
        g = P.grads(self.params)
        if self.adam:
            self.t += 1
            for v, gi in zip(self.v, g):
                if gi is not None:
                    v.mul_(self.beta2).addcmul_(gi.to(v.dtype), gi.to(v.dtype), value=1.0 - self.beta2)
        direction = sam_direction(g, self.v, self.beta2, self.eps, self.t)
        norm = P.global_norm(direction)
        if not torch.isfinite(norm) or norm == 0:  # nothing to ascend along: keep the clean gradient
            return loss
        saved = P.snapshot(self.params)
        P.add_(self.params, P.scaled(direction, self.config.rho / norm))
        P.zero_grads(self.params)
        micro_pass()
        P.restore(self.params, saved)
        return loss

    def state_dict(self):
        if not self.adam:
            return {}
        return {"t": torch.tensor(self.t), **{f"v.{i}": v for i, v in enumerate(self.v)}}

    def load_state_dict(self, state):
        if self.adam and "t" in state:
            self.t = int(state["t"])
            for i, v in enumerate(self.v):
                v.copy_(state[f"v.{i}"])

    @classmethod
    def cost(cls, config, model_cfg, seq_len, method, method_config):
        from rankscope.methods.flops import estimate

        est = estimate(method, model_cfg, method_config, seq_len)
        return est.per_token, 0.0  # a second forward+backward per token
