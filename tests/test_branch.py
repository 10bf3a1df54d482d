"""Cooldown branches: ordinary run folders that continue a WSD parent and resume bit-exactly."""

import pytest
import torch
from safetensors.torch import load_file

from rankscope.errors import UserError
from rankscope.training import checkpoint as ckpt
from rankscope.training.branch import branch_info, create_branch
from rankscope.training.loop import train


def _weights(run_dir, step):
    return load_file(str(ckpt.step_dir(run_dir, step) / "model.safetensors"))


def _parent(make_smoke_config, method="full_rank"):
    cfg = make_smoke_config(f"p_{method}", method=method, steps=8, schedule="wsd", decay_steps=0, save_steps=(4,))
    train(cfg, progress=False)
    return cfg


@pytest.mark.parametrize("method", ["full_rank", "relora"])
def test_branch_equals_direct_wsd_run_and_resumes_bit_exactly(make_smoke_config, one_thread, method):
    parent = _parent(make_smoke_config, method)
    branch = create_branch(parent.run_dir, step=4, cooldown=2)
    assert branch.train.steps == 6 and branch.train.decay == 2 and branch.train.warmup == parent.train.warmup
    assert branch_info(branch.run_dir) == {"parent": parent.name, "parent_dir": str(parent.run_dir.resolve()),
                                           "step": 4, "cooldown": 2, "budget": 6, "copied_checkpoint": 4,
                                           "decay_shape": "1-sqrt"}
    train(branch, resume=True, progress=False)
    # the same schedule trained from scratch in one go gives the same weights
    direct = make_smoke_config(f"d_{method}", method=method, steps=6, schedule="wsd", decay_steps=2)
    train(direct, progress=False)
    a, b = _weights(branch.run_dir, 6), _weights(direct.run_dir, 6)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # an interrupted branch, resumed, equals the uninterrupted one bit for bit
    cut = create_branch(parent.run_dir, step=4, cooldown=2, name=f"cut_{method}", save_steps=(5,))
    train(cut, resume=True, progress=False, stop_after=5)
    assert ckpt.list_checkpoints(cut.run_dir) == [4, 5]
    train(cut, resume=True, progress=False)
    c = _weights(cut.run_dir, 6)
    assert all(torch.equal(a[k], c[k]) for k in a)
    # the parent's checkpoint is untouched, and creating the branch again returns it
    assert ckpt.read_train_state(parent.run_dir, 4)["config_hash"] == parent.fingerprint()
    assert create_branch(parent.run_dir, step=4, cooldown=2).fingerprint() == branch.fingerprint()
    # a decay start without a checkpoint: the branch copies step 4 and re-trains 5 at the constant rate
    late = create_branch(parent.run_dir, step=5, cooldown=1)
    train(late, resume=True, progress=False)
    direct5 = make_smoke_config(f"d5_{method}", method=method, steps=6, schedule="wsd", decay_steps=1)
    train(direct5, progress=False)
    e, f = _weights(late.run_dir, 6), _weights(direct5.run_dir, 6)
    assert all(torch.equal(e[k], f[k]) for k in e)
    # analysis rebuilds the branch model from its folder alone, like any run
    model = ckpt.load_model(branch.run_dir)
    model = model[0] if isinstance(model, tuple) else model
    state = model.state_dict()
    assert all(torch.equal(state[k].cpu(), a[k]) for k in a if k in state)


def test_branch_errors(make_smoke_config):
    cosine = make_smoke_config("cos", steps=4, save_steps=(2,))
    train(cosine, progress=False)
    with pytest.raises(UserError, match="warmup-stable-decay"):
        create_branch(cosine.run_dir, 2, 1)
    wsd = make_smoke_config("wsd", steps=4, schedule="wsd", decay_steps=1, save_steps=(2,))
    train(wsd, progress=False)
    with pytest.raises(UserError, match="after the warmup"):
        create_branch(wsd.run_dir, 0, 1)
    with pytest.raises(UserError, match="no checkpoint at or before step 1"):
        create_branch(wsd.run_dir, 1, 1)
    create_branch(wsd.run_dir, 2, 1)
    with pytest.raises(UserError, match="another branch"):
        create_branch(wsd.run_dir, 2, 2, name="wsd_b2")


def test_branch_command_line(make_smoke_config, tmp_path):
    import subprocess
    import sys

    parent = _parent(make_smoke_config)
    env_cmd = [sys.executable, "-m", "rankscope", "branch", str(parent.run_dir), "--step", "4", "--cooldown", "2",
               "--quiet"]
    proc = subprocess.run(env_cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "step 6" in proc.stdout and ckpt.list_checkpoints(parent.run_dir.parent / "p_full_rank_b4") == [4, 6]
    cosine = make_smoke_config("cos", steps=2)
    train(cosine, progress=False)
    bad = subprocess.run([*env_cmd[:4], str(cosine.run_dir), *env_cmd[5:]], capture_output=True, text=True)
    assert bad.returncode == 2 and "warmup-stable-decay" in bad.stderr and "Traceback" not in bad.stderr
