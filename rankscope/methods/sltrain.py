"""SLTrain (Han et al., NeurIPS 2024): W = s·B A + S on a fixed random sparse support (methods.md §2.5).

Design choices:
* Pure PyTorch: :class:`~rankscope.methods.layers.SLTrainLinear` uses a custom autograd.Function that
  materialises W per layer in forward, frees it, and forms the dense gradient G once in backward
  (∇B = s·G Aᵀ, ∇A = s·Bᵀ G, ∇values = G[Ω]). No compiled extension (requirement U9).
* The support Ω of every layer is drawn from one CPU generator seeded from the loop-seeded global RNG in
  ``prepare`` (reproducible, identical on every DDP rank) and lives in a persistent int32/int64 buffer,
  so checkpoints restore it exactly.
* ``lora_dropout`` of the release is accepted there but never applied; rankscope does not expose it.
* smoke/tiny use rank 8/64 with alpha chosen to keep the 60m scale s = alpha/r = 0.25.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from rankscope.methods.base import Method, MethodConfig
from rankscope.methods.layers import SLTrainLinear, seeded_generator, sparse_count, swap_targets
from rankscope.methods.registry import register


@register("sltrain")
class SLTrain(Method):
    supports_fsdp = False  # needs whole matrices (projector / merge / custom sparse autograd)
    @dataclass(frozen=True)
    class Config(MethodConfig):
        rank: int = 128  # r of the low-rank part B (m×r) A (r×n)
        alpha: float = 32.0  # lora alpha: scale s = alpha / rank
        delta: float = 0.03  # density of the fixed sparse support, ⌊δmn⌋ entries per matrix
        lr: float = 2e-3

        def __post_init__(self) -> None:
            if self.rank < 1:
                raise ValueError(f"rank must be >= 1, got {self.rank}")
            if not 0.0 < self.delta <= 1.0:
                raise ValueError(f"delta must be in (0, 1], got {self.delta}")

    Config.PRESET_DEFAULTS = {
        "smoke": {"rank": 8, "alpha": 2.0, "lr": 8e-3},  # lr: best of the smoke-size sweep (docs/study.md)
        "tiny": {"rank": 64, "alpha": 16.0, "lr": 1e-3},  # lr: best of the demo sweep (docs/study.md)
        "60m": {"rank": 128, "alpha": 32.0, "lr": 2e-3},
        "130m": {"rank": 256, "alpha": 16.0, "lr": 3e-3},
        "350m": {"rank": 256, "alpha": 16.0, "lr": 2e-3},
        "1b": {"rank": 512, "alpha": 8.0, "lr": 3e-3},  # not paper-verified (methods.md §2.8)
    }

    def prepare(self, model: nn.Module) -> nn.Module:
        cfg: SLTrain.Config = self.config  # type: ignore[assignment]
        gen = seeded_generator()

        def build(_: str, linear: nn.Linear) -> nn.Module:
            return SLTrainLinear(linear.in_features, linear.out_features, cfg.rank, cfg.alpha, cfg.delta,
                                 gen, like=linear.weight)

        swap_targets(model, build)
        return model

    @classmethod
    def theory_counts(cls, model_cfg, config: MethodConfig) -> dict[str, int]:
        """params = extras + Σ (r(m+n) + ⌊δmn⌋), all trainable; index buffer Σ⌊δmn⌋ (methods.md §2.7)."""
        from rankscope.models.llama import extra_param_count, target_shapes

        shapes = target_shapes(model_cfg)
        sparse = sum(sparse_count(m, n, config.delta) for _, m, n in shapes)
        n = extra_param_count(model_cfg) + sum(config.rank * (m + k) for _, m, k in shapes) + sparse
        return {"params": n, "trainable": n, "state": 2 * n, "buffers": sparse, "sparse_values": sparse}
