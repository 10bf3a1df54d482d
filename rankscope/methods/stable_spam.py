"""Stable-SPAM (Huang et al., 2025): AdaClip spike thresholds, adaptive gradient-norm scaling and momentum
reset on every parameter (the rules and the one deviation from the release: :mod:`rankscope.optim.stable_spam`).

Optimizer-only and full-rank in weights (dense form = the model). The release puts every trainable
parameter in one Stable-SPAM group at one LR; so does rankscope. T (the progress factor's horizon) is the
run length from the schedule, as the release sets ``total_T`` to the number of training steps.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torch.optim import Optimizer

from rankscope.methods.base import Method, MethodConfig
from rankscope.methods.registry import register
from rankscope.optim.stable_spam import SCALARS, StableSPAMAdamW


@register("stable_spam")
class StableSPAM(Method):
    supports_fsdp = False  # AdaClip's max|g| and the norm scaling read whole gradients (FSDP2 shards rows)

    @dataclass(frozen=True)
    class Config(MethodConfig):
        lr: float = 1e-3
        gamma1: float = 0.85  # EMA of the gradient norm (times the progress factor)
        gamma2: float = 0.99999  # EMA of the squared gradient norm
        gamma3: float = 0.999  # EMA of max|g| (AdaClip threshold)
        reset_every: int = 1000  # ΔT: momentum reset period (0: never)
        eta: float = 0.5  # floor of the progress factor ρ (cosine from 1 to η over the run)

        def __post_init__(self) -> None:
            for name in ("gamma1", "gamma2", "gamma3"):
                if not 0.0 <= getattr(self, name) < 1.0:
                    raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
            if self.reset_every < 0 or not 0.0 <= self.eta <= 1.0:
                raise ValueError("reset_every must be >= 0 and eta in [0, 1]")

    # Release scripts: 130M lr 8e-4 (ΔT 1000, γ 0.85/0.99999/0.999); 350M 4e-4 [from the run name];
    # 60M and 1B follow SPAM's values [not paper-verified]. smoke/tiny: ΔT 50 (as GaLore's gap there).
    Config.PRESET_DEFAULTS = {
        "smoke": {"reset_every": 50},
        "tiny": {"reset_every": 50},
        "60m": {"lr": 1e-3},
        "130m": {"lr": 8e-4},
        "350m": {"lr": 4e-4},
        "1b": {"lr": 4e-4},
    }

    def build_optimizer(self, model: nn.Module) -> Optimizer:
        c: StableSPAM.Config = self.config  # type: ignore[assignment]
        groups = self.param_groups(model)
        total = self.schedule.total_steps if self.schedule is not None else 0
        return StableSPAMAdamW(groups, lr=c.lr, betas=(c.beta1, c.beta2), eps=c.adam_eps,
                               weight_decay=c.weight_decay, gamma1=c.gamma1, gamma2=c.gamma2, gamma3=c.gamma3,
                               reset_every=c.reset_every, total_steps=total, eta=c.eta)

    @classmethod
    def theory_counts(cls, model_cfg, config: MethodConfig) -> dict[str, int]:
        """2 moments per element, plus per parameter tensor the update counter k and μ, a, b."""
        from rankscope.models.llama import dense_param_count, target_shapes

        n = dense_param_count(model_cfg)
        tensors = len(target_shapes(model_cfg)) + 2 + 2 * model_cfg.n_layers + 1
        return {"params": n, "trainable": n, "state": 2 * n + (1 + len(SCALARS)) * tensors, "buffers": 0}
