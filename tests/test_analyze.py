"""``analyze``: scheduling per kind, the per-task cache (a rerun does no work), error rows, no reference."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rankscope.config import RunConfig
from rankscope.diagnostics import registry
from rankscope.diagnostics.analyze import HEADLINE_METRICS, analyze, resolve_groups
from rankscope.diagnostics.context import EvalBatch, RunHandle
from rankscope.diagnostics.table import read_table
from rankscope.errors import UserError

METRICS = ["w_erank", "dw_rel_fro", "act_cka"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _make_run(root: Path, name: str, method: str, steps: list[int]) -> Path:
    """A real run folder (config.json + safetensors checkpoints), written without training."""
    from rankscope.methods.base import Schedule
    from rankscope.models.llama import LlamaLM

    cfg = RunConfig(name=name, out_dir=str(root), model="smoke", method=method)
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), default=list))
    torch.manual_seed(0)
    method = cfg.method_class()(cfg.method_config(), Schedule(10, 1))
    model = method.prepare(LlamaLM(cfg.model_config()))
    for step in steps:
        _save(run_dir, model, step, method.state_dict())
    return run_dir


def _save(run_dir: Path, model: torch.nn.Module, step: int, method_state: dict | None = None) -> None:
    from rankscope.training.checkpoint import save_checkpoint

    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_checkpoint(run_dir, step, model_state=model.state_dict(), optimizer_state=None,
                    method_state=method_state or {}, rng_states=[], train_state={"step": step})


def _batch() -> EvalBatch:
    ids = torch.randint(0, 8192, (4, 16), generator=torch.Generator().manual_seed(0))
    labels = torch.roll(ids, -1, 1)
    labels[:, -1] = -100
    return EvalBatch(ids, labels, micro_batch=2)


@pytest.fixture
def counted(monkeypatch):
    """Wrap the three groups' registry entries so each test can count real computations."""
    calls: dict[str, int] = {}
    diags = registry.all_diagnostics()
    for name in ("spectra", "update_spectra", "activations"):
        def wrapped(ctx, _fn=diags[name].fn, _name=name, **kw):
            calls[_name] = calls.get(_name, 0) + 1
            return _fn(ctx, **kw)
        monkeypatch.setitem(registry._REGISTRY, name, dataclasses.replace(diags[name], fn=wrapped))
    return calls


def test_second_call_does_no_work_and_new_checkpoints_are_computed(tmp_path, counted):
    full = _make_run(tmp_path / "runs", "full", "full_rank", [1, 2])
    cola = _make_run(tmp_path / "runs", "cola", "cola", [1, 2])
    out = tmp_path / "analysis"
    first = analyze([full, cola], metrics=METRICS, out=out, batch=_batch(), progress=False)
    assert counted == {"spectra": 4, "update_spectra": 2, "activations": 4}
    assert (out / "diagnostics.parquet").is_file() and (out / "diagnostics.csv").is_file()
    assert not first.note.str.startswith("error").any()
    cka = first[(first.metric == "act_cka") & (first.scope == "model")].set_index(["run", "step"]).value
    assert cka[("full", 2)] == pytest.approx(1.0, abs=1e-12) and cka[("cola", 2)] < 0.999

    second = analyze([full, cola], metrics=METRICS, out=out, batch=_batch(), progress=False)
    assert counted == {"spectra": 4, "update_spectra": 2, "activations": 4}  # all from the cache
    timings = json.loads((out / "analysis_timings.json").read_text())["groups"]
    assert timings["spectra"]["cached"] == 4 and timings["spectra"]["computed"] == 0
    key = ["run", "step", "metric", "scope", "name", "space"]
    pd_first, pd_second = (f.sort_values(key).reset_index(drop=True) for f in (first, second))
    assert pd_first[key].equals(pd_second[key])
    assert pd_first.value.fillna(-1).tolist() == pd_second.value.fillna(-1).tolist()
    assert len(read_table(out / "diagnostics.parquet")) == len(second)

    model = RunHandle.open(cola).native_model(2)
    _save(cola, model, 3)  # a new checkpoint: only its spectra and the 2→3 update are new
    analyze([full, cola], metrics=METRICS, out=out, batch=_batch(), progress=False)
    assert counted == {"spectra": 5, "update_spectra": 3, "activations": 4}  # step 3 has no reference

    analyze([full, cola], metrics=METRICS, out=out, batch=_batch(), progress=False,
            settings={"spectra": {"dtype": "float64"}})  # new settings: spectra recomputed, rest cached
    assert counted == {"spectra": 10, "update_spectra": 3, "activations": 4}


def test_no_reference_warns_and_skips(tmp_path, caplog):
    cola = _make_run(tmp_path / "runs", "cola", "cola", [1])
    with caplog.at_level(logging.WARNING):
        df = analyze([cola], metrics=["act_cka", "w_erank"], out=tmp_path / "a", batch=_batch(), progress=False)
    assert "no full-rank run" in caplog.text
    assert not (df.metric == "act_cka").any() and (df.metric == "w_erank").any()


