"""Full-rank AdamW: the reference every low-rank method is compared with (methods.md §2.1)."""

from __future__ import annotations

from dataclasses import dataclass

from rankscope.methods.base import Method, MethodConfig
from rankscope.methods.registry import register


@register("full_rank")
class FullRank(Method):
    @dataclass(frozen=True)
    class Config(MethodConfig):
        lr: float = 1e-3

    Config.PRESET_DEFAULTS = {"smoke": {"lr": 4e-3},  # best of the smoke-size sweep (docs/study.md)
                              "1b": {"lr": 4e-4}}
