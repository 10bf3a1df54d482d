"""CoLA (Liu et al., 2025): every target becomes y = B·SiLU(A x) (methods.md §2.4).

Design choices:
* The layers (:class:`~rankscope.methods.layers.CoLALinear`) are drawn from a CPU generator seeded from
  the global RNG inside ``prepare`` — the loop seeds it before the base init, so the swap is reproducible
  and identical on every DDP rank.
* The outer MLP activation (release defect Q8) is one enum: ``keep`` (default, SiLU at every scale),
  ``drop`` (Identity at every scale), ``release`` (drop at 350m/1b only, as the release configs do).
  ``release`` needs the preset name, so the Config carries ``model_preset`` (filled by ``for_preset``).
* Optimizer: torch AdamW on every parameter (norms and embeddings too), wd 0.01, clip 0.5.
* No dense form: ``has_dense_form = False``; dense.materialize raises NoDenseForm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from rankscope.methods.base import Method, MethodConfig
from rankscope.methods.layers import CoLALinear, seeded_generator, swap_targets
from rankscope.methods.registry import register

OUTER_ACTS = ("keep", "drop", "release")
RELEASE_DROPS_OUTER_ACT = ("350m", "1b")  # release configs without `only_lr_act` (Q8)


@register("cola")
class CoLA(Method):
    @dataclass(frozen=True)
    class Config(MethodConfig):
        rank: int = 128  # r of A (r×n) and B (m×r)
        lr: float = 6e-3
        weight_decay: float = 0.01
        grad_clip: float | None = 0.5
        outer_act: str = "keep"  # keep | drop | release (Q8: drop the MLP's outer SiLU at 350m/1b)
        model_preset: str = ""  # model preset the config was built for (used by outer_act="release")

        def __post_init__(self) -> None:
            if self.outer_act not in OUTER_ACTS:
                raise ValueError(f"outer_act must be one of {OUTER_ACTS}, got {self.outer_act!r}")
            if self.rank < 1:
                raise ValueError(f"rank must be >= 1, got {self.rank}")

        @classmethod
        def for_preset(cls, preset: str, faithful_release: bool = False, **overrides: Any) -> MethodConfig:
            overrides.setdefault("model_preset", preset)
            return super().for_preset(preset, faithful_release, **overrides)

        def drops_outer_act(self) -> bool:
            if self.outer_act == "release" and not self.model_preset:
                raise ValueError("outer_act='release' depends on the model size: build the config with "
                                 "Config.for_preset(name) or set model_preset=...")
            return self.outer_act == "drop" or (
                self.outer_act == "release" and self.model_preset in RELEASE_DROPS_OUTER_ACT)

    Config.PRESET_DEFAULTS = {
        "smoke": {"rank": 8},
        "tiny": {"rank": 64, "lr": 1e-3},  # lr: best of the demo sweep (docs/study.md)
        "60m": {"rank": 128, "lr": 6e-3},
        "130m": {"rank": 256, "lr": 3e-3},
        "350m": {"rank": 256, "lr": 3e-3},
        "1b": {"rank": 512, "lr": 2e-3},  # not paper-verified (methods.md §2.8)
    }
    Config.FAITHFUL = {"outer_act": "release"}
    has_dense_form = False

    def prepare(self, model: nn.Module) -> nn.Module:
        cfg: CoLA.Config = self.config  # type: ignore[assignment]
        gen = seeded_generator()

        def build(_: str, linear: nn.Linear) -> nn.Module:
            return CoLALinear(linear.in_features, linear.out_features, cfg.rank, gen, like=linear.weight)

        swap_targets(model, build)
        if cfg.drops_outer_act():
            for mod in model.modules():
                if isinstance(getattr(mod, "act", None), nn.SiLU):
                    mod.act = nn.Identity()
        return model

    @classmethod
    def theory_counts(cls, model_cfg, config: MethodConfig) -> dict[str, int]:
        """params = extras + Σ r(m+n); all trainable; AdamW state twice that (methods.md §2.7)."""
        from rankscope.models.llama import extra_param_count, target_shapes

        n = extra_param_count(model_cfg) + sum(config.rank * (m + k) for _, m, k in target_shapes(model_cfg))
        return {"params": n, "trainable": n, "state": 2 * n, "buffers": 0}
