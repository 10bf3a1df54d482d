"""The guide seam in the training loop: no guide = today's loop bit for bit, guide state in the checkpoint,
exact resume of a guided run, and the refusals (through the console script, nothing written)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers_ckpt import assert_checkpoints_identical
from helpers_fs import assert_clean_failure, run_cli
from helpers_guides import with_guide
from safetensors.torch import load_file

from rankscope.models.llama import lm_loss
from rankscope.training import checkpoint as ckpt
from rankscope.training.loop import build_model, train


def plain_loop_weights(cfg):
    """The update loop with no guide code at all, written out: lr factor, micro-batches, backward, step."""
    from rankscope.data.batches import train_batches
    from rankscope.data.tokenizer import load_tokenizer

    method = cfg.build_method()
    batches = train_batches(cfg, load_tokenizer(cfg.data.tokenizer), 1, 0)
    model, _ = build_model(cfg, method)
    optimizer = method.build_optimizer(model)
    model.train()
    for step in range(cfg.train.steps):
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * method.lr_factor(step)
        for micro in range(cfg.train.grad_accum):
            ids, labels = batches.get(step, micro)
            (lm_loss(model(ids), labels) / cfg.train.grad_accum).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        method.on_step_end(step + 1, model, optimizer)
    return model.state_dict()


@pytest.mark.parametrize("method", ["full_rank", "relora"])
def test_no_guide_is_todays_loop_bit_for_bit(make_smoke_config, one_thread, method):
    cfg = make_smoke_config(f"plain_{method}", method=method, steps=3, grad_accum=2)
    train(cfg, progress=False)
    saved = load_file(ckpt.step_dir(cfg.run_dir, 3) / "model.safetensors")
    expected = plain_loop_weights(cfg)
    assert saved.keys() == expected.keys()
    assert all(torch.equal(saved[k], expected[k]) for k in saved), method


def test_unguided_hash_has_no_guide_fields_and_guided_differs(make_smoke_config):
    cfg = make_smoke_config()
    assert "guide" not in cfg.trajectory_dict() and "guide_options" not in cfg.trajectory_dict()
    guided = with_guide(cfg, "sam")
    assert guided.fingerprint() != cfg.fingerprint()
    assert with_guide(cfg, "sam", rho=0.1).fingerprint() != guided.fingerprint()
    from rankscope.guides.options import guided_run_name

    assert guided_run_name("galore_s0", "sam") == "galore_s0_sam" and guided_run_name("galore_s0", "") == "galore_s0"


def test_inactive_guide_changes_nothing(make_smoke_config, one_thread, monkeypatch):
    """A guide built, set up and checkpointed but outside its window leaves the run bit-identical."""
    plain = make_smoke_config("plain", steps=3)
    train(plain, progress=False)
    guided = with_guide(make_smoke_config("guided", steps=3), "sam")
    from rankscope.guides.sam import Sam

    monkeypatch.setattr(Sam, "active", lambda self, step: False)
    train(guided, progress=False)
    assert_checkpoints_identical(ckpt.step_dir(plain.run_dir, 3), ckpt.step_dir(guided.run_dir, 3))


@pytest.mark.parametrize("guide,options", [("sam", {"precondition": "adam", "window": "0.25:1"}),
                                           ("rwp", {"mix": 0.5, "sigma": 0.05}), ("msam", {"rho": 0.1}),
                                           ("spectral", {"every": 3, "target_alpha": 3.0})])
def test_guided_resume_is_bit_exact(make_smoke_config, one_thread, guide, options):
    """8 updates straight vs 4 + resume + 4 with the guide's state (Adam moment, counter) in the checkpoint,
    or (rwp) the noise regenerated from the run's data seed and the update index."""
    straight = with_guide(make_smoke_config("straight", method="galore", steps=8, save_every=4), guide, **options)
    train(straight, progress=False)
    split = with_guide(make_smoke_config("split", method="galore", steps=8, save_every=4), guide, **options)
    train(split, progress=False, stop_after=4)
    state = load_file(ckpt.step_dir(split.run_dir, 4) / "method.safetensors")
    # sam/msam store their moments; rwp's noise is regenerated from (data seed, update): nothing stored
    assert any(k.startswith("guide/") for k in state) == (guide != "rwp")
    train(split, resume=True, progress=False)
    assert_checkpoints_identical(ckpt.step_dir(straight.run_dir, 8), ckpt.step_dir(split.run_dir, 8))
    model, _ = ckpt.load_model(split.run_dir)  # analysis loads a guided checkpoint (guide state set aside)
    assert model is not None


SMOKE = ("train", "--model", "smoke", "--steps", "3", "--micro-batch-size", "2", "--seq-len", "64",
         "--eval-every", "0", "--eval-tokens", "1024", "--quiet")


@pytest.mark.parametrize("args,needle", [
    (("--guide", "nope"), "unknown guide 'nope'"),
    (("--guide", "sam", "--set", "guide.bogus=1"), "unknown option(s) ['bogus']"),
    (("--guide", "sam", "--set", "guide.rho=abc"), "rho must be a number"),
    (("--guide", "sam", "--set", "guide.rho=-1"), "rho=-1"),
    (("--guide", "sam", "--set", "guide.window=0.9"), "window='0.9'"),
    (("--guide", "sam", "--set", "guide.window=0.95:1"), "covers no update"),
    (("--set", "guide.rho=0.1"), "without a guide"),
])
def test_bad_guide_input_is_a_clean_error(tmp_path, args, needle):
    proc = run_cli(*SMOKE, "--out-dir", tmp_path / "runs", "--name", "bad", *args)
    assert_clean_failure(proc, 2)
    assert needle in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_guide_with_unused_field_in_config_file_is_refused(tmp_path):
    """A config file's guide_options go through the same checks as --set guide.KEY=VALUE."""
    import json

    path = tmp_path / "run.json"
    path.write_text(json.dumps({"guide": "sam", "guide_options": {"rho": "x"}}))
    proc = run_cli(*SMOKE, "--config", path, "--out-dir", tmp_path / "runs", "--name", "bad")
    assert_clean_failure(proc, 2)
    assert "rho" in proc.stderr and not (tmp_path / "runs").exists()


def test_guide_options_are_typed(make_smoke_config):
    cfg = dataclasses.replace(make_smoke_config(), guide="sam", guide_options={"rho": "0.2"})
    assert cfg.guide_options == {"rho": 0.2}
