"""Every method through the real training loop: a 2-step smoke run and a bit-exact resume (issue: methods)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from helpers_ckpt import assert_checkpoints_identical
from safetensors.torch import load_file

from rankscope.methods.registry import available
from rankscope.training import checkpoint as ckpt
from rankscope.training.loop import train

METHODS = tuple(available())  # every registered method, so a new one is covered for free
# Small periods so that the resumed half crosses each method's periodic event: GaLore/Fira refresh at
# counters 0, 5, 10, 15 (10 = the first update after the resume), ReLoRA merges after updates 5, 9, 13, 17;
# Low-Rank re-factorises, SPAM/Stable-SPAM reset (SPAM also redraws its sparse supports) and LORO takes its
# exact step and refreshes its moments after updates 4, 8, 12, 16, 20.
OPTIONS = {"galore": {"update_proj_gap": 5}, "fira": {"update_proj_gap": 5},
           # APOLLO/Mini redraw P at 0, 5, 10, 15; GoLore switches to random bases at 5 (saved at 10), then 10, 15
           "apollo": {"update_proj_gap": 5}, "apollo_mini": {"update_proj_gap": 5},
           "golore": {"update_proj_gap": 5, "random_fraction_start": 0.25},
           "relora": {"reset_every": 4, "rewarm": 1},
           "low_rank": {"refactor_every": 4, "reset_moments": True},
           "spam": {"reset_every": 4, "warmup": 2, "clip_after": 1, "density": 0.5},
           "stable_spam": {"reset_every": 4},
           "loro": {"exact_every": 4, "rewarm": 1}}


def config(make_smoke_config, name, method, steps, **kw):
    cfg = make_smoke_config(name, method=method, steps=steps, **kw)
    return dataclasses.replace(cfg, method_options=OPTIONS.get(method, {}))


def train_losses(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"]


@pytest.mark.parametrize("method", METHODS)
def test_two_steps_train_and_checkpoint(make_smoke_config, method):
    cfg = config(make_smoke_config, f"{method}_smoke", method, steps=2)
    result = train(cfg, progress=False)
    assert result.step == 2 and ckpt.list_checkpoints(cfg.run_dir) == [2]
    losses = train_losses(cfg.run_dir)
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    files = sorted(p.name for p in ckpt.step_dir(cfg.run_dir, 2).glob("*.safetensors"))
    assert "model.safetensors" in files and "optimizer.safetensors" in files
    weights = load_file(ckpt.step_dir(cfg.run_dir, 2) / "model.safetensors")
    assert weights and all(bool(torch.isfinite(t).all()) for t in weights.values() if t.is_floating_point())


@pytest.mark.parametrize("method", METHODS)
def test_resume_is_bit_exact(make_smoke_config, method):
    """20 updates straight vs 10 + resume + 10: every tensor file of the last checkpoint (weights, optimizer
    and method state, RNG) and every logged loss are bit-identical."""
    straight = config(make_smoke_config, f"{method}_straight", method, steps=20, save_every=10)
    train(straight, progress=False)
    split = config(make_smoke_config, f"{method}_split", method, steps=20, save_every=10)
    first = train(split, progress=False, stop_after=10)
    assert first.step == 10 and ckpt.list_checkpoints(split.run_dir) == [10]
    train(split, resume=True, progress=False)
    a_dir, b_dir = ckpt.step_dir(straight.run_dir, 20), ckpt.step_dir(split.run_dir, 20)
    assert_checkpoints_identical(a_dir, b_dir)
    assert train_losses(straight.run_dir) == train_losses(split.run_dir)
