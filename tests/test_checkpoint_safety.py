"""Checkpoints a run can continue from (issue 12, items 7, 9, 11b): only weights with a finite held-out loss are
saved, the non-finite advice can be followed (--allow-change), damaged metadata and a full disk are clear
errors, and load_model restores the method state."""

from __future__ import annotations

import errno
import json
import math
from dataclasses import replace

import pytest
import torch
from helpers_fs import assert_unchanged, snapshot
from safetensors.torch import load_file

from rankscope.errors import UserError, WorkFailed
from rankscope.models.llama import lm_loss
from rankscope.training import checkpoint as ckpt
from rankscope.training.logging import read_metrics
from rankscope.training.loop import NonFiniteLoss, train


def _with(cfg, **train_kw):
    return replace(cfg, train=replace(cfg.train, **train_kw))


def _heldout_loss(run_dir, step) -> float:
    from rankscope.data.batches import eval_batch

    model, _ = ckpt.load_model(run_dir, step)
    ids, labels = next(iter(eval_batch(ckpt.read_run_config(run_dir), 512).chunks()))
    with torch.no_grad():
        return float(lm_loss(model(ids), labels))


def test_blow_up_keeps_only_finite_checkpoints_and_the_advice_works(make_smoke_config, one_thread):
    cfg = make_smoke_config("blow", steps=6, save_every=1, lr=1e-3)
    train(cfg, progress=False, stop_after=2)
    good = snapshot(ckpt.step_dir(cfg.run_dir, 2))
    # Resuming with the old settings changed is refused, naming the way to allow it.
    with pytest.raises(UserError, match="--allow-change lr"):
        train(_with(cfg, lr=1e30), resume=True, progress=False)
    with pytest.raises(NonFiniteLoss, match="last good checkpoint is step 2.*--allow-change") as err:
        train(_with(cfg, lr=1e30), resume=True, progress=False, allow_change=("lr",))
    # Training losses were finite up to update 3 (computed before it); its weights are not: not saved.
    assert "after update 3" in str(err.value) and "checkpoint 3 was not written" in str(err.value)
    assert ckpt.list_checkpoints(cfg.run_dir) == [1, 2]
    assert_unchanged(good, ckpt.step_dir(cfg.run_dir, 2))
    assert math.isfinite(_heldout_loss(cfg.run_dir, 2))
    # The advice: resume from the last good checkpoint with a lower LR and clipping.
    fixed = replace(_with(cfg, lr=1e-4), method_options={"grad_clip": 1.0})
    train(fixed, resume=True, progress=False, allow_change=("lr", "grad_clip"))
    assert ckpt.list_checkpoints(cfg.run_dir) == [1, 2, 3, 4, 5, 6]
    for step in (3, 6):
        state = json.loads((ckpt.step_dir(cfg.run_dir, step) / "train_state.json").read_text())
        assert math.isfinite(state["heldout_loss"]) and state["config_hash"] == fixed.fingerprint()
        assert state["heldout_loss"] == pytest.approx(_heldout_loss(cfg.run_dir, step), rel=1e-4)
    # The new LR is what the optimizer used (lr logged = base LR x schedule factor), and history records it.
    factor = fixed.build_method().lr_factor(2)
    lr3 = [r["lr"] for r in read_metrics(cfg.run_dir) if r["kind"] == "train" and r["step"] == 3]
    assert lr3 == [pytest.approx(1e-4 * factor, rel=1e-12)]
    meta = json.loads((cfg.run_dir / "meta.json").read_text())
    changes = meta["config_changes"]
    assert [c["step"] for c in changes] == [2, 2]
    assert changes[0]["changes"] == ["train.lr: 0.001 -> 1e+30"]
    assert changes[1]["changes"] == ["method_options.grad_clip: None -> 1.0", "train.lr: 1e+30 -> 0.0001"]
    assert changes[0]["from_hash"] == cfg.fingerprint() and meta["config_hash"] == fixed.fingerprint()
    assert ckpt.read_run_config(cfg.run_dir).fingerprint() == fixed.fingerprint()


def test_allow_change_is_limited_to_optimisation_settings(make_smoke_config):
    cfg = make_smoke_config("limits", steps=2)
    with pytest.raises(UserError, match="only these settings may change"):
        train(cfg, resume=True, progress=False, allow_change=("seed",))
    with pytest.raises(UserError, match="add --resume"):
        train(cfg, progress=False, allow_change=("lr",))
    assert not cfg.run_dir.exists()


def _nan_on_call(monkeypatch, n: int):
    from rankscope.training import loop

    calls = []

    def sometimes_nan(logits, labels):
        calls.append(1)
        loss = lm_loss(logits, labels)
        return loss * float("nan") if len(calls) == n else loss

    monkeypatch.setattr(loop, "lm_loss", sometimes_nan)


