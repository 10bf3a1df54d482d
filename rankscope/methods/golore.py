"""GoLore (He et al., ICML 2025, arXiv 2410.11289): GaLore, then random projections for the last part of training.

Near stationarity the top-r subspace of a small-batch gradient follows the noise and can stay orthogonal to
the true gradient, so GaLore may stall (the paper's counter-example); a projection drawn uniformly from the
Stiefel manifold is unbiased and converges. The paper's recipe is hybrid: GaLore's SVD projector until a
fraction ρ of training, then every refresh draws a random orthonormal basis
(:func:`~rankscope.optim.projectors.random_basis`, seeded by ``random_seed``, the parameter's position and
its counter, so reruns and resumes draw the same bases). Everything else is GaLore's, including its study
hyperparameters, so that the projector is the only difference between the two runs.

Deviations from the official code (pkumelon/Golore ``golore_torch``; OptimAI-Lab's ``pt_golore`` is a LoRA
re-initialisation variant, not this optimizer):

* ρ = 0.8 as in its ``Go_pt.sh``, but lr 0.01 and α 0.25 (GaLore's recipe) instead of the script's lr 1e-3,
  α 1; the switch is placed at ``ceil(ρ·total_steps)`` of the run's schedule (the same per-parameter counter
  test as the release, ``step >= ρ·N``).
* The release's random draw for the right side orthonormalises an r×n Gaussian through the inverse square
  root of its n×n (rank-r) Gram matrix, which divides by ~0 singular values; rankscope draws Z as n×r and
  uses QR with R's diagonal signs (Haar), on both sides.
* At every refresh the release re-projects the first moment into the new basis but only for that step's
  update (the re-projected tensor is never stored back); rankscope keeps the moments as GaLore does.
* Unseeded global-RNG draws in the release; here a dedicated seeded generator (the global RNG is untouched).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from rankscope.methods.galore import GaLore
from rankscope.methods.registry import register


@register("golore")
class GoLore(GaLore):
    @dataclass(frozen=True)
    class Config(GaLore.Config):
        random_fraction_start: float = 0.8  # ρ: random orthonormal projections from this share of the steps
        random_seed: int = 0  # seeds the random bases (mixed with each parameter's position and counter)

        def __post_init__(self) -> None:
            super().__post_init__()
            if not 0.0 <= self.random_fraction_start <= 1.0:
                raise ValueError(f"random_fraction_start must be in [0, 1], got {self.random_fraction_start}")

    Config.PRESET_DEFAULTS = dict(GaLore.Config.PRESET_DEFAULTS)
    Config.FAITHFUL = dict(GaLore.Config.FAITHFUL)

    def switch_step(self) -> int:
        """The counter from which refreshes draw random bases: ceil(ρ · total steps)."""
        if self.schedule is None:
            raise ValueError("GoLore places its switch at random_fraction_start x the run's total steps, so it "
                             "needs the run's Schedule; build it as GoLore(config, Schedule(total_steps, warmup))")
        return math.ceil(self.config.random_fraction_start * self.schedule.total_steps)

    def projected_group_options(self) -> dict[str, Any]:
        return {**super().projected_group_options(), "random_after": self.switch_step(),
                "random_seed": self.config.random_seed}
