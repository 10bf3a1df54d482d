"""Parameter-space helpers shared by the perturbing guides (sam, rwp, msam).

Perturbations are undone by copying the saved weights back, not by subtracting ε: θ + ε − ε is not θ in
floating point, and the guided update must start from exactly the weights the optimizer holds.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def snapshot(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


@torch.no_grad()
def restore(params: list[torch.Tensor], saved: list[torch.Tensor]) -> None:
    for p, s in zip(params, saved):
        p.copy_(s)


@torch.no_grad()
def add_(params: list[torch.Tensor], deltas: list[torch.Tensor | None]) -> None:
    for p, d in zip(params, deltas):
        if d is not None:
            p.add_(d.to(p.dtype))


def grads(params: list[torch.Tensor]) -> list[torch.Tensor | None]:
    return [p.grad for p in params]


def zero_grads(params: list[torch.Tensor]) -> None:
    for p in params:
        p.grad = None


def global_norm(tensors: list[torch.Tensor | None]) -> torch.Tensor:
    """‖(t_1, ..., t_k)‖₂ over every entry, in float64 (the SAM normaliser)."""
    parts = [t.detach().double().square().sum() for t in tensors if t is not None]
    return torch.stack(parts).sum().sqrt() if parts else torch.zeros((), dtype=torch.float64)


def scaled(tensors: list[torch.Tensor | None], scale: torch.Tensor) -> list[torch.Tensor | None]:
    """Each tensor times a float64 scalar, in the tensor's dtype."""
    return [None if t is None else t * scale.to(t.dtype) for t in tensors]
