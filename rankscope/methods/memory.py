"""Honest memory accounting: measured element/byte counts next to the closed form (methods.md §2.7, U4).

``memory_table`` counts what actually exists — parameters, trainable parameters, gradient elements (one
per trainable element), optimizer-state tensors and persistent buffers (SLTrain's index) — and sets each
beside ``method_cls.theory_counts``. Optimizer state is the sum over the live ``optimizer.state`` tensors
except the per-parameter ``step`` counters (bookkeeping, not in the theory), so call it after one update
(or after initialising the state); before that the state row is reported as missing rather than 0.
Peak memory (activations, SVD workspace) is a profiler's job, not this table's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

_STATE_SKIP = ("step",)


def _count(tensors) -> tuple[int, int]:
    tensors = list(tensors)
    return sum(t.numel() for t in tensors), sum(t.numel() * t.element_size() for t in tensors)


def _persistent_buffers(model: nn.Module) -> list[torch.Tensor]:
    params = {id(p) for p in model.parameters()}
    state = model.state_dict(keep_vars=True)
    return [t for t in state.values() if id(t) not in params]


def memory_table(model: nn.Module, optimizer: Optimizer | None, method_cls: Any, method_config: Any,
                 model_cfg: Any) -> list[dict[str, Any]]:
    """Rows ``{quantity, elements, bytes, theory, rel_diff, note}`` for one model + optimizer.

    ``rel_diff`` = (measured − theory) / theory (None when there is no theory or no measurement).
    """
    theory = method_cls.theory_counts(model_cfg, method_config)
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    state_tensors: list[torch.Tensor] = []
    if optimizer is not None:
        for st in optimizer.state.values():
            state_tensors += [v for k, v in st.items()
                              if isinstance(v, torch.Tensor) and k not in _STATE_SKIP]
    have_state = bool(state_tensors)

    measured = {
        "params": _count(params),
        "trainable": _count(trainable),
        "grads": (sum(p.numel() for p in trainable),
                  sum(p.numel() * p.element_size() for p in trainable)),
        "optimizer_state": _count(state_tensors) if have_state else (None, None),
        "buffers": _count(_persistent_buffers(model)),
    }
    theory_key = {"params": "params", "trainable": "trainable", "grads": "trainable",
                  "optimizer_state": "state", "buffers": "buffers"}
    rows = []
    for quantity, (elements, nbytes) in measured.items():
        t = theory.get(theory_key[quantity])
        rel = None if elements is None or t is None or t == 0 else (elements - t) / t
        if elements is not None and t == 0:
            rel = 0.0 if elements == 0 else float("inf")
        missing = quantity == "optimizer_state" and not have_state
        note = "no optimizer state yet: run one step first" if missing else ""
        rows.append({"quantity": quantity, "elements": elements, "bytes": nbytes, "theory": t,
                     "rel_diff": rel, "note": note})
    return rows


def format_memory_table(rows: list[dict[str, Any]]) -> str:
    """Plain-text table (elements in millions, bytes in MiB) for logs and the CLI."""
    header = f"{'quantity':<16}{'measured (M)':>14}{'theory (M)':>12}{'rel diff':>10}{'MiB':>10}  note"
    lines = [header, "-" * len(header)]
    for r in rows:
        el = "-" if r["elements"] is None else f"{r['elements'] / 1e6:.3f}"
        th = "-" if r["theory"] is None else f"{r['theory'] / 1e6:.3f}"
        rel = "-" if r["rel_diff"] is None else f"{100 * r['rel_diff']:+.2f}%"
        mib = "-" if r["bytes"] is None else f"{r['bytes'] / 2**20:.1f}"
        lines.append(f"{r['quantity']:<16}{el:>14}{th:>12}{rel:>10}{mib:>10}  {r['note']}")
    return "\n".join(lines)


def memory_summary(rows: list[dict]) -> dict:
    """The run-level figures the report's runs table shows, from the per-quantity memory rows."""
    by = {r.get("quantity"): r for r in rows}

    def get(quantity: str, field: str):
        return by.get(quantity, {}).get(field)

    return {"params": get("params", "elements"), "trainable": get("trainable", "elements"),
            "state_elements": get("optimizer_state", "elements"), "state_bytes": get("optimizer_state", "bytes"),
            "theory_state_elements": get("optimizer_state", "theory")}