def test_max_bad_steps_skips_the_update(make_smoke_config, monkeypatch, one_thread):
    """max_bad_steps=1: the non-finite update 3 is skipped (weights and optimizer state unchanged)."""
    _nan_on_call(monkeypatch, 3)
    cfg = make_smoke_config("skip", steps=5, save_every=1, max_bad_steps=1)
    train(cfg, progress=False)
    for name in ("model.safetensors", "optimizer.safetensors"):
        a = load_file(ckpt.step_dir(cfg.run_dir, 2) / name)
        b = load_file(ckpt.step_dir(cfg.run_dir, 3) / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    logged = {r["step"]: r for r in read_metrics(cfg.run_dir) if r["kind"] == "train"}
    assert logged[3]["loss"] is None and logged[2]["skipped_steps"] == 0 and logged[5]["skipped_steps"] == 1
    assert json.loads((ckpt.step_dir(cfg.run_dir, 5) / "train_state.json").read_text())["skipped_steps"] == 1


def test_max_bad_steps_zero_stops_at_the_first(make_smoke_config, monkeypatch, one_thread):
    _nan_on_call(monkeypatch, 3)
    cfg = make_smoke_config("stop", steps=5, save_every=1)
    with pytest.raises(NonFiniteLoss, match="at or before update 3"):
        train(cfg, progress=False)
    assert ckpt.list_checkpoints(cfg.run_dir) == [1, 2]


# --- damaged metadata (item 9) ---------------------------------------------------------------------

@pytest.mark.parametrize("file, text, message", [
    ("train_state.json", "[2, 3]", "holds a list"),
    ("train_state.json", '{"step": "2", "config_hash": "x"}', "has step='2'"),
    ("train_state.json", '{"step": 2}', "config_hash=None"),
    ("optimizer.json", "{not json", "is unreadable"),
    ("optimizer.json", '{"param_groups": 3}', "has the wrong shape"),
    ("optimizer.json", '{"param_groups": [], "scalars": {}}', "does not fit this run's model, optimizer"),
])
def test_damaged_metadata_is_a_clear_error(make_smoke_config, file, text, message):
    cfg = make_smoke_config("meta", steps=4, save_every=2)
    train(cfg, progress=False, stop_after=2)
    path = ckpt.step_dir(cfg.run_dir, 2) / file
    if file == "train_state.json" and "config_hash" in text:
        text = text.replace('"x"', json.dumps(cfg.fingerprint()))
    path.write_text(text)
    before = snapshot(cfg.run_dir)
    with pytest.raises(UserError) as err:
        train(cfg, resume=True, progress=False)
    assert message in str(err.value) and str(ckpt.step_dir(cfg.run_dir, 2)) in str(err.value)
    assert "delete" in str(err.value)  # the fix
    assert_unchanged(before, cfg.run_dir)


def test_full_disk_during_a_checkpoint_write(make_smoke_config, monkeypatch, one_thread):
    straight = make_smoke_config("straight", steps=4, save_every=2)
    train(straight, progress=False)
    cfg = make_smoke_config("full", steps=4, save_every=2)
    real = ckpt.save_file

    def full_disk(tensors, path, metadata=None):
        if "step_000004" in str(path) and path.name == "optimizer.safetensors":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path, metadata)

    monkeypatch.setattr(ckpt, "save_file", full_disk)
    train(cfg, progress=False, stop_after=2)
    kept = snapshot(ckpt.step_dir(cfg.run_dir, 2))
    with pytest.raises(WorkFailed, match="disk is full.*last intact checkpoint is step 2"):
        train(cfg, resume=True, progress=False)
    assert sorted(p.name for p in (cfg.run_dir / "checkpoints").iterdir()) == ["step_000002"]  # temp removed
    assert_unchanged(kept, ckpt.step_dir(cfg.run_dir, 2))
    monkeypatch.setattr(ckpt, "save_file", real)  # space freed: the resume completes exactly
    train(cfg, resume=True, progress=False)
    for name in ("model.safetensors", "optimizer.safetensors"):
        a = load_file(ckpt.step_dir(straight.run_dir, 4) / name)
        b = load_file(ckpt.step_dir(cfg.run_dir, 4) / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


# --- load_model restores the method state (item 11b) ----------------------------------------------

def test_load_model_restores_relora_merges(make_smoke_config, one_thread):
    cfg = replace(make_smoke_config("relora", method="relora", steps=8), method_options={"reset_every": 2,
                                                                                         "rewarm": 1})
    train(cfg, progress=False)
    saved = int(load_file(ckpt.step_dir(cfg.run_dir, 8) / "method.safetensors")["merges"])
    assert saved >= 2 and cfg.build_method().merges == 0
    _, method = ckpt.load_model(cfg.run_dir)
    assert method.merges == saved
