"""Closed-form FLOPs per method and the study's ``--dry-run`` cost estimate (issue 15, item 3)."""

from __future__ import annotations

import pytest

from rankscope.config import DataConfig, RunConfig, TrainConfig
from rankscope.errors import UserError
from rankscope.gpu_check.output import write_json
from rankscope.methods.flops import estimate
from rankscope.models.llama import target_shapes
from rankscope.models.presets import model_config
from rankscope.study.commands import cmd_study
from rankscope.study.cost import ASSUMED_MFU, GPU_CLASSES, job_cost, study_costs

M60 = model_config("60m")
ATTN_60M = 12 * 8 * 256 * 512  # 12·L·T·d


def _cfg(method: str, size: str = "60m"):
    return RunConfig(model=size, method=method).method_config()


def test_full_rank_60m_is_the_performance_spec_figure():
    est = estimate("full_rank", M60, _cfg("full_rank"), 256)
    assert est.per_token == pytest.approx(262.7e6, abs=0.05e6)  # performance.md §2 table
    assert est.per_update == 0 and est.note == ""


def test_layer_swap_methods_count_the_matmuls_they_perform():
    embed_norms = M60.vocab_size * M60.d_model + (2 * M60.n_layers + 1) * M60.d_model
    lm_head = M60.vocab_size * M60.d_model
    # CoLA: the target matmuls are its factors alone (methods.md §2.7 trainable count minus embedding/norms)
    cola_targets = RunConfig(model="60m", method="cola").method_class().theory_counts(M60, _cfg("cola"))["params"]
    cola_targets -= embed_norms + lm_head
    assert estimate("cola", M60, _cfg("cola"), 256).per_token == pytest.approx(6 * (cola_targets + lm_head) + ATTN_60M)
    # ReLoRA: frozen W forward + input gradient (4mn) plus trainable adapters (6 r(m+n))
    dense = sum(m * n for _, m, n in target_shapes(M60))
    adapters = cola_targets  # same rank-128 factor shapes as CoLA
    relora = estimate("relora", M60, _cfg("relora"), 256)
    assert relora.per_token == pytest.approx(4 * dense + 6 * adapters + 6 * lm_head + ATTN_60M)
    # SLTrain: dense GEMMs per token plus BA and the two factor gradients once per update
    sl = estimate("sltrain", M60, _cfg("sltrain"), 256)
    assert sl.per_token == estimate("full_rank", M60, _cfg("full_rank"), 256).per_token
    assert sl.per_update == pytest.approx(sum(6 * m * n * 128 for _, m, n in target_shapes(M60)))


def test_galore_adds_projection_and_amortised_refresh_per_update():
    cfg = _cfg("galore")
    est = estimate("galore", M60, cfg, 256)
    proj = sum(4 * m * n * 128 for _, m, n in target_shapes(M60))
    refresh = sum(2 * max(m, n) * min(m, n) ** 2 + 9 * min(m, n) ** 3 for _, m, n in target_shapes(M60)) / 200
    assert est.per_update == pytest.approx(proj + refresh)
    assert est.run_flops(1000, 10) == pytest.approx(10 * (1000 * est.per_token + est.per_update))


def test_a_method_without_a_rule_says_so():
    est = estimate("brand_new", M60, _cfg("full_rank"), 256)
    assert "no FLOPs rule" in est.note and est.per_token == estimate("full_rank", M60, _cfg("full_rank"), 256).per_token


def _run(method="galore", steps=100, micro=8, accum=4):
    return RunConfig(name=f"{method}_s0", model="60m", method=method, data=DataConfig(seq_len=256),
                     train=TrainConfig(steps=steps, micro_batch_size=micro, grad_accum=accum))


def test_job_cost_from_the_assumed_mfu():
    row = job_cost(_run(), nproc=2, gpu="a100", check=None)
    tokens = 100 * 8 * 4 * 2 * 256
    assert row["tokens"] == tokens
    est = estimate("galore", M60, _cfg("galore"), 256)
    assert row["flops"] == pytest.approx(100 * (8 * 4 * 2 * 256 * est.per_token + est.per_update))
    assert row["gpu_hours"] == pytest.approx(row["flops"] / (GPU_CLASSES["a100"][1] * 1e12 * ASSUMED_MFU) / 3600)
    assert row["wall_hours"] == pytest.approx(row["gpu_hours"] / 2)
    assert row["state_bytes"] == pytest.approx(312.3 * 2**20, rel=1e-3)  # GaLore at 60m (performance.md §6)
    assert row["param_bytes"] == pytest.approx(221.5 * 2**20, rel=1e-3)  # 58.07 M fp32


