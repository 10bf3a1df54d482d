"""APOLLO-Mini (Zhu et al., MLSys 2025): APOLLO with a rank-1 projection and one scaling factor per matrix.

Same optimizer and layout as :mod:`rankscope.methods.apollo`; only the defaults differ: rank 1, tensor-wise
scaling s = ‖N‖/‖R‖, α = 128 with √α applied before the norm-growth limiter (``scale_front``). The state per
target is 2·max(m, n) moments + seed + ζ: SGD-like memory.

Recipes (zhuhanqing/APOLLO ``scripts/pretrain_c4/*_apollo_mini.sh``): lr 0.01, T 200, α 128 at 60m, 350m and
1b but 192 at 130m (the script's comment: "exact 1/4 of llama model dimension"). √α makes up for the rank-1
estimate (‖s⊙G‖ ≈ √(r/n)·‖Adam's update‖), so the CPU sizes keep α = d/4: 8 (smoke) and 64 (tiny), with
T 50 as GaLore's. Deviations from the repository: those of APOLLO.
"""

from __future__ import annotations

from dataclasses import dataclass

from rankscope.methods.apollo import Apollo
from rankscope.methods.registry import register


@register("apollo_mini")
class ApolloMini(Apollo):
    @dataclass(frozen=True)
    class Config(Apollo.Config):
        rank: int = 1  # rank-1 auxiliary space
        scale: float = 128.0  # α (the update is multiplied by √α)
        scale_type: str = "tensor"  # one scaling factor per matrix
        scale_front: bool = True  # √α before the limiter

    Config.PRESET_DEFAULTS = {
        "smoke": {"scale": 8.0, "update_proj_gap": 50},
        "tiny": {"scale": 64.0, "update_proj_gap": 50},
        "60m": {"scale": 128.0},
        "130m": {"scale": 192.0},
        "350m": {"scale": 128.0},
        "1b": {"scale": 128.0},
    }
    Config.FAITHFUL = dict(Apollo.Config.FAITHFUL)
