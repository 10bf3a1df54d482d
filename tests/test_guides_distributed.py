"""Guides under data parallelism: 2 gloo processes == 1 process with the same global batch (SAM's ε comes from
the all-reduced gradient, so every rank perturbs alike); FSDP is refused before anything is written."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers_guides import with_guide
from safetensors.torch import load_file
from test_distributed import _torchrun

from rankscope.errors import UserError
from rankscope.training import checkpoint as ckpt
from rankscope.training.dist import DistInfo
from rankscope.training.loop import checked_guide, train


@pytest.mark.slow
@pytest.mark.parametrize("guide,sets", [("sam", ["guide.rho=0.1"]), ("rwp", ["guide.mix=0.5", "guide.sigma=0.05"])])
def test_two_processes_match_one_with_a_guide(tmp_path, make_smoke_config, one_thread, guide, sets):
    options = dict(s.removeprefix("guide.").split("=") for s in sets)
    single = with_guide(make_smoke_config("single", steps=4, micro_batch_size=2, grad_accum=2), guide, **options)
    train(single, progress=False)
    proc = _torchrun(tmp_path, "ddp", ["--guide", guide, *[a for s in sets for a in ("--set", s)]])
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = load_file(ckpt.step_dir(single.run_dir, 4) / "model.safetensors")
    b = load_file(ckpt.step_dir(tmp_path / "ddp", 4) / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def test_fsdp_is_refused(make_smoke_config):
    cfg = with_guide(make_smoke_config(), "sam")
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, dist="fsdp"))
    info = DistInfo(rank=0, world=2, local_rank=0, device=torch.device("cpu"))
    with pytest.raises(UserError, match="cannot run under --dist fsdp"):
        checked_guide(cfg, cfg.build_method(), info)
    plain = dataclasses.replace(cfg, guide="", guide_options={})
    assert checked_guide(plain, plain.build_method(), info) is None
