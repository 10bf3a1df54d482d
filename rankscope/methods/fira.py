"""Fira (Chen et al., 2024): GaLore plus a norm-scaled residual for the out-of-subspace gradient.

Same targets, groups, projector and hyperparameters as GaLore (methods.md §2.3); only the optimizer class
and two options differ, so the method subclasses :class:`~rankscope.methods.galore.GaLore`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from rankscope.methods.galore import GaLore
from rankscope.methods.registry import register
from rankscope.optim.fira import FiraAdamW


@register("fira")
class Fira(GaLore):
    @dataclass(frozen=True)
    class Config(GaLore.Config):
        residual_alpha_scaled: bool = False  # release quirk Q7: residual G - α·B(R) instead of G - B(R)
        limiter_gamma: float = 1.01  # norm-growth limiter: at most 1 % growth of the residual per step

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.limiter_gamma < 1.0:
                raise ValueError(f"limiter_gamma must be >= 1, got {self.limiter_gamma}")

    Config.PRESET_DEFAULTS = {
        **GaLore.Config.PRESET_DEFAULTS,
        "1b": {"rank": 512, "scale": 0.0625},  # Fira's 1B script [not paper-verified]
    }
    Config.FAITHFUL = {**GaLore.Config.FAITHFUL, "residual_alpha_scaled": True}

    optimizer_class: ClassVar[type[FiraAdamW]] = FiraAdamW
    extra_state_per_target: ClassVar[int] = 1  # ζ, one scalar per matrix

    def projected_group_options(self) -> dict[str, Any]:
        c = self.config
        return {**super().projected_group_options(), "residual_alpha_scaled": c.residual_alpha_scaled,
                "limiter_gamma": c.limiter_gamma}
