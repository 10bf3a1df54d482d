"""Every method under FSDP2 (``--dist fsdp``, 2 gloo processes on CPU): runs and equals one process with the
same global batch, or refuses with a message; projected methods resume exactly and hold 1/world of the state.

Projected optimizers run behind rankscope/optim/whole_matrix.py (each matrix owned whole by one rank). Small
refresh gaps put several projector refreshes (and Fira's limiter, APOLLO's redraws) inside the 6 updates.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rankscope.config import RunConfig
from rankscope.methods.registry import available, get_method
from rankscope.training import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = {"galore": ["update_proj_gap=2"], "fira": ["update_proj_gap=2"], "golore": ["update_proj_gap=2"],
           "apollo": ["update_proj_gap=2"], "apollo_mini": ["update_proj_gap=2"],
           "relora": ["reset_every=3", "rewarm=1"]}  # N = 6 must be a multiple of reset_every
PROJECTED = ("galore", "fira", "golore", "apollo", "apollo_mini")
FSDP_METHODS = [m for m in available() if get_method(m).supports_fsdp]
REFUSED = [m for m in available() if not get_method(m).supports_fsdp]
COMMON = ["--model", "smoke", "--steps", "6", "--micro-batch-size", "2", "--seq-len", "64", "--eval-every", "0",
          "--eval-tokens", "1024", "--warmup-steps", "1", "--quiet"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _sets(method: str) -> list[str]:
    return [x for kv in OPTIONS.get(method, []) for x in ("--set", kv)]


def _torchrun(tmp_path: Path, name: str, method: str, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "rankscope",
           "train", *COMMON, "--method", method, "--dist", "fsdp", "--name", name, "--out-dir", str(tmp_path),
           *_sets(method), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)


def _finished(proc: subprocess.CompletedProcess, run_dir: Path, step: int = 6) -> None:
    """gloo sometimes aborts *after* destroy_process_group (performance.md): what the ranks wrote counts."""
    if proc.returncode != 0:
        assert step in ckpt.list_checkpoints(run_dir), proc.stderr[-3000:]


def _close(a_file: Path, b_file: Path, rtol: float = 1e-5, atol: float = 1e-7) -> None:
    a, b = load_file(a_file), load_file(b_file)
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=k)


def _close_adam(a_file: Path, b_file: Path, lr: float, steps: int = 6) -> None:
    """Weights equal within float tolerance except where Adam amplifies round-off: entries whose gradient is
    ~0 move by ±lr·m̂/√v̂ whatever the gradient's last bits are (e.g. clipping by a global norm summed in
    another order). At most 0.1 % of the entries may differ, and by no more than Adam's bound of ~4·lr a step.
    """
    a, b = load_file(a_file), load_file(b_file)
    assert a.keys() == b.keys()
    for k in a:
        diff = (a[k] - b[k]).abs()
        off = diff > 1e-6 + 1e-4 * b[k].abs()
        assert off.float().mean() <= 1e-3 and diff.max() <= 4 * lr * steps, (k, off.float().mean(), diff.max())


@pytest.mark.slow
@pytest.mark.parametrize("method", FSDP_METHODS)
def test_fsdp_two_ranks_equal_one_process(tmp_path, method):
    single = tmp_path / "single"
    proc = subprocess.run([sys.executable, "-m", "rankscope", "train", *COMMON, "--method", method, "--grad-accum",
                           "2", "--name", "single", "--out-dir", str(tmp_path), *_sets(method)],
                          capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fsdp = tmp_path / "fsdp"
    _finished(_torchrun(tmp_path, "fsdp", method), fsdp)
    a, b = ckpt.step_dir(single, 6), ckpt.step_dir(fsdp, 6)
    if method in PROJECTED:  # the owner runs the single-process algorithm on the same gradients: bit-close
        _close(a / "model.safetensors", b / "model.safetensors", rtol=1e-4, atol=1e-6)
    else:
        _close_adam(a / "model.safetensors", b / "model.safetensors",
                    RunConfig(model="smoke", method=method).method_config().lr)
    if method in PROJECTED:  # single-process layout: moments, projectors, ζ, seeds, counters all comparable
        _close(a / "optimizer.safetensors", b / "optimizer.safetensors", rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["galore", "fira"])
def test_fsdp_resume_is_exact(tmp_path, method):
    straight = tmp_path / "straight"
    _finished(_torchrun(tmp_path, "straight", method, "--save-steps", "3"), straight)
    resumed = tmp_path / "resumed"  # the straight run as it was after update 3, then resumed under FSDP
    shutil.copytree(straight, resumed)
    shutil.rmtree(ckpt.step_dir(resumed, 6))
    _finished(_torchrun(tmp_path, "resumed", method, "--resume"), resumed)
    for name in ("model.safetensors", "optimizer.safetensors", "method.safetensors"):
        a, b = ckpt.step_dir(straight, 6) / name, ckpt.step_dir(resumed, 6) / name
        if a.exists():
            ta, tb = load_file(a), load_file(b)
            assert ta.keys() == tb.keys()
            for k in ta:
                assert torch.equal(ta[k], tb[k]), f"{name}: {k}"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["galore", "fira"])
def test_per_rank_state_is_the_closed_form_over_world(tmp_path, method):
    out = tmp_path / "mem.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "benchmarks" / "bench_fsdp_memory.py"), "--model", "smoke", "--method", method,
           "--dist", "fsdp", "--seq-len", "64", "--micro-batch-size", "2", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    if proc.returncode != 0:
        assert out.exists(), proc.stderr[-3000:]
    ranks = json.loads(out.read_text())["ranks"]
    cfg = RunConfig(model="smoke", method=method)
    theory = 4 * cfg.method_class().theory_counts(cfg.model_config(), cfg.method_config())["state"]
    assert sum(r["state_bytes"] for r in ranks) == theory
    for r in ranks:  # smoke's matrices balance exactly over 2 ranks; Fira's ζ are 4-byte scalars
        assert abs(r["state_bytes"] - theory / 2) <= 8, (r, theory / 2)


@pytest.mark.slow
@pytest.mark.parametrize("method", REFUSED)
def test_methods_without_fsdp_refuse_with_a_reason(tmp_path, method):
    proc = _torchrun(tmp_path, "refused", method)
    assert proc.returncode != 0
    assert "cannot run under --dist fsdp" in proc.stderr and "--dist ddp" in proc.stderr, proc.stderr[-2000:]


def test_owners_balance_every_preset_exactly_over_2_and_4_ranks():
    from rankscope.models.llama import target_shapes
    from rankscope.models.presets import model_config
    from rankscope.optim.whole_matrix import owners

    for preset in ("smoke", "60m", "130m", "350m", "1b"):
        sizes = [m * n for _, m, n in target_shapes(model_config(preset))]
        for world in (2,) if preset == "smoke" else (2, 4):  # smoke: 6 MLP matrices do not split 4 ways
            who = owners(sizes, world)
            loads = [sum(s for s, o in zip(sizes, who) if o == r) for r in range(world)]
            assert len(set(loads)) == 1, (preset, world, loads)
    assert owners([5, 1, 1, 3], 2) == [0, 1, 1, 1]  # largest first onto the least-loaded rank


def test_local_rows_follow_chunk_semantics_with_uneven_and_empty_shards():
    from rankscope.optim.whole_matrix import local_rows

    full = torch.arange(10.0).reshape(5, 2)
    assert [local_rows(full, r, 2).shape[0] for r in range(2)] == [3, 2]
    assert [local_rows(full, r, 4).shape[0] for r in range(4)] == [2, 2, 1, 0]
    assert torch.equal(torch.cat([local_rows(full, r, 4) for r in range(4)]), full)
