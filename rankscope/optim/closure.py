"""The ``step(closure)`` contract of ``torch.optim``, shared by rankscope's optimizers."""

from __future__ import annotations

from collections.abc import Callable

import torch


def loss_of(closure: Callable[[], float] | None) -> float | None:
    """Evaluate ``closure`` with gradients on (optimizer steps run under ``no_grad``); None without one."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()