def test_metric_resolution():
    groups = resolve_groups(["w_erank", "w_stable_rank", "dw_erank", "act_cos"])
    assert list(groups) == ["spectra", "update_spectra", "activations"]
    with pytest.raises(UserError):
        resolve_groups(["no_such_metric"])
    assert len(HEADLINE_METRICS) == 16
    with pytest.raises(UserError):
        analyze([], metrics=["w_erank"], progress=False)


@pytest.mark.slow
def test_end_to_end_with_trained_smoke_runs(tmp_path):
    """``rankscope train --model smoke`` for two methods, then analyze with the real evaluation batch."""
    for method in ("full_rank", "galore"):
        subprocess.run(
            [sys.executable, "-m", "rankscope.cli", "train", "--model", "smoke", "--method", method,
             "--name", method, "--out-dir", str(tmp_path / "runs"), "--steps", "4", "--save-every", "2",
             "--seq-len", "32", "--micro-batch-size", "2", "--eval-every", "0", "--eval-tokens", "256",
             "--quiet"], check=True, capture_output=True)
    runs = [tmp_path / "runs" / m for m in ("full_rank", "galore")]
    df = analyze(runs, metrics=METRICS, out=tmp_path / "a", n_tokens=1024, progress=False)
    assert not df.note.str.startswith("error").any()
    cka = df[(df.metric == "act_cka") & (df.scope == "model")]
    assert len(cka) == 4 and cka.value.between(0, 1 + 1e-9).all()
    assert set(df[df.metric == "dw_rel_fro"].step_b.dropna()) == {4}


def test_worker_processes_give_the_same_table(tmp_path):
    """workers=2 (spawned processes, one thread each) computes exactly what the in-process path does,
    including an interpolation group whose end-point memo only lives inside a worker."""
    full = _make_run(tmp_path / "runs", "full", "full_rank", [1, 2])
    relora = _make_run(tmp_path / "runs", "relora", "relora", [1, 2])
    metrics = ["w_erank", "act_cka", "imib", "ckpt_barrier"]
    settings = {"imib": {"n_points": 3}, "ckpt_interpolation": {"n_points": 3}}
    one = analyze([full, relora], metrics=metrics, out=tmp_path / "a", batch=_batch(), progress=False,
                  settings=settings)
    two = analyze([full, relora], metrics=metrics, out=tmp_path / "b", batch=_batch(), progress=False,
                  settings=settings, workers=2)
    assert not one.note.astype(str).str.startswith("error").any()
    key = ["run", "step", "metric", "scope", "name", "space"]
    assert one[key].equals(two[key])  # same rows in the same order
    assert one.value.fillna(-1).tolist() == pytest.approx(two.value.fillna(-1).tolist(), rel=1e-12, abs=1e-12)


def test_pair_at_last_pairs_models_at_their_own_steps(tmp_path):
    """Parity pairing: galore@2 against full@3 equals the equal-step analysis of the same two checkpoints."""
    import shutil

    from rankscope.training.checkpoint import step_dir

    full = _make_run(tmp_path / "runs", "full", "full_rank", [1, 3])
    galore = _make_run(tmp_path / "runs", "galore", "galore", [2])
    aligned = tmp_path / "aligned" / "full"  # full's step-3 weights filed as step 2
    aligned.mkdir(parents=True)
    shutil.copy(full / "config.json", aligned / "config.json")
    shutil.copytree(step_dir(full, 3), step_dir(aligned, 2))
    metrics = ["act_cka", "imib"]
    kw = dict(metrics=metrics, batch=_batch(), progress=False, use_cache=False)
    at_last = analyze([full, galore], out=tmp_path / "last", pair_at="last", **kw)
    equal = analyze([aligned, galore], out=tmp_path / "equal", **kw)

    def pick(frame, metric, run, scope):
        rows = frame[(frame.metric == metric) & (frame.run == run) & (frame.scope == scope)]
        return rows.dropna(subset=["value"])

    cka_last, cka_equal = pick(at_last, "act_cka", "galore", "model"), pick(equal, "act_cka", "galore", "model")
    assert list(cka_last.step) == [2] and list(cka_last.step_b) == [3]
    assert cka_last.value.iloc[0] == pytest.approx(cka_equal.value.iloc[0], rel=1e-9)
    assert cka_last.value.iloc[0] < 1 - 1e-6  # a different model, not full against itself
    imib_last, imib_equal = pick(at_last, "imib", "full", "pair"), pick(equal, "imib", "full", "pair")
    assert list(imib_last.step) == [3] and list(imib_last.step_b) == [2]
    assert imib_last.value.iloc[0] == pytest.approx(imib_equal.value.iloc[0], rel=1e-9)
    # at equal steps the two share no step: no pairs, and the table says why instead of a gap
    none = analyze([full, galore], out=tmp_path / "none", **kw)
    assert pick(none, "act_cka", "galore", "model").empty
    assert none[(none.metric == "imib")].note.str.startswith("skipped:").all()
