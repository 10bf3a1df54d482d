"""Every registered method × every registered guide: 3 updates through the real training loop, or the clear
refusal (before anything is written); a few cases through the console script."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from helpers_fs import assert_clean_failure, run_cli

from rankscope.errors import UserError
from rankscope.guides.registry import available as guides
from rankscope.methods.registry import available as methods
from rankscope.training.logging import read_metrics
from rankscope.training.loop import train

#: (method, guide) pairs that must refuse, and the words that say why.
REFUSED = {("cola", "spectral"): "no dense matrix"}
#: Options that make each guide act at every one of the 3 updates on the smoke model.
OPTIONS = {"sam": {"rho": 0.05}, "rwp": {"sigma": 0.01, "mix": 0.5}, "msam": {"rho": 0.05},
           "align": {"weight": 0.1, "layers": "2"}, "spectral": {"every": 2, "target_alpha": 3.0}}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    from conftest import smoke_config

    torch.set_num_threads(1)
    cfg = smoke_config(tmp_path_factory.mktemp("ref"), "fr", "full_rank", steps=3, save_every=1)
    train(cfg, progress=False)
    return str(cfg.run_dir)


def guided(make_smoke_config, method, guide, reference):
    options = dict(OPTIONS[guide], **({"reference": reference} if guide == "align" else {}))
    cfg = make_smoke_config(f"{method}_{guide}", method=method, steps=3, eval_every=0)
    return dataclasses.replace(cfg, guide=guide, guide_options=options)


@pytest.mark.slow
@pytest.mark.parametrize("guide", guides())
@pytest.mark.parametrize("method", methods())
def test_every_method_trains_with_every_guide_or_refuses(make_smoke_config, one_thread, reference, method, guide):
    cfg = guided(make_smoke_config, method, guide, reference)
    if (method, guide) in REFUSED:
        with pytest.raises(UserError, match=REFUSED[(method, guide)]):
            train(cfg, progress=False)
        assert not cfg.run_dir.exists()
        return
    result = train(cfg, progress=False)
    losses = [r["loss"] for r in read_metrics(cfg.run_dir) if r["kind"] == "train"]
    assert result.step == 3 and len(losses) == 3 and all(math.isfinite(x) for x in losses)


SMOKE = ("train", "--model", "smoke", "--steps", "3", "--micro-batch-size", "2", "--seq-len", "64",
         "--eval-every", "0", "--eval-tokens", "1024", "--log-every", "1", "--quiet")


@pytest.mark.parametrize("method,guide", [("galore", "sam"), ("relora", "align")])
def test_guided_training_through_the_cli(tmp_path, reference, method, guide):
    sets = [f"guide.{k}={v}" for k, v in OPTIONS[guide].items()]
    if guide == "align":
        sets.append(f"guide.reference={reference}")
    args = [a for s in sets for a in ("--set", s)]
    proc = run_cli(*SMOKE, "--method", method, "--guide", guide, *args, "--out-dir", tmp_path, "--name", "g")
    assert proc.returncode == 0, proc.stderr
    losses = [r["loss"] for r in read_metrics(tmp_path / "g") if r["kind"] == "train"]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)


def test_refused_combination_through_the_cli(tmp_path):
    proc = run_cli(*SMOKE, "--method", "cola", "--guide", "spectral", "--out-dir", tmp_path / "runs", "--name", "g")
    assert_clean_failure(proc, 2)
    assert "no dense matrix" in proc.stderr and "cola" in proc.stderr and not (tmp_path / "runs").exists()


def test_guides_command_lists_every_guide_and_option():
    from dataclasses import fields

    from rankscope.guides.registry import get_guide

    proc = run_cli("guides")
    assert proc.returncode == 0, proc.stderr
    for name in guides():
        assert f"{name}: " in proc.stdout
        for f in fields(get_guide(name).Config):
            assert f"    {f.name} = " in proc.stdout
