"""Muon (Jordan 2024; Moonlight, arXiv 2502.16982): orthogonalised momentum for the block matrices.

A full-rank, non-Adam control (methods2.md "Muon"): every applied update of a block matrix has (nearly) all
singular values equal, the opposite extreme of a low-rank update. The implementation is
``torch.optim.Muon`` itself (PyTorch >= 2.9), not a rewrite:

* The 7 projections of every block go to ``torch.optim.Muon`` (momentum 0.95, Nesterov, 5 quintic
  Newton-Schulz steps); the extras (embedding, lm_head, RMSNorm gains) to ``torch.optim.AdamW`` with
  betas (0.9, 0.95), as in the published GaLore-setup comparison. Both sit behind one
  :class:`~rankscope.optim.composite.CompositeOptimizer`, so the loop still sees one optimizer.
* ``scaling="moonlight"`` (default) is torch's ``adjust_lr_fn="match_rms_adamw"``: lr·0.2·√max(m, n), which
  matches AdamW's update RMS so AdamW's lr and weight decay carry over (lr 1e-3 for both groups).
  ``scaling="jordan"`` is ``adjust_lr_fn="original"``: lr·√max(1, m/n); Jordan's recipe then wants a larger
  Muon LR (``muon_lr``, e.g. 0.02).

Notes on torch's version versus the equations of methods2.md (no deviation in effect): torch keeps the
momentum as an EMA, B ← μB + (1−μ)G, and uses (1−μ)G + μB for Nesterov; that is (1−μ) times Jordan's
B ← μB + G, G + μB, and Newton-Schulz normalises by the Frobenius norm first, so the update is identical.
The Newton-Schulz iteration runs in bf16 (torch's choice, as in Jordan's code) and its coefficients are
tuned for speed, so singular values of O land in roughly [0.7, 1.2] rather than exactly 1. Weight decay
is decoupled and uses the unscaled lr (θ ← θ(1 − lr·wd)) for both groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.optim import Optimizer

from rankscope.methods.base import Method, MethodConfig, make_adamw
from rankscope.methods.galore import target_linears
from rankscope.methods.registry import register
from rankscope.optim.composite import CompositeOptimizer

SCALINGS = {"moonlight": "match_rms_adamw", "jordan": "original"}


@register("muon")
class Muon(Method):
    supports_fsdp = False  # Newton-Schulz needs whole matrices

    @dataclass(frozen=True)
    class Config(MethodConfig):
        lr: float = 1e-3  # peak LR of the AdamW group, and of the Muon group unless muon_lr is set
        muon_lr: float | None = None  # peak LR of the Muon group (None: lr; Jordan scaling wants ~0.02)
        momentum: float = 0.95
        nesterov: bool = True
        ns_steps: int = 5  # quintic Newton-Schulz iterations
        scaling: str = "moonlight"  # moonlight (0.2·√max(m,n), AdamW lr carries over) | jordan (√max(1,m/n))
        beta2: float = 0.95  # AdamW group

        def __post_init__(self) -> None:
            if self.scaling not in SCALINGS:
                raise ValueError(f"scaling={self.scaling!r}; choose one of: {', '.join(SCALINGS)}")
            if self.ns_steps < 1 or not 0.0 <= self.momentum < 1.0:
                raise ValueError("ns_steps must be >= 1 and momentum in [0, 1)")

    # The published GaLore-setup comparison: lr 1e-3 for both groups at 60M-350M, wd 0 (methods2.md).
    Config.PRESET_DEFAULTS = {"1b": {"lr": 4e-4}}  # as full-rank at 1B [not paper-verified]

    def param_groups(self, model: nn.Module) -> list[dict]:
        c = self.config
        targets = [m.weight for _, m in target_linears(model) if m.weight.requires_grad]
        ids = {id(p) for p in targets}
        extras = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
        muon_lr = c.muon_lr if c.muon_lr is not None else c.lr
        groups = [{"params": targets, "lr": muon_lr, "base_lr": muon_lr, "muon": True}]
        if extras:
            groups.append({"params": extras, "lr": c.lr, "base_lr": c.lr})
        return groups

    def build_optimizer(self, model: nn.Module) -> Optimizer:
        c = self.config
        muon_group, *adam_groups = self.param_groups(model)
        muon_group.pop("muon")
        parts = [torch.optim.Muon([muon_group], lr=muon_group["lr"], weight_decay=c.weight_decay,
                                  momentum=c.momentum, nesterov=c.nesterov, ns_steps=c.ns_steps,
                                  adjust_lr_fn=SCALINGS[c.scaling])]
        if adam_groups:
            parts.append(make_adamw(adam_groups, c))
        return CompositeOptimizer(parts)  # type: ignore[return-value]

    @classmethod
    def theory_counts(cls, model_cfg, config: MethodConfig) -> dict[str, int]:
        """One momentum buffer per target element, two AdamW moments per extra element."""
        from rankscope.models.llama import dense_param_count, extra_param_count, target_shapes

        n = dense_param_count(model_cfg)
        state = sum(m * k for _, m, k in target_shapes(model_cfg)) + 2 * extra_param_count(model_cfg)
        return {"params": n, "trainable": n, "state": state, "buffers": 0}
