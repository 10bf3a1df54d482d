"""No failure hides as a row of NaN (issue 12 §4): a corrupt checkpoint stops ``analyze`` (exit 1) naming it,
``--keep-going`` records it and still exits 1, the study marks its analyze stage failed, a run without
checkpoints is a user error (exit 2), and trajectory PCA on < 3 checkpoints says why in the notes."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
from helpers_fs import assert_clean_failure, run_cli
from test_analyze import _batch, _make_run

from rankscope.diagnostics import registry
from rankscope.diagnostics.analyze import analyze
from rankscope.diagnostics.table import read_table
from rankscope.errors import AnalysisFailed, UserError
from rankscope.training.checkpoint import step_dir

pytestmark = pytest.mark.usefixtures("one_thread")


def _corrupt(run_dir: Path, step: int) -> Path:
    """Overwrite the middle of a checkpoint's weights file: header intact, tensor bytes truncated."""
    path = step_dir(run_dir, step) / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return step_dir(run_dir, step)


def test_corrupt_checkpoint_stops_analyze_and_names_it(tmp_path):
    run = _make_run(tmp_path / "runs", "full", "full_rank", [1, 2])
    bad = _corrupt(run, 2)
    out = tmp_path / "analysis"
    with pytest.raises(AnalysisFailed) as err:
        analyze([run], metrics=["w_erank"], out=out, batch=_batch(), progress=False)
    msg = str(err.value)
    assert str(bad) in msg and "corrupt" in msg and "--keep-going" in msg
    assert err.value.frame is None and len(err.value.failures) == 1
    assert not (out / "diagnostics.parquet").exists()


def test_keep_going_records_every_failure_and_still_raises(tmp_path, monkeypatch):
    """Failures are rows, never cached: a re-run retries exactly the failed step."""
    run = _make_run(tmp_path / "runs", "full", "full_rank", [1, 2, 3])
    diag = registry.all_diagnostics()["spectra"]
    calls = []

    def flaky(ctx, **kw):
        calls.append(ctx.step)
        if ctx.step == 2:
            raise RuntimeError("corrupt matrix")
        return diag.fn(ctx, **kw)

    monkeypatch.setitem(registry._REGISTRY, "spectra", dataclasses.replace(diag, fn=flaky))
    out = tmp_path / "analysis"
    with pytest.raises(AnalysisFailed, match="1 task") as err:
        analyze([run], metrics=["w_erank"], out=out, batch=_batch(), progress=False, keep_going=True)
    assert "corrupt matrix" in str(err.value) and str(step_dir(run, 2)) in str(err.value)
    table = read_table(out / "diagnostics.parquet")
    errors = table[table.note.fillna("").str.startswith("error")]
    assert errors.step.tolist() == [2] and "corrupt matrix" in errors.note.iloc[0]
    assert {1, 3} <= set(table[table.metric == "w_erank"].step)
    assert err.value.frame is not None and len(err.value.frame) == len(table)
    with pytest.raises(AnalysisFailed):
        analyze([run], metrics=["w_erank"], out=out, batch=_batch(), progress=False, keep_going=True)
    assert calls == [1, 2, 3, 2]  # steps 1 and 3 cached, the failed step retried


def test_run_without_checkpoints_is_a_user_error(tmp_path):
    run = _make_run(tmp_path / "runs", "full", "full_rank", [])
    with pytest.raises(UserError, match="no complete checkpoint"):
        analyze([run], metrics=["w_erank"], out=tmp_path / "a", batch=_batch(), progress=False)


@pytest.mark.parametrize("steps, evr_rows", [([1, 2], 0), ([1, 2, 3], 1)])
def test_trajectory_pca_says_when_it_has_too_few_checkpoints(tmp_path, steps, evr_rows):
    run = _make_run(tmp_path / "runs", "full", "full_rank", steps)
    table = analyze([run], metrics=["traj_pca_evr"], out=tmp_path / "a", batch=_batch(), progress=False,
                    settings={"trajectory": {"n_points": 3, "max_tokens": 32}})
    evr = table[table.metric == "traj_pca_evr"]
    if evr_rows == 0:
        assert len(evr) == 1 and math.isnan(evr.value.iloc[0]) and evr.step.iloc[0] == steps[-1]
        assert evr.note.iloc[0].startswith("skipped: trajectory PCA needs at least 3 checkpoints")
    else:
        assert len(evr) == evr_rows and evr.value.notna().all() and not evr.note.fillna("").any()


