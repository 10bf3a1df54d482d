"""Test-only helpers for the guide tests: a float64 smoke model of any method, a batch, a one-pass closure."""

from __future__ import annotations

import copy
import dataclasses

import torch

from rankscope.models.llama import lm_loss
from rankscope.training.loop import build_model


def float64_pair(cfg):
    """Two identical float64 copies (model, optimizer) of ``cfg``'s method on the smoke model."""
    method = cfg.build_method()
    model, _ = build_model(cfg, method)
    model = model.double()
    twin = copy.deepcopy(model)
    return (model, method.build_optimizer(model)), (twin, cfg.build_method().build_optimizer(twin)), method


def batch(cfg, seed: int = 0, rows: int = 2, length: int = 16):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.model_config().vocab_size, (rows, length + 1), generator=g)
    return ids[:, :-1], ids[:, 1:]


def micro_pass_for(model, ids, labels):
    """The loop's micro pass for one micro-batch: forward, loss (+ a guide's extra term), backward."""
    def micro_pass(extra=None):
        loss = lm_loss(model(ids), labels)
        total = loss if extra is None else loss + extra(ids, labels)
        total.backward()
        return loss.detach()

    return micro_pass


def with_guide(cfg, guide: str, **options):
    return dataclasses.replace(cfg, guide=guide, guide_options=options)
