"""``rankscope study`` over existing runs: three external checkpoint series (dense labelled full_rank and
galore, and a ReLoRA-layout series) plus one rankscope run folder trained on its own, no training by the
study, the ordinary later stages (the predictor too: four models) and report."""

from __future__ import annotations

import json

import pandas as pd
import pytest

pytest.importorskip("transformers")

import helpers_hf as H  # noqa: E402
from helpers_fs import assert_clean_failure, run_cli, snapshot  # noqa: E402

STEPS = (10, 20)


def _series(root):
    H.series(root / "full", steps=STEPS, seed=0)
    H.series(root / "galore", steps=STEPS, seed=10)
    for i, step in enumerate(STEPS):
        H.release_checkpoint("relora", root / "relora" / f"model_{step}", seed=20 + i)
    for name, method in (("full", "full_rank"), ("galore", "galore")):
        (root / name / "rankscope_run.json").write_text(json.dumps({"method": method, "data": {"seq_len": 64}}))
    (root / "relora" / "rankscope_run.json").write_text(json.dumps({"name": "relora_ext", "data": {"seq_len": 64}}))
    from conftest import smoke_config

    from rankscope.training.loop import train

    train(smoke_config(root / "own", name="mine", method="galore", steps=4, save_steps=(2, 4)), progress=False)


CONFIG = """\
base: smoke
name: external_smoke
runs: [full, galore, {path: relora, seed: 0}, {path: own/mine, name: mine_rs}]
validation: embedded:test
analysis:
  metrics: [w_erank, ckpt_barrier, imib, act_cka]
  n_tokens: 256
  settings:
    ckpt_interpolation: {n_points: 3, max_tokens: 64}
    imib: {n_points: 3, max_tokens: 64}
downstream: {tasks: [cloze, agreement], max_items: 10, bootstrap_iters: 20}
ood: {texts: [], max_bytes: 2000, bootstrap_iters: 20, finetune: null}
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("ext_study")
    _series(root)
    (root / "study.yaml").write_text(CONFIG)
    proc = run_cli("study", "--config", root / "study.yaml", "--out", root / "out", "--quiet", timeout=600)
    return root, proc


@pytest.mark.slow
def test_analysis_only_study_over_three_external_series(study):
    root, proc = study
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = root / "out"
    status = json.loads((out / "status.json").read_text())
    states = {j["id"]: j["state"] for j in status["jobs"]}
    assert not [j for j, s in states.items() if s == "failed"], status
    assert states["validation"] == "done" and states["analyze"] == "done" and states["report"] == "done"
    diag = pd.read_parquet(out / "results" / "diagnostics.parquet")
    assert set(diag["run"]) == {"full", "galore", "relora_ext", "mine_rs"}
    assert set(diag["method"]) == {"full_rank", "galore", "relora"}
    assert set(diag.loc[diag["metric"] == "w_erank", "step"]) == {*STEPS, 2, 4}
    val = pd.read_parquet(out / "results" / "validation.parquet")
    assert len(val[val["metric"] == "heldout_ppl"]) == 3 * len(STEPS) + 2
    assert states["predict"] == "done" and (out / "results" / "prediction.json").is_file()
    parity = json.loads((out / "results" / "parity.json").read_text())
    assert parity["protocol"] == "existing-checkpoints" and parity["x_axis"] == "step"
    assert {r["main_run"] for r in parity["runs"]} == {"full", "galore", "relora_ext", "mine_rs"}
    study_json = json.loads((out / "study.json").read_text())
    assert study_json["analysis_only"] and len(study_json["existing_runs"]) == 4
    assert {r["kind"] for r in study_json["existing_runs"]} == {"external", "rankscope"}
    assert not (root / "full" / "checkpoints").exists()  # nothing trained, no run folder made of the series
    html = (out / "report.html").read_text()
    assert "relora_ext" in html and "galore" in html
    rep = run_cli("report", out)  # re-rendered from the folder alone
    assert rep.returncode == 0 and (out / "report.html").is_file(), rep.stderr
    # a second invocation computes nothing new
    again = run_cli("study", "--config", root / "study.yaml", "--out", out, "--quiet", timeout=600)
    assert again.returncode == 0, again.stderr
    states = {j["id"]: j["state"] for j in json.loads((out / "status.json").read_text())["jobs"]}
    assert states["validation"] == "skipped" and states["analyze"] == "skipped"


@pytest.mark.slow
@pytest.mark.browser
def test_external_study_report_in_browser(study):
    from rankscope.report.browser import check_page, find_chromium

    if find_chromium() is None:
        pytest.skip("headless Chromium not found")
    root, proc = study
    assert proc.returncode == 0, proc.stderr
    seen = check_page(root / "out" / "report.html")
    assert seen.probe_ran and seen.figures_total > 0
    assert seen.figures_ok == seen.figures_total and seen.console_errors == []


def test_runs_flag_dry_run_and_bad_run(tmp_path):
    """`rankscope study --runs A B --dry-run` lists the runs; a bad run is exit 2 with nothing written."""
    H.series(tmp_path / "a", steps=(1, 2))
    H.series(tmp_path / "b", steps=(3,))
    proc = run_cli("study", "--runs", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "out", "--dry-run",
                   "--preset", "smoke")
    assert proc.returncode == 0, proc.stderr
    assert "analysis only, 2 existing run(s)" in proc.stdout and "steps [1, 2]" in proc.stdout
    cfg = json.loads((tmp_path / "b" / "model_3" / "config.json").read_text())
    (tmp_path / "b" / "model_3" / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    before = snapshot(tmp_path)
    proc = run_cli("study", "--runs", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "out", "--preset", "smoke")
    assert_clean_failure(proc, 2)
    assert "model_type is 'gpt2'" in proc.stderr
    assert snapshot(tmp_path) == before
    proc = run_cli("study", tmp_path / "a", "--out", tmp_path / "out")
    assert_clean_failure(proc, 2)
    assert "--runs" in proc.stderr
