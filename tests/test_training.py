"""The training loop: accumulation, schedule, run-folder safety, bad input (exact resume of every method:
test_methods_train.py)."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from rankscope.errors import UserError
from rankscope.methods.base import Schedule, cosine_with_warmup
from rankscope.training import checkpoint as ckpt
from rankscope.training.loop import NonFiniteLoss, train


def _weights(run_dir, step):
    return load_file(ckpt.step_dir(run_dir, step) / "model.safetensors")


def test_loss_falls_and_run_folder_layout(make_smoke_config):
    cfg = make_smoke_config("layout", steps=30, eval_every=30, save_every=15, eval_tokens=2048)
    cfg = replace(cfg, train=replace(cfg.train, lr=3e-3))
    result = train(cfg, progress=False)
    run = cfg.run_dir
    for name in ("config.json", "meta.json", "metrics.jsonl", "memory.json"):
        assert (run / name).is_file(), name
    assert ckpt.list_checkpoints(run) == [15, 30]
    files = {p.name for p in ckpt.step_dir(run, 30).iterdir()}
    assert {"model.safetensors", "optimizer.safetensors", "optimizer.json", "method.safetensors",
            "rng_rank0.safetensors", "train_state.json"} <= files
    state = json.loads((ckpt.step_dir(run, 30) / "train_state.json").read_text())
    assert state["step"] == 30 and state["tokens_seen"] == 30 * 2 * 64
    assert result.val_loss < math.log(8192) - 0.5  # well below the uniform-guess loss
    meta = json.loads((run / "meta.json").read_text())
    assert meta["init_fingerprint"] and meta["config_hash"] == cfg.fingerprint()
    # The summary the report's runs table reads: full-rank AdamW keeps two fp32 moments per parameter.
    summary = json.loads((run / "memory.json").read_text())["summary"]
    n_params = sum(t.numel() for t in _weights(run, 30).values())
    assert summary["params"] == summary["trainable"] == n_params
    assert summary["state_elements"] == summary["theory_state_elements"] == 2 * n_params
    assert summary["state_bytes"] == 4 * summary["state_elements"]


def test_gradient_accumulation_equals_larger_batch(make_smoke_config):
    big = make_smoke_config("big", steps=3, micro_batch_size=4, grad_accum=1)
    acc = make_smoke_config("acc", steps=3, micro_batch_size=2, grad_accum=2)
    train(big, progress=False)
    train(acc, progress=False)
    a, b = _weights(big.run_dir, 3), _weights(acc.run_dir, 3)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_lr_schedule_formula():
    sched = Schedule(total_steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert cosine_with_warmup(0, sched) == 0.0  # the first update runs at LR 0
    assert cosine_with_warmup(5, sched) == pytest.approx(0.5)
    assert cosine_with_warmup(10, sched) == pytest.approx(1.0)
    assert cosine_with_warmup(55, sched) == pytest.approx(0.1 + 0.9 * 0.5)
    assert cosine_with_warmup(100, sched) == pytest.approx(0.1)


def test_existing_run_is_never_overwritten(make_smoke_config):
    cfg = make_smoke_config("keep", steps=2)
    train(cfg, progress=False)
    before = _weights(cfg.run_dir, 2)
    with pytest.raises(UserError, match="already exists"):
        train(cfg, progress=False)
    changed = replace(cfg, train=replace(cfg.train, seed=7))
    with pytest.raises(UserError, match="different run"):
        train(changed, resume=True, progress=False)
    after = _weights(cfg.run_dir, 2)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_corrupt_checkpoint_gives_clear_error(make_smoke_config):
    cfg = make_smoke_config("corrupt", steps=2)
    train(cfg, progress=False)
    (ckpt.step_dir(cfg.run_dir, 2) / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="corrupt"):
        ckpt.load_model(cfg.run_dir, 2)


def test_non_finite_loss_stops_and_keeps_last_checkpoint(make_smoke_config):
    cfg = make_smoke_config("nan", steps=6, save_every=2)
    train(cfg, progress=False, stop_after=2)
    good = _weights(cfg.run_dir, 2)
    blown = replace(cfg, train=replace(cfg.train, lr=1e30))
    blown = replace(blown, name="nan2")
    with pytest.raises(NonFiniteLoss, match="non-finite"):
        train(blown, progress=False)
    assert ckpt.list_checkpoints(blown.run_dir) == [] or all(
        torch.isfinite(t).all() for t in _weights(blown.run_dir, ckpt.list_checkpoints(blown.run_dir)[-1]).values()
    )
    assert all(torch.equal(good[k], v) for k, v in _weights(cfg.run_dir, 2).items())


def test_atomic_write_ignores_temp_folders(make_smoke_config):
    cfg = make_smoke_config("atomic", steps=2)
    train(cfg, progress=False)
    # A crash mid-write leaves only a hidden temp folder, which is never listed as a checkpoint.
    (cfg.run_dir / "checkpoints" / ".tmp_step_000004_123").mkdir()
    assert ckpt.list_checkpoints(cfg.run_dir) == [2]
