"""`methods: all`: every registered method in the study, in one order, with one colour each (issue 14)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rankscope.methods.order import METHOD_ORDER, in_order
from rankscope.methods.registry import available
from rankscope.study import load_study_config, run_study


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


def test_every_registered_method_has_a_place_in_the_order_and_a_colour():
    from rankscope.report.plots_common import method_color, ordered

    assert set(available()) <= set(METHOD_ORDER), "add the new method to rankscope/methods/order.py"
    colours = [method_color(m) for m in METHOD_ORDER]
    assert len(set(colours)) == len(METHOD_ORDER) >= 14
    assert ordered(["spam", "zeta", "galore", "full_rank"]) == ["full_rank", "galore", "spam", "zeta"]


@pytest.mark.parametrize("preset", ["smoke", "paper-60m", "paper-130m", "paper-350m"])
def test_methods_all_resolves_and_builds_every_method(preset, tmp_path):
    cfg = load_study_config(_write(tmp_path, f"base: {preset}\nmethods: all\n"))
    assert cfg.methods == tuple(in_order(available())) and len(cfg.methods) >= 14
    for run in cfg.to_run_configs(tmp_path):
        run.build_method()  # the preset's options and schedule constraints hold for every method


def run_cli(args: list[str]) -> None:
    """The in-process CLI; it may end with SystemExit(0) (exit codes are the CLI's contract)."""
    from rankscope.cli import main

    try:
        main(args)
    except SystemExit as exc:
        assert exc.code in (0, None), exc.code


def test_cli_lists_every_method_in_order(capsys):
    run_cli(["methods"])
    names = [line.split(":")[0] for line in capsys.readouterr().out.splitlines() if not line.startswith(" ")]
    assert names == in_order(available()) and len(names) >= 14


@pytest.mark.slow
def test_smoke_study_with_every_method_runs_end_to_end(tmp_path):
    cfg = load_study_config(_write(tmp_path, "base: smoke\nmethods: all\n"))
    out = tmp_path / "study"
    result = run_study(cfg, out, progress=False)
    assert not result.failed, [(j.id, j.error) for j in result.failed]
    from rankscope.report.load import load_study

    runs = {r.method for r in load_study(out).runs}
    assert runs == set(available())
    html = (out / "report.html").read_text()
    for method in available():
        assert f"{method}_s0" in html, method
    study = json.loads((out / "study.json").read_text())
    assert study["methods"] == in_order(available())


NEW_METHODS = [m for m in in_order(available()) if m not in METHOD_ORDER[:6]]


@pytest.mark.parametrize("method", NEW_METHODS)
def test_new_method_trains_the_smoke_model_through_the_cli(method, tmp_path, capsys):
    from rankscope.training.checkpoint import list_checkpoints

    run_cli(["train", "--model", "smoke", "--method", method, "--name", method, "--out-dir", str(tmp_path),
          "--steps", "2", "--seq-len", "32", "--micro-batch-size", "2", "--eval-every", "0",
          "--eval-tokens", "256", "--quiet"])
    assert list_checkpoints(tmp_path / method) == [2]
    memory = json.loads((tmp_path / method / "memory.json").read_text())
    state = next(r for r in memory["rows"] if r["quantity"] == "optimizer_state")
    assert state["rel_diff"] == 0.0  # held optimizer state = theory_counts


@pytest.mark.slow
@pytest.mark.parametrize("method,options", [("spam", ["density=0.5", "reset_every=2", "warmup=1", "clip_after=1"]),
                                            ("loro", ["exact_every=2", "rewarm=1"]), ("stable_spam", ["reset_every=2"]),
                                            ("muon", [])])
def test_two_ddp_processes_match_one(tmp_path, make_smoke_config, one_thread, method, options):
    """gloo DDP, 2 ranks x 2 sequences == 1 process x 2 micro-batches, across resets / exact steps / supports
    (SPAM's sparse supports are seeded, so both ranks draw the same ones). The single process runs on one
    thread like each rank: with two, float32 reductions alone moved LORO's factors by 2e-5 of their scale."""
    import dataclasses
    import os
    import subprocess
    import sys

    import torch
    from safetensors.torch import load_file

    from rankscope.training import checkpoint as ckpt
    from rankscope.training.loop import train

    opts = dict(o.split("=") for o in options)
    opts = {k: (float(v) if "." in v else int(v)) for k, v in opts.items()}
    single = dataclasses.replace(make_smoke_config("single", method=method, steps=4, micro_batch_size=2,
                                                   grad_accum=2), method_options=opts)
    train(single, progress=False)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "rankscope", "train", "--model", "smoke", "--method", method, "--steps", "4", "--micro-batch-size", "2",
           "--grad-accum", "1", "--seq-len", "64", "--eval-every", "0", "--eval-tokens", "1024",
           "--warmup-steps", "1", "--name", "ddp", "--out-dir", str(tmp_path), "--quiet",
           *[a for o in options for a in ("--set", o)]]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = load_file(ckpt.step_dir(single.run_dir, 4) / "model.safetensors")
    b = load_file(ckpt.step_dir(tmp_path / "ddp", 4) / "model.safetensors")
    assert a.keys() == b.keys()
    tol = 2e-2 if method == "muon" else 1e-4  # Muon: bf16 Newton-Schulz of slightly different sums
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=tol, atol=tol * 1e-1, msg=k)
