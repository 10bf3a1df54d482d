"""LoRA adapters for the fine-tuning probe: ``y = f(x) + (alpha / r) · B A x`` beside any projection.

The wrapped module can be any method's layer (dense, CoLA factors, SLTrain sparse + low-rank...): the adapter
only needs its input and output widths, which come from the model config, so one adapter serves every
method. ``A`` is seeded Gaussian, ``B`` starts at zero, so the adapted model equals the checkpoint at step 0.
"""

from __future__ import annotations

import torch
from torch import nn


class LoRA(nn.Module):
    def __init__(self, base: nn.Module, d_in: int, d_out: int, rank: int, alpha: float,
                 generator: torch.Generator) -> None:
        super().__init__()
        self.base, self.scale = base, alpha / rank
        self.lora_a = nn.Parameter(torch.randn(rank, d_in, generator=generator) / rank**0.5)
        self.lora_b = nn.Parameter(torch.zeros(d_out, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * (x @ self.lora_a.to(x.dtype).T) @ self.lora_b.to(x.dtype).T


def add_lora(model: nn.Module, rank: int, alpha: float, seed: int) -> list[nn.Parameter]:
    """Freeze ``model`` and put an adapter on each of the 7 projections of every block; returns its params."""
    from rankscope.models.llama import target_shapes

    for p in model.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    params: list[nn.Parameter] = []
    for name, d_out, d_in in target_shapes(model.config):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        adapter = LoRA(getattr(parent, child), d_in, d_out, rank, alpha, gen).to(device)
        setattr(parent, child, adapter)
        params += [adapter.lora_a, adapter.lora_b]
    return params
