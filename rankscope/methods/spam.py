"""SPAM (Huang et al., ICLR 2025): AdamW with spike-aware clipping, momentum reset with cosine warm-up and
optional sparse momentum on the block matrices (methods2.md "SPAM"; the rules and the deviations from the
release are in :mod:`rankscope.optim.spam`).

Optimizer-only and full-rank in weights, so the dense form is the model itself. As in the release, the 7
projections of every block form one group (the one that takes ``density``), the extras another; clipping,
reset and warm-up apply to both. Sparse-momentum supports are seeded from the loop-seeded global RNG when
the optimizer is built, and the seed is saved with the optimizer's groups, so resumes and DDP ranks agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim import Optimizer

from rankscope.methods.base import Method, MethodConfig
from rankscope.methods.galore import target_linears
from rankscope.methods.layers import seeded_generator
from rankscope.methods.registry import register
from rankscope.optim.spam import SPAMAdamW


def split_targets(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(block projections, everything else that trains)."""
    targets = [m.weight for _, m in target_linears(model) if m.weight.requires_grad]
    ids = {id(p) for p in targets}
    return targets, [p for p in model.parameters() if p.requires_grad and id(p) not in ids]


@register("spam")
class SPAM(Method):
    supports_fsdp = False  # sparse supports index whole matrices

    @dataclass(frozen=True)
    class Config(MethodConfig):
        lr: float = 1e-3
        threshold: float = 5000.0  # θ: spike if g² > θ·v
        reset_every: int = 500  # ΔT: zero the moments every ΔT updates (0: never)
        warmup: int = 150  # cosine warm-up of the update after each reset
        clip_after: int = 20  # N_a: no spike clipping in the first N_a updates of a cycle
        density: float = 1.0  # fraction of each block matrix's coordinates with momentum (1: dense)
        adam_form: str = "torch"  # torch (eps 1e-8) | folded (the release, eps 1e-6)

        def __post_init__(self) -> None:
            if not 0.0 < self.density <= 1.0:
                raise ValueError(f"density must be in (0, 1], got {self.density}")
            if self.adam_form not in ("torch", "folded"):
                raise ValueError(f"adam_form={self.adam_form!r}; choose torch or folded")
            if self.reset_every < 0 or self.warmup < 0 or self.clip_after < 0 or self.threshold < 0:
                raise ValueError("threshold, reset_every, warmup and clip_after must be >= 0")

    # The release's README: lr 1e-3 (usage), 8e-4 (130M), 4e-4 (350M); ΔT 500, θ 5000, warm-up 150.
    # smoke/tiny: ΔT 50 (as GaLore's gap), warm-up and N_a scaled by the same 1/10.
    Config.PRESET_DEFAULTS = {
        "smoke": {"reset_every": 50, "warmup": 15, "clip_after": 2},
        "tiny": {"reset_every": 50, "warmup": 15, "clip_after": 2},
        "60m": {"lr": 1e-3},
        "130m": {"lr": 8e-4},
        "350m": {"lr": 4e-4},
        "1b": {"lr": 4e-4},  # [not paper-verified]
    }
    Config.FAITHFUL = {"adam_form": "folded", "adam_eps": 1e-6}

    def build_optimizer(self, model: nn.Module) -> Optimizer:
        c: SPAM.Config = self.config  # type: ignore[assignment]
        targets, extras = split_targets(model)
        seed = int(torch.randint(0, 2**62, (1,), generator=seeded_generator()).item()) if c.density < 1 else 0
        groups = [{"params": targets, "lr": c.lr, "base_lr": c.lr, "density": c.density, "mask_seed": seed}]
        if extras:
            groups.append({"params": extras, "lr": c.lr, "base_lr": c.lr})
        return SPAMAdamW(groups, lr=c.lr, betas=(c.beta1, c.beta2), eps=c.adam_eps, weight_decay=c.weight_decay,
                         threshold=c.threshold, reset_every=c.reset_every, warmup=c.warmup,
                         clip_after=c.clip_after, adam_form=c.adam_form)

    @classmethod
    def theory_counts(cls, model_cfg, config: MethodConfig) -> dict[str, int]:
        """Dense: 2 moments per element. Sparse: per block matrix 3·⌊density·mn⌋ (m, v, support index)."""
        from rankscope.models.llama import dense_param_count, extra_param_count, target_shapes

        n = dense_param_count(model_cfg)
        if config.density >= 1.0:
            return {"params": n, "trainable": n, "state": 2 * n, "buffers": 0}
        kept = sum(max(1, math.floor(round(config.density * m * k, 6))) for _, m, k in target_shapes(model_cfg))
        return {"params": n, "trainable": n, "state": 2 * extra_param_count(model_cfg) + 3 * kept, "buffers": 0}
