"""Cost to the parity target of a guide study's arms, as a ratio to their unguided runs (spec guides.md §4, Cost).

The parity stage writes, per main run, the tokens and FLOPs it needed to reach the study's parity target
perplexity (``results/parity.json`` ``runs``: ``flops_to_target`` counts the guide's extra passes,
rankscope/study/parity_cost.py). A guided arm's cost is read against its paired unguided run (same init and
data seed): ratio = cost(arm) / cost(base) per seed, its mean and a 95 % t interval over seeds (none with
one seed). 1 = the guide costs nothing to the target; 1.5 = half as much again. An arm that never reaches the
target within the parity tolerance has no ratio ("not reached"); neither has a seed whose unguided run did
not reach it ("unguided not reached").

Why the cost *to the target* and not the extra FLOPs per update: a guide that makes each update dearer may
need fewer updates to the same perplexity (or more); the FLOPs to the target count both, which is what a
researcher pays for the same model quality. The verdict uses it when parity measured it (guide_closure.verdict).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rankscope.report.seedstats import t_interval

NOT_REACHED = "not reached"
BASE_NOT_REACHED = "unguided not reached"
NO_PARITY = "no parity cost"


@dataclass
class CostRatio:
    """Cost to the parity target of an arm over its unguided run's, per paired seed and over seeds."""

    key: str  # "flops_to_target", "tokens_to_target" or "peak_mib" (a parity.json cost row's field)
    per_seed: list[float] = field(default_factory=list)
    mean: float = math.nan
    lo: float = math.nan
    hi: float = math.nan
    not_reached: int = 0  # seeds whose arm never reached the target (its base did or did not)
    base_not_reached: int = 0  # seeds whose arm reached it but whose unguided run did not
    pairs: int = 0  # paired seeds with both rows in parity.json

    @property
    def n(self) -> int:
        return len(self.per_seed)

    @property
    def measured(self) -> bool:
        return self.n > 0

    @property
    def never_reached(self) -> bool:
        """Every paired seed's arm missed the target (within the tolerance)."""
        return self.pairs > 0 and self.not_reached == self.pairs

    def cell(self) -> str:
        """The table cell: "1.48× [1.31, 1.65]", "1.48× (one seed)", "not reached", or "–"."""
        if not self.measured:
            if self.never_reached:
                return NOT_REACHED
            return BASE_NOT_REACHED if self.base_not_reached else "–"
        text = f"{self.mean:.2f}×" + (f" [{self.lo:.2f}, {self.hi:.2f}]" if self.n >= 2 else " (one seed)")
        missed = [f"{k} of {self.pairs} seeds {w}" for k, w in ((self.not_reached, NOT_REACHED),
                                                                  (self.base_not_reached, BASE_NOT_REACHED)) if k]
        return text + (f"; {'; '.join(missed)}" if missed else "")


def parity_rows(parity: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """main run -> its row of parity.json (empty without a parity stage)."""
    rows = parity.get("runs") if isinstance(parity, Mapping) else None
    return {str(r["main_run"]): r for r in rows or [] if isinstance(r, Mapping) and r.get("main_run")}


def _value(row: Mapping[str, Any], key: str) -> float | None:
    """The row's positive finite ``key`` when the run reached the target; None otherwise (a row the parity stage
    did not write, e.g. a hand-edited file, counts as not measured rather than stopping the report)."""
    v = row.get(key)
    if not row.get("reached", v is not None) or v is None:
        return None
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def cost_ratio(rows: Mapping[str, Mapping[str, Any]], pairs: Sequence[tuple[str, str]],
               key: str = "flops_to_target") -> CostRatio:
    """Ratio of ``key`` (arm / base) over ``pairs`` of (base run, arm run), one pair per seed."""
    out = CostRatio(key)
    for base, arm in pairs:
        if base not in rows or arm not in rows:
            continue
        out.pairs += 1
        a, b = _value(rows[arm], key), _value(rows[base], key)
        if a is None:
            out.not_reached += 1
        elif b is None:
            out.base_not_reached += 1
        else:
            out.per_seed.append(a / b)
    if out.per_seed:
        mean, lo, hi = t_interval(np.asarray(out.per_seed, dtype=float))
        out.mean, out.lo, out.hi = float(mean), float(lo), float(hi)
    return out


KEY_LABELS = {"flops_to_target": "FLOPs to target", "tokens_to_target": "tokens to target",
              "peak_mib": "peak memory of the parity model"}


def reason(label: str, c: CostRatio) -> str:
    """One clause of the reasons line, e.g. "cost-matched control / unguided: FLOPs to target 1.49× (one seed)"."""
    return f"{label}: {KEY_LABELS.get(c.key, c.key)} {c.cell()}"
