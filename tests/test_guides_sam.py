"""SAM: one guided update equals a hand-written two-pass reference (perturb, re-grad, restore, step), float64."""

from __future__ import annotations

import pytest
import torch
from helpers_guides import batch, float64_pair, micro_pass_for, with_guide

from rankscope.guides.options import build_guide
from rankscope.models.llama import lm_loss


def reference_update(model, optimizer, ids, labels, rho, v=None, t=0, beta2=0.999, eps=1e-8):
    """SAM written out by hand: g at θ; ε = ρ·Pg/‖Pg‖; g' at θ+ε; θ restored; optimizer step with g'."""
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.autograd.grad(lm_loss(model(ids), labels), params)
    if v is not None:  # Adam-preconditioned: v_t = β2·v + (1-β2)·g², v̂ = v_t/(1-β2^t)
        for vi, gi in zip(v, g):
            vi.mul_(beta2).add_((1 - beta2) * gi * gi)
        d = [gi / ((vi / (1 - beta2**t)).sqrt() + eps) for gi, vi in zip(g, v)]
    else:
        d = list(g)
    norm = torch.sqrt(sum((di * di).sum() for di in d))
    theta = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, di in zip(params, d):
            p.add_(rho * di / norm)
    g2 = torch.autograd.grad(lm_loss(model(ids), labels), params)
    with torch.no_grad():
        for p, th, gi in zip(params, theta, g2):
            p.copy_(th)
            p.grad = gi.clone()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("method", ["galore", "sltrain", "relora", "cola", "full_rank"])
@pytest.mark.parametrize("precondition", ["none", "adam"])
def test_sam_update_equals_hand_written_two_pass(make_smoke_config, one_thread, method, precondition):
    cfg = with_guide(make_smoke_config(method=method, steps=4), "sam", rho=0.3, precondition=precondition)
    (model, opt), (ref, ref_opt), _ = float64_pair(cfg)
    guide = build_guide(cfg)
    guide.setup(model, opt, info=None)
    m_cfg = cfg.method_config()
    v = [torch.zeros_like(p) for p in ref.parameters() if p.requires_grad] if precondition == "adam" else None
    for step in range(2):  # two updates: the Adam moment is then more than g² of one step
        ids, labels = batch(cfg, seed=step)
        torch.manual_seed(step)  # ReLoRA's adapter dropout: the same masks in both runs
        loss = guide.accumulate(step, micro_pass_for(model, ids, labels))
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.manual_seed(step)
        reference_update(ref, ref_opt, ids, labels, 0.3, v, step + 1, m_cfg.beta2, m_cfg.adam_eps)
        assert torch.isfinite(loss)
    for (name, a), b in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=f"{method}: {name}")
    # and the guided update is not the plain one (the test could fail)
    (plain, plain_opt), _, _ = float64_pair(cfg)
    for step in range(2):
        ids, labels = batch(cfg, seed=step)
        micro_pass_for(plain, ids, labels)()
        plain_opt.step()
        plain_opt.zero_grad(set_to_none=True)
    moved = max(float((a - b).abs().max().detach()) for a, b in zip(model.parameters(), plain.parameters()))
    assert moved > 1e-8


def test_sam_restores_weights_exactly(make_smoke_config, one_thread):
    """After the second pass the weights are bit-identical to before it: only .grad changed."""
    cfg = with_guide(make_smoke_config(method="full_rank"), "sam", rho=0.5)
    (model, opt), _, _ = float64_pair(cfg)
    guide = build_guide(cfg)
    guide.setup(model, opt, info=None)
    before = [p.detach().clone() for p in model.parameters()]
    guide.accumulate(0, micro_pass_for(model, *batch(cfg)))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
