"""A study job refused by its run folder's lock is a failed job whose error names the holder (issue 12 item 3)."""

from __future__ import annotations

import json
import os

import pytest

from rankscope.study import load_study_config, run_study
from rankscope.training.lock import RunLock


@pytest.mark.slow  # a training job start plus every later stage and the report: ~20-90 s
def test_locked_run_folder_is_a_failed_job_naming_the_holder(tmp_path):
    cfg_path = tmp_path / "study.yaml"
    cfg_path.write_text("base: smoke\nmethods: [full_rank]\nsteps: 3\ncheckpoint_steps: [3]\n"
                        "parity: {protocol: 'off', branch_steps: []}\n"
                        "analysis: {metrics: [w_erank], n_tokens: 64}\ndownstream: {max_items: 4}\n")
    out = tmp_path / "out"
    run_dir = out / "runs" / "full_rank_s0"
    run_dir.mkdir(parents=True)
    lock = RunLock(run_dir).acquire()  # this test process "trains" the folder (an orphan of an earlier study)
    try:
        result = run_study(load_study_config(cfg_path), out, progress=False)
    finally:
        lock.release()
    jobs = {j["id"]: j for j in json.loads((out / "status.json").read_text())["jobs"]}
    job = jobs["train:full_rank_s0"]
    assert job["state"] == "failed" and "train:full_rank_s0" in {j.id for j in result.failed}
    first = job["error"].splitlines()[0]
    assert f"pid {os.getpid()}" in first and "one writer" in first and "(exit code 2)" in first, first
    assert not list(run_dir.glob("checkpoints/*"))  # nothing was trained
