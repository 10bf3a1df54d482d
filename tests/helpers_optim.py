"""An optimizer's state_dict round trip, shared by the GaLore/Fira and APOLLO resume tests."""

from __future__ import annotations

import io
from collections.abc import Callable

import torch
from torch import nn


def advance(params: list[nn.Parameter], opt, grads: list[list[torch.Tensor]]) -> None:
    """One optimizer step per entry of ``grads`` (one gradient per parameter)."""
    for step_grads in grads:
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g.clone()
        opt.step()


def resumed_copy(build: Callable[[], tuple[list[nn.Parameter], object]], params, opt):
    """A fresh ``build()`` loaded from ``params`` and ``opt`` through torch.save/torch.load (weights_only)."""
    buf = io.BytesIO()
    torch.save({"params": [p.detach() for p in params], "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    params_b, opt_b = build()
    with torch.no_grad():
        for p, t in zip(params_b, saved["params"], strict=True):
            p.copy_(t)
    opt_b.load_state_dict(saved["opt"])
    return params_b, opt_b
