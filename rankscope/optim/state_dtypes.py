"""Load optimizer state without torch's dtype policy for the entries that must keep their own dtype.

``torch.optim.Optimizer.load_state_dict`` casts every floating-point state tensor except ``step`` to its
parameter's dtype and device. Counters (``total_step``), running scalars (Stable-SPAM's EMAs) and index
lists (SPAM's support) must not follow a bf16 parameter, or a resumed bf16-pure run would count in bf16 and
differ from the uninterrupted one. :func:`load_keeping` takes those entries out, lets torch load the rest,
then puts them back with their saved dtype, on the CPU or the parameter's device as the optimizer keeps them.
"""

from __future__ import annotations

from typing import Any

from torch.optim import Optimizer


def load_keeping(opt: Optimizer, load, state_dict: dict[str, Any], keys: dict[str, str]) -> None:
    """``load(state_dict)`` (the parent's load_state_dict) with ``keys`` kept: name -> "cpu" | "param" |
    "step" (the parameter's device for CUDA parameters, else the CPU: where a fused kernel wants it)."""
    kept = {idx: {k: entry.pop(k) for k in keys if k in entry} for idx, entry in state_dict["state"].items()}
    try:
        load(state_dict)
    finally:
        for idx, entries in kept.items():
            state_dict["state"][idx].update(entries)  # the caller's dict is left as it was
    params = [p for g in opt.param_groups for p in g["params"]]
    for idx, entries in kept.items():
        p = params[int(idx)]
        for k, v in entries.items():
            on_param = keys[k] == "param" or (keys[k] == "step" and p.is_cuda)
            opt.state[p][k] = v.to(device=p.device if on_param else "cpu")
