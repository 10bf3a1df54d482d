"""Perplexity-parity logic, pure: from per-method ppl(tokens) curves of cooled models to parity choices.

A curve holds one point per *cooled* model of a method (a WSD cooldown branch, or a full-schedule run):
tokens trained and validation perplexity. Between points, log-ppl is linear in log-tokens (the usual
power-law shape of a loss curve), which is how a crossing is located and how the budget of one more branch
is predicted. The spec is shared/spec/parity.md §2-3; the choices are in docs/study.md ("Parity").

* target: an explicit perplexity, ``auto`` (the perplexity the slowest method reaches within the budget, so
  every method reaches it), or ``reference`` (the reference method, full-rank, at the reference budget);
* a method reaches the target if one of its points within ``cap`` tokens is at or below it (a point within
  the tolerance band above it counts too); otherwise it is *not reached*, reported with its best ppl;
* the parity model is the point closest to the target in log-ppl among those within ``tolerance``; when none
  is, the crossing is predicted for one more branch (``status = "predict"``), and a branch that still misses
  the band after that is kept but marked ``outside``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

TARGET_KINDS = ("auto", "reference")
PROTOCOLS = ("off", "wsd-branches", "full-schedules")


@dataclass(frozen=True)
class ParitySettings:
    """The study's ``parity`` section: how cooled models of several budgets are made and which one is chosen."""

    protocol: str = "off"  # off | wsd-branches (WSD runs + cooldown branches) | full-schedules (cosine runs)
    target: float | str = "auto"  # a perplexity | auto (slowest method within budget) | reference (full-rank)
    reference: str = "full_rank"  # the method of target: reference
    tolerance: float = 0.02  # a parity model is within ±tolerance of the target perplexity
    cap: float = 1.0  # budget cap as a multiple of the study's steps (wsd-branches: at most 1)
    branch_steps: tuple[int, ...] = ()  # wsd-branches: decay starts (default: the stable-phase checkpoints)
    cooldown_fraction: float = 0.2  # cooldown share of a cooled model's steps (the main runs' decay too)
    decay_shape: str = "1-sqrt"  # linear | cosine | 1-sqrt
    budgets: tuple[float, ...] = (0.5, 1.0)  # full-schedules: run lengths as multiples of steps (1.0 = main)
    extra_branch: bool = True  # train one more cooled model at the predicted crossing when none is within

    def __post_init__(self) -> None:
        from rankscope.errors import UserError

        if self.protocol is False:  # YAML 1.1 reads an unquoted `off` (also no/false) as the boolean False
            object.__setattr__(self, "protocol", "off")
        if self.protocol is True:
            raise UserError(f"parity.protocol is the boolean true (YAML reads an unquoted on/yes/true so); choose "
                            f"one of: {', '.join(PROTOCOLS)}")
        if self.protocol not in PROTOCOLS:
            raise UserError(f"parity.protocol={self.protocol!r} is not valid; choose one of: {', '.join(PROTOCOLS)}")
        if isinstance(self.target, str) and self.target not in TARGET_KINDS:
            raise UserError(f"parity.target={self.target!r} is not valid: give a perplexity (e.g. 400) or one of "
                            f"{', '.join(TARGET_KINDS)}")
        if not isinstance(self.target, str) and not float(self.target) > 1:
            raise UserError(f"parity.target={self.target} must be a perplexity > 1")
        if not 0 < self.tolerance < 1:
            raise UserError(f"parity.tolerance={self.tolerance} must be in (0, 1), e.g. 0.02 for ±2 %")
        if not 0 < self.cooldown_fraction < 1:
            raise UserError(f"parity.cooldown_fraction={self.cooldown_fraction} must be in (0, 1), e.g. 0.2")
        if self.cap <= 0 or (self.protocol == "wsd-branches" and self.cap > 1):
            raise UserError(f"parity.cap={self.cap}: must be > 0, and at most 1 for wsd-branches (every cooled "
                            f"model is a branch of the study's runs); use full-schedules for a larger cap")
        if self.decay_shape not in ("linear", "cosine", "1-sqrt"):
            raise UserError(f"parity.decay_shape={self.decay_shape!r}: choose linear, cosine or 1-sqrt")

    @property
    def enabled(self) -> bool:
        return self.protocol != "off"


@dataclass(frozen=True)
class Point:
    tokens: float
    ppl: float
    run: str = ""
    step: int = 0


@dataclass(frozen=True)
class Target:
    ppl: float
    how: str  # explicit | auto (slowest method: <name>) | reference (<method> at <tokens>)


@dataclass(frozen=True)
class ParityChoice:
    method: str
    status: str  # within | predict | outside | not_reached
    target: float
    run: str = ""  # the parity model (within / outside)
    ppl: float | None = None  # its achieved perplexity
    tokens: float | None = None  # its tokens
    tokens_to_target: float | None = None  # interpolated crossing (None when not reached)
    predicted_tokens: float | None = None  # status predict: budget of the branch to train next
    best_ppl: float | None = None  # best perplexity within the cap (always set)
    note: str = ""

    @property
    def reached(self) -> bool:
        return self.status != "not_reached"


def _sorted(points: Iterable[Point], cap: float | None = None) -> list[Point]:
    pts = sorted((p for p in points if p.ppl > 0 and p.tokens > 0 and math.isfinite(p.ppl)), key=lambda p: p.tokens)
    return [p for p in pts if cap is None or p.tokens <= cap * (1 + 1e-9)]


