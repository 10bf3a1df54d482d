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

from rankscope.study.progress import PARITY_STAGES, STAGE_WEIGHT, StudyProgress, clock

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


def _share_and_eta(line: str) -> tuple[int, str]:
    m = LINE.match(line)
    assert m, line
    return int(line.split(" | ")[1].split(" %")[0]), m.group(5)


LATER = ("analyze", "eval", "ood", "finetune", "predict")


def test_share_and_eta_cover_parity_and_later_stages_and_reach_100_only_with_the_report():
    """A study with parity: 100 main steps, 60 planned parity steps and 20 unplanned (the extra model at a
    predicted crossing), then the parity models' and the runs' later stages, then the report, 10 s per 10
    units. Before the report is written the share stays below 100 % and the ETA is a time, not 0 s."""
    t = [0.0]
    out = io.StringIO()
    with StudyProgress(True, 160, plain=True, stream=out, now=lambda: t[0], stage_base=100,
                       parity_share=0.5) as bar:
        for job, units in (("a_s0", 100), ("a_s0_b40", 60), ("a_s0_b70", 20)):
            bar.start("train", job, units)
            t[0] += units
            bar.finish_job(job)
        for parity in (True, False):
            for stage in LATER:
                bar.start(stage, "models", bar.stage_units(stage, parity=parity), parity=parity)
                t[0] += bar.stage_units(stage, parity=parity)
                bar.finish_job("models")
        bar.start("report", "report.html", bar.stage_units("report"))
        t[0] += bar.stage_units("report")
        bar.finish_job("report.html")
    lines = out.getvalue().splitlines()
    shares, etas = zip(*map(_share_and_eta, lines), strict=True)
    assert shares[-1] == 100 and etas[-1] == "0s" and lines[-1].startswith("[study 0:04:") and "report" in lines[-1]
    assert all(s < 100 for s in shares[:-1]) and all(e != "0s" for e in etas[:-1]), lines
    # every unit of work is in the total: at a constant rate the ETA is the time the rest of the study took
    whole = 180 + sum(STAGE_WEIGHT.values()) * 100 + sum(STAGE_WEIGHT[s] for s in PARITY_STAGES) * 50
    assert t[0] == pytest.approx(whole)
    i = lines.index(next(ln for ln in lines if ln.startswith("[study 0:03:00] analyze models: started")))
    assert etas[i] == clock(whole - 180), lines[i]  # the parity models' analyze starts after 180 s of training


def test_eta_is_unknown_until_work_is_timed_and_skipped_jobs_do_not_speed_it_up():
    """A re-run: every training job and the analysis are fresh (skipped in no time), eval does work."""
    t = [0.0]
    out = io.StringIO()
    with StudyProgress(True, 0, plain=True, stream=out, now=lambda: t[0], stage_base=100) as bar:
        bar.start("train", "a_s0 (finished, skipped)", 0)
        bar.finish_job("a_s0 (finished, skipped)", "skipped")
        for stage, state, seconds in (("analyze", "skipped", 0.0), ("eval", "done", 20.0)):
            bar.start(stage, "1 run(s)", bar.stage_units(stage))
            t[0] += seconds
            bar.finish_job("1 run(s)", state)
    shares, etas = zip(*map(_share_and_eta, out.getvalue().splitlines()), strict=True)
    assert etas[:5] == ("unknown",) * 5  # nothing timed yet (a skip takes no time: it says nothing of the rate)
    left = sum(STAGE_WEIGHT.values()) * 100 - 30 - 10  # after eval: 10 units timed in 20 s
    assert etas[5] == clock(20 * left / 10) and 0 < shares[5] < 100


@pytest.mark.parametrize(("state", "last"), [("failed", 99), ("done", 100)])
def test_only_a_written_report_makes_100_percent(state, last):
    out = io.StringIO()
    with StudyProgress(True, 0, plain=True, stream=out, now=lambda: 0.0) as bar:
        bar.start("analyze", "1 run(s)", bar.stage_units("analyze"))
        bar.finish_job("1 run(s)")
        bar.start("report", "report.html", bar.stage_units("report"))
        bar.finish_job("report.html", state)
    assert [_share_and_eta(ln)[0] for ln in out.getvalue().splitlines()][-1] == last


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