def test_study_marks_analyze_failed_and_keeps_the_table(tmp_path):
    from rankscope.config import RunConfig
    from rankscope.study import stages
    from rankscope.study.config_file import load_study_config
    from rankscope.study.execute import run_stage
    from rankscope.study.jobs import Job, StatusBook

    runs_root = tmp_path / "study" / "runs"
    run = _make_run(runs_root, "full_rank_s0", "full_rank", [1, 2])
    _corrupt(run, 1)
    cfg = load_study_config("smoke")
    cfg = dataclasses.replace(cfg, analysis=dataclasses.replace(cfg.analysis, metrics=("w_erank",), n_tokens=64))
    runs = [RunConfig(name="full_rank_s0", out_dir=str(runs_root), model="smoke")]
    results = tmp_path / "study" / "results"
    results.mkdir(parents=True)
    job = Job("analyze", "analyze")
    book = StatusBook(tmp_path / "study" / "status.json", [job])
    run_stage(job, stages.analysis_stamp(cfg, runs, results),
               lambda: stages.run_analyze(cfg, runs, results, progress=False), book, tmp_path / "study")
    assert job.state == "failed" and "AnalysisFailed" in job.error and "step_000001" in job.error
    table = read_table(results / "diagnostics.parquet")
    assert table[table.step == 1].note.str.startswith("error").all()
    assert not stages.analysis_stamp(cfg, runs, results).fresh()  # a re-run retries


def test_console_script_corrupt_checkpoint_exits_1(tmp_path):
    run = _make_run(tmp_path / "runs", "full", "full_rank", [1, 2])
    bad = _corrupt(run, 2)
    out = tmp_path / "analysis"
    proc = run_cli("analyze", str(run), "--out", str(out), "-m", "w_erank", "--quiet", "--n-tokens", "64")
    assert_clean_failure(proc, 1)
    assert str(bad) in proc.stderr and not (out / "diagnostics.parquet").exists()

    proc = run_cli("analyze", str(run), "--out", str(out), "-m", "w_erank", "--quiet", "--n-tokens", "64",
                   "--keep-going")
    assert_clean_failure(proc, 1)
    table = read_table(out / "diagnostics.parquet")
    assert table[table.step == 2].note.str.startswith("error").all() and (table.step == 1).any()


def test_console_script_run_without_checkpoints_exits_2(tmp_path):
    empty = _make_run(tmp_path / "runs", "empty", "full_rank", [])
    proc = run_cli("analyze", str(empty), "--out", str(tmp_path / "a2"), "-m", "w_erank", "--quiet")
    assert_clean_failure(proc, 2)
    assert "no complete checkpoint" in proc.stderr and str(empty) in proc.stderr


def test_no_nan_row_without_a_note(tmp_path):
    """Undefined values (a zero matrix's spectral gap, the variance of one direction) say why in the note."""
    from safetensors.torch import load_file, save_file

    run = _make_run(tmp_path / "runs", "full", "full_rank", [1])
    path = step_dir(run, 1) / "model.safetensors"
    state = load_file(path)
    zeroed = next(k for k in state if k.endswith("down_proj.weight"))
    state[zeroed] = state[zeroed].zero_()
    save_file(state, path)
    table = analyze([run], metrics=["w_spectral_gap", "rand_variance"], out=tmp_path / "a", batch=_batch(),
                    progress=False, settings={"landscape_random": {"n_directions": 1, "n_points": 3,
                                                                   "max_tokens": 32}})
    bad = table[~table.value.apply(math.isfinite)]
    assert len(bad) and bad.note.fillna("").str.len().gt(0).all(), bad[["metric", "name", "note"]]
    gap = table[(table.metric == "w_spectral_gap") & (table.scope == "matrix") & table.name.str.contains("down_proj")]
    assert gap.note.str.startswith("undefined: a zero matrix").any()
    model_gap = table[(table.metric == "w_spectral_gap") & (table.scope == "model")]
    assert math.isfinite(model_gap.value.iloc[0]) and "mean over" in model_gap.note.iloc[0]
    assert "n_directions >= 2" in table[table.metric == "rand_variance"].note.iloc[0]


def test_groups_with_nothing_to_compute_say_why(tmp_path):
    cola = _make_run(tmp_path / "runs", "cola", "cola", [1])
    table = analyze([cola], metrics=["dw_erank", "act_cka", "imib", "w_erank"], out=tmp_path / "a",
                    batch=_batch(), progress=False)
    skipped = table[table.note.fillna("").str.startswith("skipped")].set_index("metric").note
    assert "needs two checkpoints of the run; it has 1" in skipped["update_spectra"]
    assert "no full_rank run of scale 'smoke'" in skipped["activations"]
    assert "no paired run (another method, same init and data seed) or sibling" in skipped["imib"]
    assert "spectra" not in skipped and (table.metric == "w_erank").any()
