"""Learning-rate schedules as pure functions of the completed-update count (update k uses λ(k−1)).

* ``cosine``: linear warmup to the peak, then a half cosine to ``min_lr_ratio`` at N (the paper's schedule).
* ``wsd`` (warmup-stable-decay): linear warmup over W, constant 1 until D = N − decay_steps, then a decay
  over the last ``decay_steps`` updates to ``min_lr_ratio`` with a named shape p ↦ s(p), p = (t−D)/(N−D):
  ``linear`` 1−p, ``cosine`` ½(1+cos πp), ``1-sqrt`` 1−√p (Hägele et al. 2024). ``decay_steps=0`` never
  decays (a stable-phase parent whose cooldowns are separate branch runs, docs/study.md "Parity").

Why WSD: a stable-phase checkpoint at step s plus a short cooldown is an end-of-schedule model for the
budget s + cooldown, so one run yields models for many budgets (parity protocol, shared/spec/parity.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rankscope.methods.base import Schedule

SCHEDULES = ("cosine", "wsd")
DECAY_SHAPES: dict[str, Callable[[float], float]] = {
    "linear": lambda p: 1.0 - p,
    "cosine": lambda p: 0.5 * (1.0 + math.cos(math.pi * p)),
    "1-sqrt": lambda p: 1.0 - math.sqrt(p),
}


def check_schedule(kind: str, decay_shape: str) -> None:
    """ValueError naming the valid choices (the config layer turns it into a UserError)."""
    if kind not in SCHEDULES:
        raise ValueError(f"schedule={kind!r} is not valid; choose one of: {', '.join(SCHEDULES)}")
    if decay_shape not in DECAY_SHAPES:
        raise ValueError(f"decay_shape={decay_shape!r} is not valid; choose one of: {', '.join(DECAY_SHAPES)}")


def envelope(t: float, sched: Schedule) -> float:
    """The post-warmup factor at (possibly fractional) step t: cosine or stable-then-decay, never the ramp."""
    w, n, lo = sched.warmup_steps, sched.total_steps, sched.min_lr_ratio
    if sched.kind == "wsd":
        d = n - sched.decay_steps
        if sched.decay_steps <= 0 or t <= d:
            return 1.0
        p = min((t - d) / sched.decay_steps, 1.0)
        return lo + (1.0 - lo) * DECAY_SHAPES[sched.decay_shape](p)
    if n <= w:
        return 1.0
    p = min(max((t - w) / (n - w), 0.0), 1.0)
    return lo + (1.0 - lo) * DECAY_SHAPES["cosine"](p)


def lr_factor(step: int, sched: Schedule) -> float:
    """λ(t) = t/W during warmup, else :func:`envelope` (the one schedule of every method but ReLoRA)."""
    if step < sched.warmup_steps:
        return step / sched.warmup_steps
    return envelope(step, sched)


def decay_start(sched: Schedule) -> int:
    """First step of the decay phase (N for cosine-free WSD without decay; W for cosine)."""
    if sched.kind == "wsd":
        return sched.total_steps - max(sched.decay_steps, 0)
    return sched.warmup_steps
