"""The guides' extra passes in the FLOPs counter behind `study --dry-run` and the parity cost table."""

from __future__ import annotations

import dataclasses

import pytest
from helpers_guides import with_guide

from rankscope.guides.cost import run_estimate
from rankscope.methods.flops import estimate
from rankscope.study.cost import job_cost
from rankscope.study.parity_cost import flops_per_token_and_update


def base(make_smoke_config, method="galore", steps=10):
    return make_smoke_config(method=method, steps=steps)


@pytest.mark.parametrize("method", ["galore", "cola", "relora"])
def test_sam_doubles_the_per_token_count_inside_its_window(make_smoke_config, method):
    cfg = base(make_smoke_config, method)
    plain = run_estimate(cfg)
    assert plain == estimate(method, cfg.model_config(), cfg.method_config(), cfg.data.seq_len)
    assert run_estimate(with_guide(cfg, "sam")).per_token == pytest.approx(2 * plain.per_token)
    last = run_estimate(with_guide(cfg, "sam", window="0.8:1"))  # 2 of 10 updates
    assert last.per_token == pytest.approx(1.2 * plain.per_token) and "20%" in last.note
    assert last.per_update == plain.per_update


def test_rwp_msam_cost_only_what_they_run(make_smoke_config):
    cfg = base(make_smoke_config)
    plain = run_estimate(cfg).per_token
    assert run_estimate(with_guide(cfg, "msam")).per_token == plain
    assert run_estimate(with_guide(cfg, "rwp")).per_token == plain  # mix 1: one pass, at θ+ε
    assert run_estimate(with_guide(cfg, "rwp", mix=0.5)).per_token == pytest.approx(2 * plain)


def test_align_counts_the_reference_forward_up_to_the_last_aligned_block(make_smoke_config):
    from torch import nn

    from rankscope.models.llama import LlamaLM

    cfg = base(make_smoke_config)
    m = cfg.model_config()
    model = LlamaLM(m)
    block_weights = sum(mod.weight.numel() for mod in model.model.layers[0].modules() if isinstance(mod, nn.Linear))
    t, d = cfg.data.seq_len, m.d_model
    for layers, upto, n in (("1", 1, 1), ("2", 2, 1), ("1,2", 2, 2)):
        expected = 2 * block_weights * upto + 4 * upto * t * d + 18 * d * d * n
        extra = run_estimate(with_guide(cfg, "align", layers=layers)).per_token - run_estimate(cfg).per_token
        assert extra == pytest.approx(expected)


def test_spectral_counts_one_spectrum_per_matrix_every_k_updates(make_smoke_config):
    from rankscope.models.llama import target_shapes

    cfg = base(make_smoke_config)
    shapes = target_shapes(cfg.model_config())
    svd = sum(2 * max(a, b) * min(a, b) ** 2 + 9 * min(a, b) ** 3 for _, a, b in shapes)
    est = run_estimate(with_guide(cfg, "spectral", every=5))
    assert est.per_update - run_estimate(cfg).per_update == pytest.approx(svd / 5)
    assert est.per_token == run_estimate(cfg).per_token


def test_dry_run_and_parity_costs_include_the_guide(make_smoke_config):
    cfg = base(make_smoke_config)
    guided = with_guide(cfg, "sam")
    plain_job, guided_job = job_cost(cfg, 1, "h100", None), job_cost(guided, 1, "h100", None)
    assert guided_job["flops_per_token"] == pytest.approx(2 * plain_job["flops_per_token"])
    assert guided_job["flops"] > 1.9 * plain_job["flops"] and "guide sam" in guided_job["note"]
    assert flops_per_token_and_update(guided)[0] == pytest.approx(2 * flops_per_token_and_update(cfg)[0])
    assert dataclasses.replace(guided, guide="", guide_options={}).fingerprint() == cfg.fingerprint()
