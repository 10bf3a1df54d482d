"""Cost to the parity target per run: tokens, closed-form training FLOPs, wall-clock and memory.

* tokens: the interpolated crossing of the method's ppl(tokens) curve (rankscope/study/parity.py);
* FLOPs: ``rankscope.methods.flops.estimate`` (6·N_mm per token with the matmul weights a method really
  multiplies, plus per-update projection / refresh work), times the tokens and updates to target. A method
  without a closed-form rule there counts as dense AdamW, and the row says so (``flops_note``). A guide's
  extra passes are counted on the updates it acted on among those to the target (:func:`guided_updates`),
  not as its window's share of the whole run: a guide on the second half of training that reaches the
  target at 60 % of it paid for a sixth of those updates, not a half;
* wall-clock: training seconds of the parity model's run folder up to the crossing, summed from the logged
  throughput (Δtokens / tok_per_s per log window, so evaluation and checkpoint writes are excluded); a branch
  folder holds its parent's log up to the branch step, so its time includes the shared stable phase;
* memory: weights + gradients + optimizer state in bytes from ``memory.json``, and the measured peak
  (``peak_mib`` of the train log: peak RSS on CPU, CUDA peak allocated on GPUs) when the log has it.

Across seeds, :func:`seed_interval` gives the mean and a t-interval (95 %) of any of these numbers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MEMORY_QUANTITIES = ("params", "grads", "optimizer_state")


def flops_per_token_and_update(cfg) -> tuple[float, float, str]:
    """(FLOPs per training token, extra FLOPs per update, note) of a RunConfig's method and guide."""
    from rankscope.guides.cost import run_estimate

    est = run_estimate(cfg)  # a guide's extra passes counted
    return est.per_token, est.per_update, est.note


def _overlap(steps: range, lo: float, hi: float) -> float:
    """How much of [lo, hi) (in updates, fractional) the updates ``steps`` cover, update k being [k, k + 1)."""
    return max(0.0, min(float(steps.stop), hi) - max(float(steps.start), lo)) if steps else 0.0


def guided_updates(cfg, run_dir: Path, until: float) -> tuple[float, str]:
    """(how many of the first ``until`` updates of the trajectory that made ``run_dir`` its guide acted on, a note).

    The guide acts on the updates its window covers (fractions of ``train.steps``, rankscope/guides/base.py). A
    cooldown branch (rankscope/training/branch.py) continued its parent from the copied checkpoint: updates before
    it are the parent's, under the parent's window, the rest under the branch's own. Updates past the model's
    last one (a crossing extrapolated beyond it) count as guided if its last update was."""
    from rankscope.guides.options import build_guide
    from rankscope.training.branch import branch_info
    from rankscope.training.checkpoint import read_run_config

    guide = build_guide(cfg)
    if guide is None:
        return 0.0, ""
    total, note = cfg.train.steps, ""
    past = max(0.0, until - total) if (total - 1) in guide.steps else 0.0
    segments = [(0.0, guide.steps)]
    info = branch_info(run_dir) or {}
    if info.get("parent_dir") and info.get("copied_checkpoint") is not None:
        start = float(info["copied_checkpoint"])
        try:
            parent = build_guide(read_run_config(info["parent_dir"]))
        except Exception as exc:  # noqa: BLE001 - a moved parent: its window is taken as the branch's, and said
            parent, note = guide, f" (parent {info['parent_dir']} unreadable, {type(exc).__name__}: its window " \
                                  "taken as the branch's)"
        segments = [(0.0, parent.steps if parent is not None else range(0)), (start, guide.steps)]
    bounds = [lo for lo, _ in segments[1:]] + [math.inf]
    got = past + sum(_overlap(steps, lo, min(hi, until, float(total)))
                     for (lo, steps), hi in zip(segments, bounds, strict=True))
    return got, note


def flops_to_target(cfg, run_dir: Path, updates: float, tokens_per_step: int) -> tuple[float, str]:
    """FLOPs of the first ``updates`` updates of the model's trajectory: the method's count per token and per
    update, plus the guide's extra work on the updates it acted on; and a note saying how many those were."""
    from rankscope.guides.cost import guide_extra, method_estimate

    est = method_estimate(cfg)
    flops = updates * (tokens_per_step * est.per_token + est.per_update)
    if not cfg.guide:
        return flops, ""
    per_token, per_update = guide_extra(cfg)
    guided, note = guided_updates(cfg, run_dir, updates)
    return (flops + guided * (tokens_per_step * per_token + per_update),
            f"guide {cfg.guide} acted on {guided:.4g} of the {updates:.4g} updates to the target{note}")


def training_seconds(records: Sequence[dict[str, Any]], until_tokens: float | None = None) -> float | None:
    """Seconds of training up to ``until_tokens`` (all when None) from the train log's throughput."""
    total, prev = 0.0, 0.0
    seen = False
    for rec in sorted((r for r in records if r.get("kind") == "train" and r.get("tok_per_s")),
                      key=lambda r: r.get("step", 0)):
        tokens = float(rec.get("tokens", 0))
        if tokens <= prev:
            continue
        end = tokens if until_tokens is None else min(tokens, until_tokens)
        if end > prev:
            total += (end - prev) / float(rec["tok_per_s"])
            seen = True
        prev = tokens
        if until_tokens is not None and tokens >= until_tokens:
            break
    return total if seen else None


def memory_bytes(run_dir: Path) -> int | None:
    """Weights + gradients + optimizer state (bytes) measured after the first step (``memory.json``)."""
    try:
        rows = json.loads((Path(run_dir) / "memory.json").read_text())["rows"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    got = [r.get("bytes") for r in rows if r.get("quantity") in MEMORY_QUANTITIES]
    return int(sum(b for b in got if b)) if got else None


def peak_mib(records: Sequence[dict[str, Any]]) -> float | None:
    peaks = [float(r["peak_mib"]) for r in records if r.get("peak_mib") is not None]
    return max(peaks) if peaks else None


def cost_row(cfg, run_dir: Path, tokens_to_target: float | None, tokens_per_step: int,
             records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One run's cost to the target (None entries when the target was not reached)."""
    try:
        per_token, per_update, note = flops_per_token_and_update(cfg)
    except Exception as exc:  # noqa: BLE001 - a method the FLOPs module cannot build: say so, keep the rest
        per_token, per_update, note = math.nan, 0.0, f"no FLOPs estimate: {exc}"
    row: dict[str, Any] = {"tokens_to_target": tokens_to_target, "flops_per_token": per_token,
                           "flops_note": note, "memory_bytes": memory_bytes(run_dir), "peak_mib": peak_mib(records)}
    if tokens_to_target is None:
        row.update(flops_to_target=None, seconds_to_target=None, steps_to_target=None)
        return row
    updates = tokens_to_target / tokens_per_step
    flops = tokens_to_target * per_token + updates * per_update  # the run's average (a method without a rule)
    if math.isfinite(per_token):
        flops, counted = flops_to_target(cfg, run_dir, updates, tokens_per_step)
        row["flops_note"] = "; ".join(filter(None, [note, counted]))
    row.update(steps_to_target=updates, flops_to_target=flops,
               seconds_to_target=training_seconds(records, tokens_to_target))
    return row


def seed_interval(values: Sequence[float | None], level: float = 0.95) -> dict[str, float | None]:
    """Mean and a Student-t interval across seeds (lo = hi = mean for one seed; None when no value)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    n = len(xs)
    mean = sum(xs) / n
    if n == 1:
        return {"mean": mean, "lo": mean, "hi": mean, "n": 1}
    from scipy import stats

    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": n}