def test_measured_mfu_and_ceiling_replace_the_assumption(tmp_path):
    check = {"device": {"name": "Measured GPU"}, "ceiling": {"flops": 6.0e14},
             "throughput": [{"method": "galore", "model": "60m", "status": "ok", "mfu": 0.2, "params": 1}]}
    path = write_json(tmp_path / "gpu_check.json", check)
    (row,) = study_costs([_run()], nproc=1, gpu="h100", gpu_check_json=path)
    assert row["gpu"] == "Measured GPU" and row["mfu"] == 0.2 and "measured" in row["mfu_source"]
    assert row["gpu_hours"] == pytest.approx(row["flops"] / (0.2 * 6.0e14) / 3600)


def test_unknown_gpu_class_is_a_user_error():
    with pytest.raises(UserError, match="not a known GPU class"):
        job_cost(_run(), 1, "tpu9", None)


def test_dry_run_prints_the_cost_of_every_job(tmp_path, capsys):
    assert cmd_study(preset="paper-60m", out=tmp_path / "s", dry_run=True, quiet=True, gpu="h200") == 0
    out = capsys.readouterr().out
    assert "cost estimate" in out and "NVIDIA H200 SXM: assumed MFU 0.35" in out
    for method in ("full_rank", "galore", "fira", "cola", "sltrain", "relora"):
        line = next(x for x in out.splitlines() if x.startswith(f"{method}_s0 "))
        assert "1.31G" in line  # 10000 updates × 512 × 256 tokens (methods.md §1)
    assert not (tmp_path / "s").exists()


def test_cost_flags_need_dry_run(tmp_path):
    with pytest.raises(UserError, match="only --dry-run prints"):
        cmd_study(preset="smoke", out=tmp_path / "s", gpu="h100")


def test_dry_run_lists_and_costs_the_planned_parity_branches(tmp_path, capsys):
    """A cooldown branch trains only its decay: its tokens are cooldown × tokens per update, not the budget."""
    from rankscope.study.config_file import load_study_config
    from rankscope.study.parity_stage import cooldown_for

    cfg = load_study_config("demo")
    assert cmd_study(preset="demo", out=tmp_path / "s", dry_run=True, quiet=True) == 0
    out = capsys.readouterr().out
    per_update = cfg.micro_batch_size * cfg.accumulation() * cfg.data.seq_len
    for step in cfg.branch_steps:
        c = cooldown_for(step, cfg.parity.cooldown_fraction)
        assert f"train full_rank_s0_b{step}: {c} update(s)" in out
        line = next(x for x in out.splitlines() if x.startswith(f"full_rank_s0_b{step} "))
        assert line.split()[1] == str(c * per_update)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("preset", ["paper-60m", "paper-130m", "paper-350m"])
def test_dry_run_prices_the_paper_seed_design(tmp_path, capsys, preset):
    """evidence.md §6: 6 methods × 5 init seeds × 2 data orders, every sibling priced like its study run."""
    assert cmd_study(preset=preset, out=tmp_path / "s", dry_run=True, quiet=True) == 0
    out = capsys.readouterr().out
    design = next(x for x in out.splitlines() if x.startswith("design: "))
    assert design.startswith("design: 6 method(s) × 5 init seed(s) × 2 data order(s) = 60 run(s); meets the paper "
                             "design")
    lines = {x.split()[0]: x.split() for x in out.splitlines() if x and x.split()[0].count("_s")}
    for method in ("full_rank", "galore", "fira", "cola", "sltrain", "relora"):
        for init in range(5):
            main, sib = lines[f"{method}_s{init}"], lines[f"{method}_s{init}_d100"]
            assert main[1:3] == sib[1:3]  # same tokens and FLOPs: a sibling differs only in data order
    sib_hours = sum(float(v[-2]) for k, v in lines.items() if k.endswith("_d100"))
    assert f"Siblings: 30 run(s), {sib_hours:.2f} of" in design or abs(
        float(design.split("Siblings: 30 run(s), ")[1].split()[0]) - sib_hours) < 0.01 * 30
    assert "siblings: full_rank, galore, fira, cola, sltrain, relora × data seeds [100] per init seed (30 run(s), " \
           "checkpoints: all, also eval/ood/finetune)" in out
    assert not (tmp_path / "s").exists()


def test_dry_run_says_when_the_design_is_below_the_paper_one(tmp_path, capsys):
    assert cmd_study(preset="demo", out=tmp_path / "s", dry_run=True, quiet=True) == 0
    design = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("design: "))
    assert design.startswith("design: 6 method(s) × 1 init seed(s), plus 2 data-order sibling(s) per init seed of "
                             "full_rank = 8 run(s); below the paper design")
