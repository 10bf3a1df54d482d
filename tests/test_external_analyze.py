"""An external series exported from a rankscope run gives the same tables as the run folder itself, through
the console script: analyze (checkpoint + consecutive metrics), eval and ppl, mixed in one call."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import smoke_config
from helpers_fs import run_cli

METRICS = ["w_erank", "ckpt_barrier", "dw_rel_fro"]
KEY = ["metric", "step", "step_b", "scope", "name", "space"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A 4-step smoke run with checkpoints 2 and 4, and the same two checkpoints exported as model_<step>/."""
    from rankscope.training.loop import train

    root = tmp_path_factory.mktemp("external_pair")
    cfg = smoke_config(root, name="orig", steps=4, save_steps=(2, 4))
    train(cfg, progress=False)
    ext = root / "exported"
    for step in (2, 4):
        proc = run_cli("export-hf", cfg.run_dir, ext / f"model_{step}", "--step", step)
        assert proc.returncode == 0, proc.stderr
    (ext / "rankscope_run.json").write_text(json.dumps({"name": "orig", "method": "full_rank", "seed": 0,
                                                        "data": {"seq_len": 64}}))
    return cfg.run_dir, ext, root


def _table(path):
    return pd.read_csv(path / "diagnostics.csv")


def test_analyze_equals_source_run(pair):
    run_dir, ext, root = pair
    for src, out in ((run_dir, root / "a_run"), (ext, root / "a_ext")):
        proc = run_cli("analyze", src, "--out", out, "--quiet", *[a for m in METRICS for a in ("-m", m)])
        assert proc.returncode == 0, proc.stderr
    a, b = _table(root / "a_run"), _table(root / "a_ext")
    assert set(a["metric"]) >= {"w_erank", "ckpt_barrier", "dw_rel_fro"} and len(a) == len(b)
    for col in ("run", "method", "scale", "seed"):
        assert list(a[col].unique()) == list(b[col].unique())
    a, b = (t.sort_values(KEY, na_position="first").reset_index(drop=True) for t in (a, b))
    pd.testing.assert_frame_equal(a[KEY], b[KEY])
    pd.testing.assert_series_equal(a["value"], b["value"], rtol=1e-5, atol=1e-6)
    assert sorted(set(a["step"])) == [2, 4] and set(a.loc[a["metric"] == "ckpt_barrier", "step_b"]) == {4}


def test_eval_and_ppl_mix_external_and_rankscope_runs(pair):
    """One call over both kinds: identical scores for the same weights."""
    run_dir, ext, root = pair
    proc = run_cli("ppl", run_dir, ext, "--text", "val", "--max-bytes", "3000", "--out", root / "ppl")
    assert proc.returncode == 0, proc.stderr
    for sub in (run_dir / "results" / "heldout.csv", ext / "results" / "heldout.csv"):
        assert sub.is_file()
    a, b = (pd.read_csv(p / "results" / "heldout.csv") for p in (run_dir, ext))
    va, vb = (t.loc[t["metric"] == "heldout_ppl", "value"].iloc[0] for t in (a, b))
    assert va == pytest.approx(vb, rel=1e-6)
    proc = run_cli("eval", ext, run_dir, "--max-items", "10", "--task", "cloze")
    assert proc.returncode == 0, proc.stderr
    a, b = (pd.read_csv(p / "results" / "downstream.csv") for p in (run_dir, ext))
    assert a["value"].tolist() == pytest.approx(b["value"].tolist(), rel=1e-6)


def test_finetune_probe_on_external_equals_source(pair):
    run_dir, ext, root = pair
    settings = json.dumps({"steps": 2, "batch_size": 4, "max_tokens": 24, "max_train": 16, "max_test": 12,
                           "forget_bytes": 2000, "bootstrap_iters": 20})
    proc = run_cli("finetune", ext, run_dir, "--settings", settings)
    assert proc.returncode == 0, proc.stderr
    a, b = (pd.read_csv(p / "results" / "finetune.csv").sort_values("metric") for p in (run_dir, ext))
    assert list(a["metric"]) == list(b["metric"]) and len(a) >= 3
    assert a["value"].tolist() == pytest.approx(b["value"].tolist(), rel=1e-5, abs=1e-6)
