"""The parity stage's plan: which cooled models each protocol trains (configs only, nothing trained)."""

from pathlib import Path

import pytest

from rankscope.errors import UserError
from rankscope.study.config_file import study_from_dict
from rankscope.study.parity_stage import candidates, cooldown_for


def _study(**parity):
    return study_from_dict({"model": "smoke", "methods": ["full_rank", "relora"], "steps": 100, "checkpoints": 5,
                            "method_options": {"relora": {"reset_every": 20, "rewarm": 5}}, "parity": parity})


def test_wsd_branches_plan(tmp_path):
    cfg = _study(protocol="wsd-branches")
    assert cfg.decay_steps == 20 and cfg.branch_steps == (20, 40, 60, 80)
    main = cfg.to_run_configs(tmp_path)[1]
    assert main.train.schedule == "wsd" and main.train.decay == 20
    plan = candidates(cfg, main)
    assert [(c.train.steps, c.train.decay) for c in plan] == [(25, 5), (50, 10), (75, 15), (100, 20)]
    assert all(c.train.decay / c.train.steps == pytest.approx(0.2) for c in plan)
    assert all(Path(c.out_dir).name == "parity_runs" and c.train.warmup == main.train.warmup for c in plan)
    for c in plan:
        c.build_method()  # ReLoRA accepts budgets that are no multiple of reset_every under wsd
    assert cooldown_for(60, 0.2) == 15


def test_full_schedules_plan_and_errors(tmp_path):
    cfg = _study(protocol="full-schedules", budgets=[0.5, 1.0, 1.5], cap=2.0)
    main = cfg.to_run_configs(tmp_path)[0]
    assert main.train.schedule == "cosine"
    assert [(c.name, c.train.steps, c.train.schedule) for c in candidates(cfg, main)] == [
        ("full_rank_s0_n50", 50, "cosine"), ("full_rank_s0_n150", 150, "cosine")]
    assert candidates(_study(), main) == []  # protocol off
    with pytest.raises(UserError, match="at most 1 for wsd-branches"):
        _study(protocol="wsd-branches", cap=2.0)
    with pytest.raises(UserError, match="parity.target"):
        _study(protocol="wsd-branches", target="fastest")
    with pytest.raises(UserError, match="branch_steps"):
        _study(protocol="wsd-branches", branch_steps=[90])
