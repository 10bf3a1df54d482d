"""The Guide protocol: what a geometry guide may change in the training loop, and nothing else.

The loop's micro-batch pass (forward, loss, backward over every micro-batch of one update, gradients
accumulated in ``.grad``) is a callable ``micro_pass(extra=None)`` that returns the update's summed LM loss.
A guide active at an update replaces the plain call with :meth:`Guide.accumulate`, which may call it more
than once (SAM: clean gradient, perturb, second pass, restore) or add a loss term (``extra(ids, labels)``,
computed in the same forward). :meth:`Guide.after_step` runs after the optimizer step (decoupled decay).
Without a guide the loop calls ``micro_pass()`` exactly as before, so an unguided run is unchanged bit for bit.

A guide is one file in this package: a frozen ``Config`` derived from :class:`GuideConfig` and a
``@register("name")`` subclass of :class:`Guide`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from rankscope.errors import UserError

MicroPass = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class GuideConfig:
    """Options every guide has. ``window``: the part of training it acts in, as ``start:end`` fractions."""

    window: str = "0:1"  # start:end fractions of train.steps (e.g. 0.8:1 = the last 20 %, a WSD cooldown)


def parse_window(text: str, guide: str) -> tuple[float, float]:
    """``"0.8:1"`` -> (0.8, 1.0); a malformed or empty window is a user error naming the option."""
    start, sep, end = str(text).partition(":")
    try:
        lo, hi = float(start), float(end)
    except ValueError:
        lo, hi = -1.0, -1.0
    if not sep or not (0.0 <= lo < hi <= 1.0):
        raise UserError(f"guide {guide!r}: option window={text!r} is not valid: give start:end fractions of "
                        f"train.steps with 0 <= start < end <= 1 (e.g. --set guide.window=0.8:1 for the last 20 %)")
    return lo, hi


def window_steps(window: tuple[float, float], total: int) -> range:
    """The 0-based update indices a window covers: ``start·N <= k < end·N``."""
    return range(math.ceil(window[0] * total), math.ceil(window[1] * total))


class Guide:
    """Base class of a geometry guide. Subclasses override only what they change."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[GuideConfig]] = GuideConfig
    #: One line for `rankscope guides` and the docs table.
    summary: ClassVar[str] = ""

    def __init__(self, config: GuideConfig, run_cfg) -> None:
        self.config = config
        self.run = run_cfg
        self.window = parse_window(config.window, self.name)
        self.steps = window_steps(self.window, run_cfg.train.steps)
        if not self.steps:
            raise ValueError(f"option window={config.window!r} covers no update of train.steps="
                             f"{run_cfg.train.steps}; widen it (--set guide.window=start:end)")
        self.params: list[nn.Parameter] = []

    # --- before anything is written ------------------------------------------------------------
    def check(self, method) -> None:
        """Raise :class:`UserError` if this guide cannot act on ``method`` (called before the folder opens)."""

    # --- training ------------------------------------------------------------------------------
    def setup(self, model: nn.Module, optimizer, info) -> None:
        """Called once with the unwrapped model, before the first update. Default: perturb the trainable
        parameters, i.e. the space the optimizer steps in (docs/guides.md, where ε lives)."""
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.info = info

    def active(self, step: int) -> bool:
        """Whether the guide acts on the update that follows ``step`` completed updates."""
        return step in self.steps

    def accumulate(self, step: int, micro_pass: MicroPass) -> torch.Tensor:
        """Fill ``.grad`` for this update and return the summed LM loss. Default: one plain pass."""
        return micro_pass()

    def after_step(self, step: int, optimizer) -> dict[str, float]:
        """Work after the optimizer step of update ``step`` (1-based) inside the window; values to log."""
        return {}

    # --- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensor state for exact resume (stored in the checkpoint's method.safetensors under ``guide/``)."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass

    # --- accounting ----------------------------------------------------------------------------
    @classmethod
    def cost(cls, config: GuideConfig, model_cfg, seq_len: int, method: str, method_config: Any) -> tuple[float, float]:
        """(extra FLOPs per training token, extra FLOPs per update) while the guide is active, given the
        method's own per-token count; the caller scales them by the window's share of updates."""
        return 0.0, 0.0


def guide_fraction(window: tuple[float, float], total: int) -> float:
    """Share of a run's updates a window covers (for the FLOPs counter)."""
    return len(window_steps(window, total)) / max(total, 1)
