"""A study whose stdout is not a terminal prints one plain line per job and stage on stderr (issue 23, item 4).

The unit test drives the display with a fake clock (lines, seconds, share and ETA are exact); the console-script
test runs a short study with stdout redirected to a file, as ``make demo > log`` or a scheduler does.
"""

from __future__ import annotations

import io
import json
import re
import subprocess

import pytest
from helpers_fs import RANKSCOPE, cli_env

from rankscope.study.progress import STAGE_WEIGHT, StudyProgress, clock

LINE = re.compile(r"^\[study \d+:\d\d:\d\d\] (\S+) (.+): (started|done|failed|skipped)( in [\d.]+ s)? \| "
                  r"\d+ % of the study, ETA (\S+)$")


def test_plain_lines_name_the_job_its_seconds_state_and_the_overall_eta():
    t = [100.0]
    out = io.StringIO()
    with StudyProgress(True, 100, plain=True, stream=out, now=lambda: t[0]) as bar:
        bar.start("train", "a_s0", 100)
        t[0] += 30.0
        bar.advance_to(50, "a_s0")  # no line while a job moves
        t[0] += 10.0
        bar.finish_job("a_s0", "done")
        bar.start("analyze", "1 run(s)", bar.stage_units("analyze"))
        t[0] += 2.5
        bar.finish_job("1 run(s)", "failed")
        bar.log("[red]train a_s0 failed[/red]: boom")
    lines = out.getvalue().splitlines()
    total = 100 * (1 + sum(STAGE_WEIGHT.values()))
    share = 100 / total  # after the training job: its 100 units of the whole
    assert lines[0] == "[study 0:00:00] train a_s0: started | 0 % of the study, ETA unknown"
    assert lines[1] == (f"[study 0:00:40] train a_s0: done in 40.0 s | {100 * share:.0f} % of the study, "
                        f"ETA {clock(40 * (1 - share) / share)}")
    assert lines[2].startswith("[study 0:00:40] analyze 1 run(s): started")
    assert lines[3].startswith("[study 0:00:42] analyze 1 run(s): failed in 2.5 s")
    assert lines[4] == "train a_s0 failed: boom"  # rich markup stripped
    assert all(LINE.match(ln) for ln in lines[:4]), lines


def test_clock_formats():
    assert [clock(s) for s in (0, 12.4, 185, 3720, -3)] == ["0s", "12s", "3m05s", "1h02m", "0s"]


def test_quiet_and_terminal_modes_print_no_plain_lines():
    out = io.StringIO()
    for bar in (StudyProgress(False, 10, plain=True, stream=out), StudyProgress(True, 10, plain=False, stream=out)):
        bar.start("train", "a", 10)
        bar.finish_job("a")
    assert out.getvalue() == ""


SHORT_STUDY = """base: smoke
methods: [full_rank]
steps: 2
checkpoint_steps: [2]
parity: {protocol: 'off', branch_steps: []}
siblings: {methods: [], data_seeds: []}
analysis: {metrics: [w_erank], n_tokens: 64}
downstream: {max_items: 4, bootstrap_iters: 5}
ood: {texts: [], max_bytes: 1000, bootstrap_iters: 5, finetune: {steps: 1, batch_size: 2, max_tokens: 16,
      max_train: 4, max_test: 4, forget_bytes: 500, bootstrap_iters: 5}}
"""


@pytest.mark.slow  # a short study through the console script, then its (skipping) quiet re-run
@pytest.mark.skipif(not RANKSCOPE.exists(), reason=f"console script {RANKSCOPE} not installed")
def test_a_study_with_stdout_in_a_file_writes_a_line_per_job_and_stage(tmp_path):
    cfg = tmp_path / "study.yaml"
    cfg.write_text(SHORT_STUDY)
    out = tmp_path / "out"
    with open(tmp_path / "stdout.log", "w") as stdout:
        proc = subprocess.run([str(RANKSCOPE), "study", "--config", str(cfg), "--out", str(out)], env=cli_env(),
                              stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("[study ")]
    assert all(LINE.match(ln) for ln in lines), lines
    jobs = json.loads((out / "status.json").read_text())["jobs"]
    assert [j["stage"] for j in jobs] == ["train", "analyze", "eval", "ood", "finetune", "predict", "report"]
    for job in jobs:
        name = {"train": job["run"], "report": "report.html"}.get(job["stage"], "1 run(s)")
        stage = job["stage"]
        mine = [ln for ln in lines if f"] {stage} {name}: " in ln]
        assert len(mine) == 2 and ": started |" in mine[0], (stage, lines)
        assert re.search(r": (done|skipped) in [\d.]+ s \|", mine[1]), mine
    assert "report: " in (tmp_path / "stdout.log").read_text()  # stdout keeps its one result line
    quiet = subprocess.run([str(RANKSCOPE), "study", "--config", str(cfg), "--out", str(out), "--quiet"],
                           env=cli_env(), capture_output=True, text=True, timeout=900)
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout == "", quiet.stderr
