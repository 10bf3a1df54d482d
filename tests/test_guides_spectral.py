"""spectral: its α is the Hill estimate of a known Pareto tail, its multipliers follow α/α* within the range,
and its decay after a step is exactly W·(1 − lr·wd·c); CoLA (no dense W) is refused."""

from __future__ import annotations

import math

import pytest
import torch
from helpers_guides import batch, micro_pass_for, with_guide

from rankscope.diagnostics.spectra import power_law_alpha, singular_values
from rankscope.errors import UserError
from rankscope.guides.options import build_guide
from rankscope.guides.spectral import matrix_alpha, multipliers
from rankscope.training.loop import build_model


def pareto_matrix(alpha: float, n: int, seed: int) -> torch.Tensor:
    """W = U·diag(√λ)·Vᵀ with eigenvalues λ of WᵀW drawn from a Pareto law, density ∝ λ^(−α), λ ≥ 1."""
    g = torch.Generator().manual_seed(seed)
    lam = torch.rand(n, generator=g, dtype=torch.float64).pow(-1.0 / (alpha - 1.0))
    u, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return u @ torch.diag(lam.sqrt()) @ v.mT, lam


@pytest.mark.parametrize("alpha,seed", [(2.5, 0), (3.0, 1), (4.0, 2)])
def test_alpha_is_the_hill_estimate_of_a_known_pareto_tail(alpha, seed):
    w, lam = pareto_matrix(alpha, 500, seed)
    got = matrix_alpha(w)
    xmin = power_law_alpha(singular_values(w))["alpha_xmin"]
    tail = lam[lam >= xmin * (1 - 1e-9)]
    hill = 1.0 + tail.numel() / float(torch.log(tail / xmin).sum())  # direct Hill / MLE at the fitted xmin
    assert got == pytest.approx(hill, rel=1e-6)
    assert abs(got - alpha) < 0.25 * alpha  # and near the law's exponent (a few hundred tail values)


def test_multipliers_follow_alpha_ratio_within_range():
    assert multipliers([1.0, 2.0, 4.0, 10.0, math.nan], [2.0] * 5, 0.5, 2.0) == [0.5, 1.0, 2.0, 2.0, 1.0]
    assert multipliers([3.0], [4.0], 0.5, 2.0) == [0.75]  # heavier tail than the target: less decay


def test_decay_after_a_step_is_w_times_one_minus_lr_wd_c(make_smoke_config, one_thread):
    cfg = with_guide(make_smoke_config(method="sltrain", steps=4), "spectral", target_alpha=2.0, weight_decay=0.5,
                     range="0.25:4")
    method = cfg.build_method()
    model, _ = build_model(cfg, method)
    model.double()
    opt = method.build_optimizer(model)
    for group in opt.param_groups:
        group["lr"] = 0.01
    guide = build_guide(cfg)
    guide.check(method)
    guide.setup(model, opt, info=None)
    guide.accumulate(0, micro_pass_for(model, *batch(cfg)))
    expected_c = multipliers([matrix_alpha(layer.dense_weight()) for layer in guide.layers], [2.0] * len(guide.layers),
                             0.25, 4.0)
    assert guide.c.tolist() == expected_c and any(c != 1.0 for c in expected_c)
    before = [[p.detach().clone() for p in ts] for ts in guide.tensors]
    guide.after_step(1, opt)
    for c, ts, old in zip(expected_c, guide.tensors, before):
        for p, q in zip(ts, old):
            torch.testing.assert_close(p.detach(), q * (1 - 0.01 * 0.5 * c), rtol=1e-14, atol=0)


def test_cola_is_refused(make_smoke_config):
    cfg = with_guide(make_smoke_config(method="cola"), "spectral")
    with pytest.raises(UserError, match="no dense matrix"):
        build_guide(cfg).check(cfg.build_method())


def test_target_is_the_reference_runs_alpha_per_matrix(make_smoke_config, one_thread, tmp_path):
    """With a full-rank reference (and no target_alpha) α*_i is the same matrix's α in the reference's
    checkpoint at the step or the nearest earlier one."""
    from rankscope.training import checkpoint as ckpt
    from rankscope.training.loop import train

    ref_cfg = make_smoke_config("fr", steps=2, save_every=2)
    train(ref_cfg, progress=False)
    cfg = with_guide(make_smoke_config(method="galore", steps=6), "spectral", reference=str(ref_cfg.run_dir),
                     every=1)
    method = cfg.build_method()
    model, _ = build_model(cfg, method)
    guide = build_guide(cfg)
    guide.check(method)
    guide.setup(model, method.build_optimizer(model), info=None)
    guide.accumulate(3, micro_pass_for(model, *batch(cfg)))  # step 3: the reference's checkpoint 2
    ref, _ = ckpt.load_model(ref_cfg.run_dir, 2)
    modules = dict(ref.named_modules())
    targets = [matrix_alpha(modules[n].weight) for n in guide.names]
    assert guide.c.tolist() == multipliers(guide.alphas, targets, 0.5, 2.0)
    assert guide.ref.step == 2 and any(c != 1.0 for c in guide.c.tolist())
