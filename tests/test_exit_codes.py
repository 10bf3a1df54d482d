"""Exit codes through the installed ``rankscope`` console script, for every subcommand (README: exit codes).

0 success, 1 failed work, 2 user or usage error (one short paragraph on stderr, no traceback), 130 on
Ctrl-C. Every refused command leaves the folders it was pointed at byte-identical.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers_fs import RANKSCOPE, assert_clean_failure, assert_unchanged, cli_env, run_cli, snapshot

from rankscope.cli import INTERRUPTED

pytestmark = pytest.mark.skipif(not RANKSCOPE.exists(), reason=f"console script {RANKSCOPE} not installed")

TRAIN = ("--model", "smoke", "--micro-batch-size", "2", "--seq-len", "64", "--eval-every", "0", "--quiet")


def _commands() -> tuple[str, ...]:
    """Every registered subcommand, so a new one is covered by the usage-error tests without editing them."""
    from rankscope.cli import _register_optional_commands, app

    _register_optional_commands()
    return tuple(c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands)


COMMANDS = _commands()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A 4-step smoke run with checkpoints at steps 2 and 4, trained through the console script."""
    root = tmp_path_factory.mktemp("cli")
    proc = run_cli("train", *TRAIN, "--steps", "4", "--save-every", "2", "--out-dir", root, "--name", "r")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return root / "r"


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory) -> Path:
    import pandas as pd
    from helpers_report import make_synthetic_study

    study = make_synthetic_study(tmp_path_factory.mktemp("study") / "s", n_checkpoints=3)
    runs = sorted(p.name for p in (study / "runs").iterdir())
    pd.DataFrame({"run": runs, "method": [r.rsplit("_s", 1)[0] for r in runs], "seed": 0,
                  "ppl": [30.0 + i for i in range(len(runs))]}).to_csv(
        study / "results" / "runs.csv", index=False)  # what the study's predict stage writes beside the tables
    return study


# ------------------------------------------------------------------------------------------- usage errors

@pytest.mark.parametrize("command", COMMANDS)
def test_unknown_flag_is_one_line_exit_2(command):
    proc = run_cli(command, "--no-such-flag")
    assert_clean_failure(proc, 2)
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "--no-such-flag" in proc.stderr and f"rankscope {command} --help" in proc.stderr


@pytest.mark.parametrize("command, argument", [("analyze", "run_dirs"), ("eval", "run_dirs"),
                                               ("predict", "table_dir"), ("report", "study_dirs"),
                                               ("export-hf", "run_dir")])
def test_missing_argument_is_one_line_exit_2(command, argument):
    proc = run_cli(command)
    assert_clean_failure(proc, 2)
    assert proc.stderr.strip().count("\n") == 0 and f"Missing argument '{argument}'" in proc.stderr


@pytest.mark.parametrize("args, names", [
    (("train", "--steps", "abc"), "'--steps'"),
    (("analyze", "x", "--n-tokens", "many"), "'--n-tokens'"),
    (("eval", "x", "--max-items", "1.5"), "'--max-items'"),
    (("export-hf", "x", "y", "--step", "last"), "'--step'"),
    (("nosuchcommand",), "No such command"),
])
def test_bad_value_is_one_line_exit_2(tmp_path, args, names):
    proc = run_cli(*args, cwd=tmp_path)
    assert_clean_failure(proc, 2)
    assert proc.stderr.strip().count("\n") == 0 and names in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing was started


