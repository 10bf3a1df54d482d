"""Fira (Chen et al., 2024): GaLore plus a norm-scaled residual for the out-of-subspace gradient.

Same targets, groups, projector and hyperparameters as GaLore (methods.md §2.3); only the optimizer class
and two options differ, so the method subclasses :class:`~rankscope.methods.galore.GaLore`.

Adam form (methods.md §2 "Adam core"), corrected in issue 14 item 8a: φ_i = ‖N_i‖/‖R_i‖ and the norm-growth
limiter read N, so the default ``torch`` form hands them the whole bias-corrected N = m̂/(√v̂+ε) and puts only
lr on the step. Before, 1/(1-β₁ᵏ) rode on the step size as in torch's AdamW kernel; that is harmless for
GaLore's linear update but made φ 10x too small at update 1, growing with the bias correction, and the
limiter (≤ 1 % growth per update) turned that warm-up into a residual held back for up to ~230 updates
(1.01²³¹ ≈ 10; in the issue's check ζ was 1.4 instead of 14 after update 1 and the residual at update 10
0.435x the equations'). ``faithful_release`` keeps
the fira package's folded form, m/(√v+ε) with lr·√(1-β₂ᵏ)/(1-β₁ᵏ) on the step, whose φ carries the factor
(1-β₁ᵏ)/√(1-β₂ᵏ) (3.16 at update 1, about 6.5 at updates 10-15, 1.26 at 1000): that is the release's
behaviour, reproduced, not endorsed. Item 8b (ζ when G lies almost in the subspace) is in
:mod:`rankscope.optim.fira`.
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
