"""rwp and msam: their updates against hand-written references (float64), and rwp's noise as a function of
(data seed, update) alone with the row-scaled variance the spec asks for."""

from __future__ import annotations

import pytest
import torch
from helpers_guides import batch, float64_pair, micro_pass_for, with_guide

from rankscope.guides.options import build_guide
from rankscope.guides.rwp import noise_seed, rwp_noise
from rankscope.models.llama import lm_loss


def test_rwp_noise_has_row_scaled_variance_and_is_a_function_of_seed_and_step():
    torch.manual_seed(0)
    w = torch.randn(8, 40000, dtype=torch.float64) * torch.arange(1, 9, dtype=torch.float64)[:, None]
    v = torch.randn(40000, dtype=torch.float64)
    eps_w, eps_v = rwp_noise([w, v], sigma=0.1, seed=noise_seed(3, 7))
    expected = 0.1 * w.norm(dim=1) / 40000**0.5
    torch.testing.assert_close(eps_w.std(dim=1), expected, rtol=0.03, atol=0)  # 40000 draws: ~0.4 % std error
    torch.testing.assert_close(eps_v.std(), 0.1 * v.norm() / 40000**0.5, rtol=0.03, atol=0)
    again = rwp_noise([w, v], sigma=0.1, seed=noise_seed(3, 7))
    assert torch.equal(again[0], eps_w) and torch.equal(again[1], eps_v)
    assert not torch.equal(rwp_noise([w], 0.1, noise_seed(3, 8))[0], eps_w)  # next update: new noise
    assert not torch.equal(rwp_noise([w], 0.1, noise_seed(4, 7))[0], eps_w)  # another data seed: new noise


def reference_rwp_noise(params, sigma, seed):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for p in params:
        rows = p.detach().reshape(p.shape[0], -1) if p.ndim > 1 else p.detach()[None]
        z = torch.randn(rows.shape, generator=gen, dtype=torch.float64)
        out.append((z * sigma * rows.norm(dim=1, keepdim=True) / rows.shape[1] ** 0.5).reshape(p.shape))
    return out


@pytest.mark.parametrize("method", ["galore", "sltrain"])
@pytest.mark.parametrize("mix", [1.0, 0.25])
def test_rwp_update_equals_hand_written_reference(make_smoke_config, one_thread, method, mix):
    cfg = with_guide(make_smoke_config(method=method, steps=4, data_seed=5), "rwp", sigma=0.2, mix=mix)
    (model, opt), (ref, ref_opt), _ = float64_pair(cfg)
    guide = build_guide(cfg)
    guide.setup(model, opt, info=None)
    for step in range(2):
        ids, labels = batch(cfg, seed=step)
        guide.accumulate(step, micro_pass_for(model, ids, labels))
        opt.step()
        opt.zero_grad(set_to_none=True)
        params = [p for p in ref.parameters() if p.requires_grad]
        clean = torch.autograd.grad(lm_loss(ref(ids), labels), params)
        theta = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, e in zip(params, reference_rwp_noise(params, 0.2, noise_seed(5, step))):
                p.add_(e)
        noisy = torch.autograd.grad(lm_loss(ref(ids), labels), params)
        with torch.no_grad():
            for p, th, g0, g1 in zip(params, theta, clean, noisy):
                p.copy_(th)
                p.grad = mix * g1 + (1 - mix) * g0
        ref_opt.step()
        ref_opt.zero_grad(set_to_none=True)
    for (name, a), b in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=f"{method}: {name}")


@pytest.mark.parametrize("method", ["full_rank", "cola"])
def test_msam_update_equals_hand_written_reference(make_smoke_config, one_thread, method):
    cfg = with_guide(make_smoke_config(method=method, steps=4), "msam", rho=0.3)
    (model, opt), (ref, ref_opt), _ = float64_pair(cfg)
    guide = build_guide(cfg)
    guide.setup(model, opt, info=None)
    beta1 = cfg.method_config().beta1
    params = [p for p in ref.parameters() if p.requires_grad]
    m = [torch.zeros_like(p) for p in params]
    for step in range(3):  # the first update is plain (m = 0), the next two ascend against m
        ids, labels = batch(cfg, seed=step)
        guide.accumulate(step, micro_pass_for(model, ids, labels))
        opt.step()
        opt.zero_grad(set_to_none=True)
        norm = torch.sqrt(sum((mi * mi).sum() for mi in m))
        theta = [p.detach().clone() for p in params]
        if norm > 0:
            with torch.no_grad():
                for p, mi in zip(params, m):
                    p.sub_(0.3 * mi / norm)
        g = torch.autograd.grad(lm_loss(ref(ids), labels), params)
        with torch.no_grad():
            for p, th, gi, mi in zip(params, theta, g, m):
                p.copy_(th)
                p.grad = gi.clone()
                mi.mul_(beta1).add_((1 - beta1) * gi)
        ref_opt.step()
        ref_opt.zero_grad(set_to_none=True)
    for (name, a), b in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=f"{method}: {name}")
