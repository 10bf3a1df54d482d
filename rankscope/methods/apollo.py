"""APOLLO (Zhu et al., MLSys 2025): dense model, SGD-like memory, Adam-like steps from a random projection.

Optimizer-only method with GaLore's parameter-group layout (methods2.md): the 7 projections of every block in
a projected group of :class:`~rankscope.optim.apollo.APOLLOAdamW`, the extras (embedding, lm_head, norms) in a
plain AdamW group with the same peak LR. Adam moments live on R = G·Pᵀ for a seeded Gaussian P that is
redrawn every T updates (no SVD); they only set a per-row (channel-wise) scaling of the full raw gradient,
which then passes Fira's norm-growth limiter. P is regenerated from a seed, never stored.

Recipes (zhuhanqing/APOLLO ``scripts/pretrain_c4``): lr 0.01, T 200, α 1, channel-wise, rank 128 / 192 / 256
/ 256 at 60m / 130m / 350m / 1b (d/4), wd 0, no clipping, 10 % warm-up, cosine to 0.1. smoke / tiny keep
rank = d/4 (8 / 64) and T 50, like GaLore's CPU sizes.

Deviations from the official repository (all listed, see also :mod:`rankscope.optim.apollo`):

* Adam form ``"torch"`` (ε 1e-8, N = m̂/(√v̂+ε), decay before the step) by default; ``faithful_release``
  restores the package's transformers form (m/(√v+ε) with lr·√(1-β₂ᵏ)/(1-β₁ᵏ) on the step, ε 1e-6, decay
  after). The difference is not cosmetic here: the limiter reads N, and in the folded form ‖N‖ warms up
  with (1-β₁ᵏ)/√(1-β₂ᵏ), which the limiter treats as growth (as for Fira, issue 14 item 8a).
* Targets by type and exact name (the release: any ``nn.Linear`` whose name contains ``attn`` or ``mlp``).
* Rank clamped to min(m, n) (the package never clamps); P is not held between steps unless
  ``cache_projection``; the scheduler is stepped once per update (the release's launcher trap APOLLO#14 does
  not apply); whole matrices are needed, so under FSDP2 each is owned by one rank (optim/whole_matrix.py;
  upstream APOLLO#5 explodes under FSDP).
* Seeds: the first is the parameter's 1-based position in the optimizer (as the package) plus
  ``projection_seed``; rankscope's layout puts the targets first, the release's puts the extras first, so
  the same model gets other (equally random) projections than under the release launcher.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn
from torch.optim import Optimizer

from rankscope.methods.base import Method, MethodConfig
from rankscope.methods.galore import projected_layout
from rankscope.methods.registry import register
from rankscope.optim.apollo import SCALE_TYPES, APOLLOAdamW
from rankscope.optim.galore import ADAM_FORMS


@register("apollo")
class Apollo(Method):
    supports_fsdp = True  # the scaling needs whole rows/columns: whole-matrix ownership under FSDP2

    @dataclass(frozen=True)
    class Config(MethodConfig):
        lr: float = 0.01  # peak LR of targets *and* extras
        rank: int = 128  # r of the random projection (clamped to min(m, n) per matrix)
        update_proj_gap: int = 200  # T: a new projection (next seed) every T updates of a matrix
        scale: float = 1.0  # α: the update is multiplied by √α
        scale_type: str = "channel"  # channel: one factor per row/column (APOLLO) | tensor: one (Mini)
        scale_front: bool = False  # apply √α before the norm-growth limiter (Mini) instead of after
        limiter_gamma: float | None = 1.01  # Fira's norm-growth limiter (None: off, the package's disable_nl)
        projection_seed: int = 0  # added to every parameter's first seed (0: the package's seeds)
        cache_projection: bool = False  # keep P between steps (faster; r·min(m, n) more elements held)
        adam_form: str = "torch"  # torch (eps 1e-8) | folded (the package's transformers AdamW, eps 1e-6)

        def __post_init__(self) -> None:
            if self.adam_form not in ADAM_FORMS:
                raise ValueError(f"adam_form={self.adam_form!r}; choose one of: {', '.join(ADAM_FORMS)}")
            if self.scale_type not in SCALE_TYPES:
                raise ValueError(f"scale_type={self.scale_type!r}; choose one of: {', '.join(SCALE_TYPES)}")
            if self.rank < 1 or self.update_proj_gap < 1:
                raise ValueError("rank and update_proj_gap must be >= 1")
            if self.scale <= 0:
                raise ValueError(f"scale must be > 0, got {self.scale}")
            if self.limiter_gamma is not None and self.limiter_gamma < 1.0:
                raise ValueError(f"limiter_gamma must be >= 1 (or None), got {self.limiter_gamma}")

    Config.PRESET_DEFAULTS = {
        "smoke": {"rank": 8, "update_proj_gap": 50},
        "tiny": {"rank": 64, "update_proj_gap": 50},
        "60m": {"rank": 128},
        "130m": {"rank": 192},
        "350m": {"rank": 256},
        "1b": {"rank": 256},
    }
    Config.FAITHFUL = {"adam_form": "folded", "adam_eps": 1e-6}

    def projected_group_options(self) -> dict[str, Any]:
        c = self.config
        return {"rank": c.rank, "update_proj_gap": c.update_proj_gap, "scale": c.scale,
                "scale_type": c.scale_type, "scale_front": c.scale_front, "limiter_gamma": c.limiter_gamma,
                "projection_seed": c.projection_seed}

    def param_groups(self, model: nn.Module) -> list[dict]:
        return projected_layout(model, self.config.lr, self.projected_group_options())

    def build_optimizer(self, model: nn.Module) -> Optimizer:
        c = self.config
        return APOLLOAdamW(self.param_groups(model), lr=c.lr, betas=(c.beta1, c.beta2), eps=c.adam_eps,
                           weight_decay=c.weight_decay, adam_form=c.adam_form,
                           cache_projection=c.cache_projection)

    @classmethod
    def theory_counts(cls, model_cfg, config: MethodConfig) -> dict[str, int]:
        """methods2.md: 2 moments per extra; per target 2r·max(m,n) moments + its seed + ζ (if limited).

        ``projectors`` is 0: P is regenerated from the seed (with ``cache_projection`` it is held outside
        the state dict, r·min(m, n) elements per target, reported as ``projection_cache``).
        """
        from rankscope.models.llama import dense_param_count, extra_param_count, target_shapes

        n = dense_param_count(model_cfg)
        shapes = target_shapes(model_cfg)
        per_target = 1 + (config.limiter_gamma is not None)  # seed, ζ
        moments = 2 * extra_param_count(model_cfg)
        cache = 0
        for _, m, k in shapes:
            r = min(config.rank, m, k)
            moments += 2 * r * max(m, k)
            cache += r * min(m, k)
        return {"params": n, "trainable": n, "state": moments + per_target * len(shapes), "buffers": 0,
                "projectors": 0, "projection_cache": cache if config.cache_projection else 0}