@pytest.mark.parametrize("args, first", [
    (("--steps", "-5"), "train.steps=-5"),  # not "decay_steps ... (-5 - -1)": the sign is checked first
    (("--steps", "10", "--schedule", "wsd", "--decay-steps", "-2", "--save-every", "-1"), "train.decay_steps=-2"),
])
def test_negative_step_counts_name_the_first_invalid_field(tmp_path, args, first):
    proc = run_cli("train", "--model", "smoke", *args, "--out-dir", tmp_path / "runs", "--name", "r", cwd=tmp_path)
    assert_clean_failure(proc, 2)
    assert proc.stderr.startswith(f"error: {first}"), proc.stderr
    assert not any(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.parametrize("kw, first", [
    (dict(steps=0, warmup_steps=-7), "train.steps=0"),
    (dict(steps=10, warmup_steps=-3), "train.warmup_steps=-3"),
    (dict(steps=10, eval_every=-1), "train.eval_every=-1"),
    (dict(steps=10, save_every=-4, log_every=-1), "train.save_every=-4"),
    (dict(steps=10, log_every=-1), "train.log_every=-1"),
    (dict(steps=10, eval_tokens=0), "train.eval_tokens=0"),
    (dict(steps=10, max_bad_steps=-1), "train.max_bad_steps=-1"),
    (dict(steps=10, save_steps=(0,)), "train.save_steps=[0]"),
    (dict(steps=2.5), "train.steps=2.5"),
    (dict(steps=10, warmup_steps=11), "train.warmup_steps=11 is longer than train.steps=10"),
])
def test_every_count_is_checked_for_sign_first(kw, first):
    from rankscope.config import TrainConfig
    from rankscope.errors import UserError

    with pytest.raises(UserError) as err:
        TrainConfig(**kw)
    assert str(err.value).startswith(first), str(err.value)


def test_every_readme_subcommand_is_covered():
    assert set(COMMANDS) >= {"train", "analyze", "eval", "predict", "study", "report", "methods", "export-hf"}


def test_bare_command_prints_help_exit_2():
    proc = run_cli()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert all(c in proc.stdout + proc.stderr for c in COMMANDS)


# ------------------------------------------------------------------------------------------ success: 0

@pytest.mark.slow  # subprocesses that import torch and train: ~10-60 s
def test_success_exit_0_for_every_subcommand(run_dir, study_dir, tmp_path):
    ok = [
        ("methods",),
        ("train", "--help"),
        ("export-hf", run_dir, tmp_path / "hf"),
        ("analyze", run_dir, "--out", tmp_path / "analysis", "-m", "w_erank", "--n-tokens", "64", "--quiet"),
        ("report", study_dir, "--out", tmp_path / "report.html"),
        ("predict", study_dir / "results", "--out", tmp_path / "pred", "--bootstrap-iters", "20"),
        ("study", "--preset", "smoke", "--out", tmp_path / "study", "--dry-run"),
    ]
    copy = tmp_path / "run_copy"  # eval writes results/ into its run folder
    shutil.copytree(run_dir, copy)
    ok.append(("eval", copy, "--max-items", "4", "--task", "cloze", "--out", tmp_path / "evals"))
    for args in ok:
        proc = run_cli(*args)
        assert proc.returncode == 0, (args, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr, args
    assert (tmp_path / "hf" / "config.json").is_file() and (tmp_path / "report.html").is_file()
    assert not (tmp_path / "study").exists()  # a dry run writes nothing
    for items in (copy / "results" / "downstream_items.parquet", tmp_path / "evals" / "downstream_items.parquet"):
        rows = pd.read_parquet(items)  # eval keeps one row per scored item: cloze, 4 items, acc and acc_norm
        assert sorted(rows["metric"]) == ["acc"] * 4 + ["acc_norm"] * 4 and set(rows["task"]) == {"cloze"}


# ------------------------------------------------------------------------------ refusals: 2, nothing written

@pytest.mark.slow  # subprocesses that import torch and train: ~10-60 s
def test_refused_commands_leave_the_run_folder_byte_identical(run_dir, tmp_path):
    before = snapshot(run_dir)
    root, name = run_dir.parent, run_dir.name
    refused = [
        ("train", *TRAIN, "--steps", "4", "--out-dir", root, "--name", name),  # exists, no --resume
        ("train", *TRAIN, "--steps", "4", "--out-dir", root, "--name", name, "--method", "galore", "--resume"),
        ("train", *TRAIN, "--steps", "abc", "--out-dir", root, "--name", name, "--resume"),
        ("train", "--config", run_dir / "config.json", "--resume", "--set", "lr=abc"),
        ("study", "--preset", "smoke", "--out", run_dir),             # a run folder is not a study folder
        ("analyze", run_dir, "--metric", "no_such_metric", "--out", tmp_path / "a"),
        ("eval", run_dir, "--task", "no_such_task"),
        ("eval", run_dir, "--steps", "99"),
        ("report", run_dir),                                       # a run folder is not a study
        ("export-hf", run_dir, run_dir / "hf"),                    # inside the run folder
        ("export-hf", run_dir, tmp_path / "hf", "--step", "3"),    # no such checkpoint
    ]
    for args in refused:
        proc = run_cli(*args)
        assert_clean_failure(proc, 2)
        assert_unchanged(before, run_dir)


def test_report_refuses_a_folder_that_is_not_a_study(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    for args in ((folder,), (tmp_path / "typo",), (folder / "notes.txt",)):
        proc = run_cli("report", *args)
        assert_clean_failure(proc, 2)
        assert_unchanged(before, tmp_path)
    assert "not a study folder" in run_cli("report", folder).stderr


def test_study_refuses_a_non_study_folder_as_out(tmp_path):
    (tmp_path / "thesis.tex").write_text("mine")
    before = snapshot(tmp_path)
    for out in (tmp_path, tmp_path / "thesis.tex"):
        proc = run_cli("study", "--preset", "smoke", "--out", out, "--quiet")
        assert_clean_failure(proc, 2)
        assert_unchanged(before, tmp_path)
    assert "not a study" in run_cli("study", "--preset", "smoke", "--out", tmp_path).stderr


def test_report_refuses_a_folder_as_out(study_dir, tmp_path):
    before = snapshot(study_dir)
    proc = run_cli("report", study_dir, "--out", tmp_path)
    assert_clean_failure(proc, 2)
    assert "--out" in proc.stderr and not any(tmp_path.iterdir())
    assert_unchanged(before, study_dir)


def test_export_hf_refuses_a_non_empty_folder_unless_forced(run_dir, tmp_path):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "config.json").write_text('{"mine": true}')
    before = snapshot(out)
    proc = run_cli("export-hf", run_dir, out)
    assert_clean_failure(proc, 2)
    assert "not empty" in proc.stderr and "--force" in proc.stderr
    assert_unchanged(before, out)
    assert run_cli("export-hf", run_dir, out, "--force").returncode == 0
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    (tmp_path / "empty").mkdir()
    assert run_cli("export-hf", run_dir, tmp_path / "empty").returncode == 0  # an empty folder is fine


# ------------------------------------------------------------------------------------- failed work: 1

@pytest.mark.slow  # subprocesses that import torch and train: ~10-60 s
def test_study_with_a_failed_job_exits_1(tmp_path):
    cfg = tmp_path / "study.yaml"
    cfg.write_text("base: smoke\nmethods: [full_rank]\nsteps: 3\ncheckpoint_steps: [3]\n"
                   "parity: {protocol: 'off', branch_steps: []}\n"
                   "method_options: {full_rank: {lr: 1.0e+30}}\n"
                   "analysis: {metrics: [w_erank], n_tokens: 64}\ndownstream: {max_items: 4, bootstrap_iters: 5}\n")
    proc = run_cli("study", "--config", cfg, "--out", tmp_path / "out", "--quiet")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "job(s) failed" in proc.stderr and "train:full_rank_s0" in proc.stderr
    jobs = {j["id"]: j for j in json.loads((tmp_path / "out" / "status.json").read_text())["jobs"]}
    assert jobs["train:full_rank_s0"]["state"] == "failed"
    assert "non-finite" in jobs["train:full_rank_s0"]["error"].splitlines()[0]  # the job's own message first


# ----------------------------------------------------------------------------------------- Ctrl-C: 130

def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, f"exited early with {proc.returncode}: {proc.communicate()[1][-2000:]}"
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.slow  # subprocesses that import torch and train: ~10-60 s
def test_ctrl_c_during_train_exits_130_with_the_resume_hint(tmp_path):
    run = tmp_path / "r"
    proc = subprocess.Popen([str(RANKSCOPE), "train", *TRAIN, "--steps", "100000", "--log-every", "1",
                             "--out-dir", str(tmp_path), "--name", "r"], env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").stat().st_size > 0, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert INTERRUPTED in err and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 3, err


# -------------------------------------------------- click's own exceptions (typer versions without _click)

def test_plain_click_exceptions_are_handled_like_typers(capsys):
    """Older typer raises click's classes, newer its bundled ``typer._click`` ones: both map the same way."""
    click = pytest.importorskip("click")
    from rankscope.cli import _click_error

    assert _click_error(click.exceptions.NoSuchOption("--bogus")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: No such option") and "--bogus" in err and err.count("\n") == 1
    assert _click_error(click.exceptions.BadParameter("not a number", param_hint="'--steps'")) == 2
    assert "Invalid value for '--steps': not a number" in capsys.readouterr().err
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise click.exceptions.Abort() from None
    except click.exceptions.Abort as abort:
        interrupted = abort
    assert _click_error(interrupted) == 130
    assert _click_error(click.exceptions.Abort()) == 1
    assert _click_error(ValueError("a bug")) is None  # a real bug keeps its traceback
