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


def _expected(cfg, updates: float, guided: float, tps: int) -> float:
    """The method's FLOPs for ``updates`` updates plus sam's second pass (1× per token) on ``guided`` of them."""
    m = estimate(cfg.method, cfg.model_config(), cfg.method_config(), cfg.data.seq_len)
    return updates * (tps * m.per_token + m.per_update) + guided * tps * m.per_token


def test_parity_cost_counts_the_guided_updates_to_the_target_not_the_window_share(make_smoke_config, tmp_path):
    from rankscope.study.parity_cost import cost_row

    cfg = with_guide(base(make_smoke_config), "sam", window="0.5:1")  # updates 5..9 of 10 guided
    tps = 128
    row = cost_row(cfg, tmp_path / "none", 8 * tps, tps, [])  # target at update 8: updates 5, 6, 7 guided
    assert row["flops_to_target"] == pytest.approx(_expected(cfg, 8, 3, tps))
    assert row["flops_to_target"] < _expected(cfg, 8, 0.5 * 8, tps)  # the window's share would count 4
    assert "acted on 3 of the 8 updates" in row["flops_note"]
    row = cost_row(cfg, tmp_path / "none", 7.25 * tps, tps, [])  # an interpolated crossing inside update 7
    assert row["flops_to_target"] == pytest.approx(_expected(cfg, 7.25, 2.25, tps))
    row = cost_row(cfg, tmp_path / "none", 12 * tps, tps, [])  # extrapolated past the end: guided like the last
    assert row["flops_to_target"] == pytest.approx(_expected(cfg, 12, 7, tps))
    plain = base(make_smoke_config)
    assert cost_row(plain, tmp_path, 8 * tps, tps, [])["flops_to_target"] == pytest.approx(_expected(plain, 8, 0, tps))


def test_parity_cost_of_a_cooldown_branch_follows_its_parents_window_then_its_own(make_smoke_config, tmp_path):
    import json

    from rankscope.study.parity_cost import cost_row
    from rankscope.training.branch import branch_config

    parent = with_guide(make_smoke_config(method="galore", steps=10, schedule="wsd", decay_steps=2), "sam",
                        window="0.5:1")
    parent.run_dir.mkdir(parents=True)
    (parent.run_dir / "config.json").write_text(json.dumps(parent.to_dict()))
    branch = branch_config(parent, 6, 2, "run_b6c2", str(tmp_path / "parity"))  # 8 updates: its window is 4..7
    branch.run_dir.mkdir(parents=True)
    meta = {"branch": {"parent": parent.name, "parent_dir": str(parent.run_dir), "step": 6, "cooldown": 2,
                       "copied_checkpoint": 6}}
    (branch.run_dir / "meta.json").write_text(json.dumps(meta))
    tps = 128
    # updates 0..5 are the parent's (guided from 5: one), 6..7.5 the branch's (guided from 4: 1.5)
    row = cost_row(branch, branch.run_dir, 7.5 * tps, tps, [])
    assert row["flops_to_target"] == pytest.approx(_expected(branch, 7.5, 2.5, tps))
    meta["branch"]["copied_checkpoint"] = 2  # the branch re-trained from update 2: its window from 4 on
    (branch.run_dir / "meta.json").write_text(json.dumps(meta))
    assert cost_row(branch, branch.run_dir, 7.5 * tps, tps, [])["flops_to_target"] == pytest.approx(
        _expected(branch, 7.5, 3.5, tps))
    (parent.run_dir / "config.json").unlink()  # a moved parent: the branch's window for the whole trajectory
    row = cost_row(branch, branch.run_dir, 7.5 * tps, tps, [])
    assert row["flops_to_target"] == pytest.approx(_expected(branch, 7.5, 3.5, tps)) and "unreadable" in row["flops_note"]
