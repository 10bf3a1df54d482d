"""One optimizer made of several: Muon for the block matrices plus AdamW for the rest, behind one object.

The training loop expects a single optimizer: it sets ``group["lr"] = group["base_lr"] * factor`` on every
entry of ``param_groups``, calls ``step`` / ``zero_grad``, and saves ``state_dict()`` through the checkpoint
module, which wants torch's layout (``{"state": {index: {...}}, "param_groups": [...]}``). This wrapper
exposes the inner optimizers' group dicts themselves (so LR changes reach them), a merged read-only
``state`` view (memory accounting, method hooks), and a state dict in torch's layout with globally
numbered parameters; each group carries ``"_part"`` (which inner optimizer it belongs to) so
``load_state_dict`` can split it back. Tensors stay tensors: the round trip is bit-exact.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim import Optimizer

from rankscope.optim.closure import loss_of

_TUPLE_KEYS = ("betas", "ns_coefficients")  # JSON turns tuples into lists; restore them


class CompositeOptimizer:
    """Steps each inner optimizer in turn; looks like one ``torch.optim.Optimizer`` to the loop."""

    def __init__(self, parts: list[Optimizer]) -> None:
        if not parts:
            raise ValueError("CompositeOptimizer needs at least one optimizer")
        self.parts = parts
        seen: set[int] = set()
        for opt in parts:
            for g in opt.param_groups:
                for p in g["params"]:
                    if id(p) in seen:
                        raise ValueError("a parameter is in two optimizers of a CompositeOptimizer")
                    seen.add(id(p))

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for opt in self.parts for g in opt.param_groups]

    @property
    def state(self) -> dict[torch.Tensor, dict[str, Any]]:
        """Merged view of the inner states (the per-parameter dicts are the live ones)."""
        return {p: s for opt in self.parts for p, s in opt.state.items()}

    @torch.no_grad()
    def step(self, closure=None):
        loss = loss_of(closure)
        for opt in self.parts:
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.parts:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        state: dict[int, dict[str, Any]] = {}
        groups: list[dict[str, Any]] = []
        offset = 0
        for part, opt in enumerate(self.parts):
            sd = opt.state_dict()
            for idx, entry in sd["state"].items():
                state[idx + offset] = entry
            for g in sd["param_groups"]:
                groups.append({**g, "params": [i + offset for i in g["params"]], "_part": part})
            offset += sum(len(g["params"]) for g in sd["param_groups"])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        offset = 0
        for part, opt in enumerate(self.parts):
            groups = [dict(g) for g in sd["param_groups"] if g.get("_part") == part]
            n = sum(len(g["params"]) for g in opt.param_groups)
            if len(groups) != len(opt.param_groups) or sum(len(g["params"]) for g in groups) != n:
                raise ValueError(f"optimizer state does not match part {part} ({type(opt).__name__}): the "
                                 f"checkpoint was written by a different method or model")
            for g in groups:
                g.pop("_part")
                g["params"] = [i - offset for i in g["params"]]
                for key in _TUPLE_KEYS:
                    if isinstance(g.get(key), list):
                        g[key] = tuple(g[key])
            state = {i - offset: entry for i, entry in sd["state"].items() if offset <= int(i) < offset + n}
            opt.load_state_dict({"state": state, "param_groups": groups})
            offset += n

    def __repr__(self) -> str:
        return f"CompositeOptimizer({', '.join(type(o).__name__ for o in self.parts)})"
