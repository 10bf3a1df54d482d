"""Fine-tuning probe: deterministic on CPU, resumes exactly, no forgetting at lr 0, cached per checkpoint."""

from __future__ import annotations

import pytest
import torch

from rankscope.downstream import finetune as FT
from rankscope.downstream.finetune import FinetuneSettings, finetune_runs
from rankscope.errors import UserError

SMALL = dict(steps=4, batch_size=4, max_tokens=24, max_train=16, max_test=12, forget_bytes=3000, bootstrap_iters=50,
             lr=1e-3, save_every=1)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from conftest import smoke_config

    from rankscope.training.loop import train

    cfg = smoke_config(tmp_path_factory.mktemp("ft"), "ftrun", steps=2)
    train(cfg, progress=False)
    return cfg.run_dir


def _values(frame):
    return dict(zip(frame["metric"], frame["value"]))


def test_deterministic_and_resumes_exactly(run_dir, one_thread):
    s = FinetuneSettings(**SMALL)
    first = _values(finetune_runs([run_dir], settings=s, use_cache=False))
    assert _values(finetune_runs([run_dir], settings=s, use_cache=False)) == first
    assert set(first) == set(FT.METRICS) and first["ft_forgetting"] != 0.0
    partial = finetune_runs([run_dir], settings=s, use_cache=False, stop_after=2)
    assert partial.empty and list((run_dir / "results" / "cache" / "finetune_state").glob("*.pt"))
    resumed = _values(finetune_runs([run_dir], settings=s, use_cache=False))
    assert resumed == first  # bit-exact: state after 2 updates + 2 more == 4 straight
    assert not list((run_dir / "results" / "cache" / "finetune_state").glob("*.pt"))


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_no_forgetting_when_lr_is_zero(run_dir, one_thread, mode):
    v = _values(finetune_runs([run_dir], settings=FinetuneSettings(**{**SMALL, "lr": 0.0, "mode": mode}),
                              use_cache=False))
    assert v["ft_forgetting"] == 0.0 and v["ft_nll_after"] == v["ft_nll_before"]
    assert v["ft_gain"] == pytest.approx(v["ft_acc"] - v["ft_zero_shot_acc"])


def test_lora_trains_only_adapters_and_head(run_dir, one_thread):
    from rankscope.data.tokenizer import load_tokenizer
    from rankscope.training.checkpoint import load_model, read_run_config

    model, _ = load_model(run_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    s = FinetuneSettings(**{**SMALL, "mode": "lora"})
    res = FT.finetune_model(model, load_tokenizer(), read_run_config(run_dir).data, s)
    after = {n.replace(".base.", "."): p for n, p in model.named_parameters() if "lora_" not in n}
    assert set(after) == set(before) and any(".base." in n for n, _ in model.named_parameters())
    assert all(torch.equal(after[n], before[n]) for n in before)  # the checkpoint's own weights never change
    assert any("lora_b" in n and p.abs().sum() > 0 for n, p in model.named_parameters())
    assert res["after"].nll.sum() != res["before"].nll.sum()


def test_results_are_cached_per_checkpoint(run_dir, one_thread, monkeypatch):
    s = FinetuneSettings(**{**SMALL, "steps": 1})
    first = finetune_runs([run_dir], settings=s)
    monkeypatch.setattr(FT, "finetune_model", lambda *a, **k: pytest.fail("recomputed a cached checkpoint"))
    assert _values(finetune_runs([run_dir], settings=s)) == _values(first)


def test_bad_settings_are_user_errors():
    with pytest.raises(UserError, match="mode"):
        FinetuneSettings(mode="adapter")
    with pytest.raises(UserError, match="lr"):
        FinetuneSettings(lr=-1.0)
    with pytest.raises(UserError, match="not a classification task"):
        FT._task_items(FinetuneSettings(task="cloze"))


def test_batch_order_depends_only_on_seed_and_step():
    a = [FT.batch_indices(k, 10, 4, 3) for k in range(5)]
    assert all((x == FT.batch_indices(k, 10, 4, 3)).all() for k, x in enumerate(a))
    assert sorted(list(a[0]) + list(a[1]) + list(a[2][:2])) == list(range(10))  # one epoch covers every item


def _registered() -> list[str]:
    from rankscope.methods.registry import available

    return available()


@pytest.mark.parametrize("method", _registered())
def test_two_probes_of_one_checkpoint_give_identical_rows(tmp_path, one_thread, method):
    """Every registered method. The global RNG is set differently before each probe, as two processes find it
    (torch seeds it anew in each): ReLoRA's adapter dropout once drew from it (issue 23, item 3)."""
    from conftest import smoke_config

    from rankscope.training.loop import train

    cfg = smoke_config(tmp_path, method, method=method, steps=1)
    train(cfg, progress=False)
    s = FinetuneSettings(**{**SMALL, "steps": 2, "bootstrap_iters": 20})
    frames = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        frames.append(finetune_runs([cfg.run_dir], settings=s, use_cache=False))
    assert frames[0].equals(frames[1]), (method, frames[0][["metric", "value"]], frames[1][["metric", "value"]])
    if method == "relora":  # its dropout draws per update: a probe stopped after update 1 resumes exactly
        torch.manual_seed(3)
        assert finetune_runs([cfg.run_dir], settings=s, use_cache=False, stop_after=1).empty
        torch.manual_seed(4)
        assert finetune_runs([cfg.run_dir], settings=s, use_cache=False).equals(frames[0])


def test_two_processes_probe_a_relora_checkpoint_to_identical_tables(tmp_path, one_thread):
    """The issue's reproduction through the console script: `rankscope finetune RUN --no-cache` twice (each
    process starts with its own global torch seed) gives byte-identical tables for a ReLoRA checkpoint."""
    import json

    from conftest import smoke_config
    from helpers_fs import RANKSCOPE, run_cli

    from rankscope.training.loop import train

    if not RANKSCOPE.exists():
        pytest.skip(f"console script {RANKSCOPE} not installed")
    cfg = smoke_config(tmp_path, "rl", method="relora", steps=2)
    train(cfg, progress=False)
    settings = json.dumps({**SMALL, "steps": 2, "bootstrap_iters": 20})
    for i in (1, 2):
        proc = run_cli("finetune", cfg.run_dir, "--no-cache", "--settings", settings, "--out", tmp_path / f"ft{i}")
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "ft1" / "finetune.parquet").read_bytes() == (tmp_path / "ft2" / "finetune.parquet").read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full_rank", "galore", "fira", "cola", "sltrain", "relora"])
def test_probe_runs_for_every_method_in_both_modes(tmp_path, one_thread, method):
    from conftest import smoke_config

    from rankscope.training.loop import train

    cfg = smoke_config(tmp_path, method, method=method, steps=1)
    train(cfg, progress=False)
    for mode in ("full", "lora"):
        s = FinetuneSettings(**{**SMALL, "steps": 2, "mode": mode})
        v = _values(finetune_runs([cfg.run_dir], settings=s, use_cache=False))
        assert set(v) == set(FT.METRICS) and all(x == x for x in v.values()), (method, mode, v)


def test_adaptation_note_says_whether_the_probe_adapted():
    from rankscope.downstream.finetune import adaptation_note

    assert "adapted: gain interval above 0" in adaptation_note(0.01)
    for low in (0.0, -0.2, float("nan"), None):
        assert "did not adapt" in adaptation_note(low)