def interpolate_ppl(points: Sequence[Point], tokens: float) -> float | None:
    """ppl at ``tokens`` by log-ppl vs log-tokens interpolation between neighbours (None outside the range)."""
    pts = _sorted(points)
    for a, b in zip(pts, pts[1:]):
        if a.tokens <= tokens <= b.tokens:
            if b.tokens == a.tokens:
                return min(a.ppl, b.ppl)
            f = (math.log(tokens) - math.log(a.tokens)) / (math.log(b.tokens) - math.log(a.tokens))
            return math.exp(math.log(a.ppl) + f * (math.log(b.ppl) - math.log(a.ppl)))
    if pts and math.isclose(pts[-1].tokens, tokens, rel_tol=1e-9):
        return pts[-1].ppl
    return None


def crossing_tokens(points: Sequence[Point], target: float, cap: float | None = None) -> float | None:
    """First token count at which the curve reaches ``target`` (log-log interpolation), or None.

    A curve whose first point is already at or below the target crossed before it: the first point's tokens
    are returned (an upper bound; the report says so through the chosen point's tokens).
    """
    pts = _sorted(points, cap)
    if not pts:
        return None
    if pts[0].ppl <= target:
        return pts[0].tokens
    for a, b in zip(pts, pts[1:]):
        if b.ppl <= target < a.ppl:
            la, lb = math.log(a.ppl), math.log(b.ppl)
            f = (math.log(target) - la) / (lb - la)
            return math.exp(math.log(a.tokens) + f * (math.log(b.tokens) - math.log(a.tokens)))
    return None


def best_within(points: Sequence[Point], budget: float) -> Point | None:
    pts = _sorted(points, budget)
    return min(pts, key=lambda p: p.ppl) if pts else None


def resolve_target(spec: float | str, curves: dict[str, Sequence[Point]], budget: float,
                   reference: str = "full_rank") -> Target:
    """The target perplexity from an explicit value, ``auto`` or ``reference``."""
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        if spec <= 1:
            raise ValueError(f"an explicit parity target must be a perplexity > 1, got {spec}")
        return Target(float(spec), "explicit")
    if spec == "auto":
        best = {m: best_within(pts, budget) for m, pts in curves.items()}
        best = {m: p for m, p in best.items() if p is not None}
        if not best:
            raise ValueError(f"auto target: no method has a cooled model within the budget of {budget:g} tokens")
        slowest = max(best, key=lambda m: best[m].ppl)
        return Target(best[slowest].ppl, f"auto (slowest method within budget: {slowest})")
    if spec == "reference":
        if reference not in curves:
            raise ValueError(f"reference target: method {reference!r} is not in the study")
        ppl = interpolate_ppl(curves[reference], budget)
        if ppl is None:
            near = best_within(curves[reference], budget)
            if near is None:
                raise ValueError(f"reference target: {reference} has no cooled model within {budget:g} tokens")
            ppl = near.ppl
        return Target(ppl, f"reference ({reference} at {budget:g} tokens)")
    raise ValueError(f"parity target {spec!r} is not valid: give a perplexity, or one of {TARGET_KINDS}")


def within(ppl: float, target: float, tolerance: float) -> bool:
    return abs(ppl / target - 1.0) <= tolerance


def choose(method: str, points: Sequence[Point], target: float, tolerance: float = 0.02,
           cap: float | None = None, extra_done: bool = False) -> ParityChoice:
    """The parity model of one method (see module docstring); ``extra_done``: the predicted branch exists."""
    pts = _sorted(points, cap)
    if not pts:
        return ParityChoice(method, "not_reached", target, note="no cooled model")
    best = min(pts, key=lambda p: p.ppl)
    cross = crossing_tokens(pts, target)
    close = [p for p in pts if within(p.ppl, target, tolerance)]
    if close:
        pick = min(close, key=lambda p: (abs(math.log(p.ppl / target)), p.tokens))
        return ParityChoice(method, "within", target, pick.run, pick.ppl, pick.tokens, cross or pick.tokens,
                            best_ppl=best.ppl)
    if cross is None:
        return ParityChoice(method, "not_reached", target, best_ppl=best.ppl, tokens=best.tokens, run=best.run,
                            note=f"best {best.ppl:.4g} > target {target:.4g} within the cap")
    nearest = min(pts, key=lambda p: abs(math.log(p.ppl / target)))
    note = ""
    if pts[0].ppl <= target:  # crossed before the first cooled model: extend its first segment backwards
        back = _extrapolate_back(pts, target)
        cross, note = (back, "crossing extrapolated before the first cooled model") if back else (cross, note)
    if extra_done or cross is None or cross >= pts[0].tokens and pts[0].ppl <= target:
        note = "the extra branch missed the tolerance band" if extra_done else "reached before the first branch"
        return ParityChoice(method, "outside", target, nearest.run, nearest.ppl, nearest.tokens, cross,
                            best_ppl=best.ppl, note=note)
    return ParityChoice(method, "predict", target, nearest.run, nearest.ppl, nearest.tokens, cross, cross,
                        best_ppl=best.ppl, note=note)


def _extrapolate_back(pts: Sequence[Point], target: float) -> float | None:
    """Tokens where the log-log line through the first two points meets ``target`` (None if it does not fall)."""
    if len(pts) < 2 or not pts[1].ppl < pts[0].ppl or pts[1].tokens <= pts[0].tokens:
        return None
    a, b = pts[0], pts[1]
    slope = (math.log(b.ppl) - math.log(a.ppl)) / (math.log(b.tokens) - math.log(a.tokens))
    return math.exp(math.log(a.tokens) + (math.log(target) - math.log(a.ppl)) / slope)


def branch_step_for(tokens: float, tokens_per_step: int, cooldown_fraction: float) -> tuple[int, int]:
    """(branch step s, cooldown c) of a cooled model with about ``tokens`` tokens: s + c updates, c ≈ f·(s+c)."""
    total = max(2, round(tokens / tokens_per_step))
    cooldown = max(1, round(cooldown_fraction * total))
    return total - cooldown, cooldown
