"""Warnings a user needs before a run spends its budget: settings that are valid but probably not meant.

Each is one ``warning: ...`` paragraph on stderr (rank 0 only), said once per ``rankscope train`` process, and
never stops the run: training past one epoch of the data (validation then often stalls), and a method option
that defeats the method (a low-rank method whose rank makes it store at least as much as full-rank AdamW).
"""

from __future__ import annotations

import os
import sys
from dataclasses import fields

from rankscope.config import RunConfig


def warn(message: str) -> None:
    """Print ``warning: <message>`` to stderr on rank 0 (never Python's ``UserWarning`` with a module path)."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"warning: {message}", file=sys.stderr, flush=True)


def warn_before_training(cfg: RunConfig, batches) -> None:
    for message in (epochs_warning(cfg, batches), method_warning(cfg)):
        if message:
            warn(message)


def epochs_warning(cfg: RunConfig, batches) -> str:
    """How many passes over the training data the run makes, when it is more than one ("" otherwise).

    Streamed datasets have no known size and give "".
    """
    seqs = getattr(batches, "seqs", None)
    if seqs is None or not len(seqs):
        return ""
    n, t = len(seqs), cfg.train
    used = t.steps * batches.global_batch
    if used <= n:
        return ""
    one_epoch = max(n // batches.global_batch, 1)
    data = (", ".join(cfg.data.typed_paths.get("train_files") or cfg.data.train_files) if cfg.data.source == "files"
            else f"the {cfg.data.source} {cfg.data.train_split!r} split")
    return (f"{t.steps} updates x {batches.global_batch} sequences = {used} sequences of {cfg.data.seq_len} tokens "
            f"are {used / n:.1f} epochs of the training data ({n} sequences in {data}): every sequence is seen "
            f"about {used // n} times, so validation perplexity may stall or rise. One epoch is {one_epoch} "
            f"updates; use fewer --steps or more data if that is not what you want.")


def method_warning(cfg: RunConfig) -> str:
    """A low-rank method whose ``rank`` option leaves it no cheaper than full-rank AdamW ("" otherwise).

    Compared: parameters + optimizer state in elements, from each method's closed-form ``theory_counts``
    (methods.md §2.7), against the full-rank method on the same model.
    """
    from rankscope.methods.registry import get_method
    from rankscope.models.llama import target_shapes

    method_cfg = cfg.method_config()
    options = [f.name for f in fields(method_cfg) if f.name == "rank"]
    if not options:
        return ""
    model_cfg = cfg.model_config()
    cls, full = get_method(cfg.method), get_method("full_rank")
    mine, ref = cls.theory_counts(model_cfg, method_cfg), full.theory_counts(model_cfg, full.Config())
    total, ref_total = mine["params"] + mine["state"], ref["params"] + ref["state"]
    if total < ref_total:
        return ""
    rank = method_cfg.rank
    dims = [min(m, n) for _, m, n in target_shapes(model_cfg)]
    default = cls.Config.for_preset(cfg.model, False).rank
    below = _largest_saving_rank(cls, model_cfg, method_cfg, ref_total)
    clamp = (f" (at least min(m, n) = {max(dims)} of every matrix it applies to: nothing is low-rank)"
             if rank >= max(dims) else
             f" (at least min(m, n) of some matrices it applies to, the smallest {min(dims)})" if rank >= min(dims) else "")
    fix = f"ranks up to {below} store less" if below else "no rank stores less"
    return (f"method {cfg.method!r}: option rank={rank}{clamp} keeps {total / 1e6:.2f}M parameters + optimizer-state "
            f"elements, {total / ref_total:.2f}x full-rank AdamW's {ref_total / 1e6:.2f}M on model {cfg.model!r}, so "
            f"the method saves no memory; {fix} (the study default for {cfg.model!r} is --set rank={default}).")


def _largest_saving_rank(cls, model_cfg, method_cfg, ref_total: int) -> int:
    """The largest rank whose parameters + state stay below ``ref_total`` (0 if none); counts grow with rank."""
    from dataclasses import replace

    def cost(r: int) -> int:
        c = cls.theory_counts(model_cfg, replace(method_cfg, rank=r))
        return c["params"] + c["state"]

    lo, hi = 0, method_cfg.rank  # cost(hi) >= ref_total; find the last r with cost(r) < ref_total
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if cost(mid) < ref_total else (lo, mid)
    return lo
