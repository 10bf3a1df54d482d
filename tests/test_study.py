"""``rankscope study``: presets, run configs, dry run, skip-on-rerun, failure isolation, submitit, kill/resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from rankscope.errors import UserError
from rankscope.report.browser import INSTALL_HINT, check_page, find_chromium
from rankscope.study import PRESETS, load_study_config, run_study
from rankscope.study.config import ALL_METHODS, MULTI_SIZE_PRESETS
from rankscope.training.checkpoint import list_checkpoints, step_dir

ROOT = Path(__file__).resolve().parents[1]
# Later stages kept minimal where a test only checks the training stage's bookkeeping.
CHEAP_STAGES = """
analysis: {metrics: [w_erank], n_tokens: 128}
downstream: {max_items: 5, bootstrap_iters: 10}
"""


def _write(tmp_path: Path, text: str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _status(out: Path) -> dict[str, dict]:
    return {j["id"]: j for j in json.loads((out / "status.json").read_text())["jobs"]}


@pytest.mark.parametrize("preset", [p for p in PRESETS if p not in MULTI_SIZE_PRESETS])
def test_presets_load_and_build_every_method(preset, tmp_path):
    cfg = load_study_config(preset)
    guided = preset.startswith("guides-")  # the guide presets: three methods and their guided arms
    assert cfg.preset == preset and set(cfg.methods) == ({"full_rank", "galore", "cola"} if guided else set(ALL_METHODS))
    runs = cfg.to_run_configs(tmp_path)
    for run in runs:
        run.build_method()  # method options and schedule constraints (ReLoRA: steps % reset_every) hold
        assert run.train.save_steps[-1] == cfg.steps and run.train.steps == cfg.steps
    expected = {"smoke": 3, "demo": 3, "guides-demo": 2}.get(preset, 10)
    assert len(cfg.save_steps) == expected
    if preset.startswith(("paper-", "guides-60m")):
        assert runs[0].data.dataset == "allenai/c4" and runs[0].data.packing == "pad"
        assert runs[0].data.tokenizer == "t5-base" and runs[0].train.lr == -1
        assert runs[0].train.micro_batch_size * runs[0].train.grad_accum == 512


def test_unknown_keys_name_the_file_and_field(tmp_path):
    nested = _write(tmp_path, "base: smoke\nanalysis: {n_tokns: 5}\n")
    with pytest.raises(UserError, match=r"study\.yaml.*analysis.*n_tokns"):
        load_study_config(nested)
    top = _write(tmp_path, "base: smoke\nstepz: 5\n", "top.yaml")
    with pytest.raises(UserError, match=r"top\.yaml.*stepz"):
        load_study_config(top)
    train = _write(tmp_path, "base: smoke\ntrain: {precison: fp32}\n", "train.yaml")
    with pytest.raises(UserError, match=r"train\.yaml.*train.*precison"):
        load_study_config(train)
    with pytest.raises(UserError, match="unknown study preset|neither"):
        load_study_config("no-such-preset")


def test_base_preset_is_merged_and_overridden(tmp_path):
    path = _write(tmp_path, "base: smoke\nmethods: [full_rank, galore]\nanalysis: {n_tokens: 128}\n")
    cfg = load_study_config(path)
    assert cfg.methods == ("full_rank", "galore") and cfg.preset == "smoke"
    assert cfg.analysis.n_tokens == 128 and "landscape_random" in cfg.analysis.settings  # deep merge


def test_run_configs_one_per_method_and_seed_sharing_init(tmp_path):
    from rankscope.training.loop import build_model

    cfg = load_study_config(_write(tmp_path, "base: smoke\nseeds: [0, 1]\nsiblings: {methods: [], data_seeds: []}\n"))
    runs = cfg.to_run_configs(tmp_path / "study")
    assert [(r.method, r.train.seed) for r in runs] == [(m, s) for s in (0, 1) for m in ALL_METHODS]
    assert len({r.name for r in runs}) == 12 and all(r.run_dir.parent == (tmp_path / "study" / "runs").resolve()
                                                     for r in runs)
    lrs = {r.method: r.method_config().lr for r in runs}
    assert lrs["galore"] == 0.01 and lrs["full_rank"] == 4e-3  # the methods' smoke-size defaults, not one LR
    prints = {(r.method, r.train.seed): build_model(r, r.build_method())[1] for r in runs if r.method in
              ("full_rank", "cola")}
    assert prints[("full_rank", 0)] == prints[("cola", 0)] != prints[("full_rank", 1)]


def test_dry_run_prints_commands_and_creates_nothing(tmp_path, capsys):
    out = tmp_path / "study"
    result = run_study(load_study_config("smoke"), out, dry_run=True, progress=False)
    text = capsys.readouterr().out
    train_lines = [line for line in text.splitlines() if "-m rankscope train --config" in line]
    assert len(train_lines) == len(ALL_METHODS) + 1 and all("--resume" in line for line in train_lines)
    assert all(f"{m}_s0.json" in text for m in ALL_METHODS) and "full_rank_s0_d1.json" in text  # the sibling
    assert ("siblings: full_rank × data seeds [1] per init seed (1 run(s), checkpoints: last, also "
            "eval/ood/finetune)") in text
    # analyze eval ood finetune predict report
    assert not out.exists() and len(result.jobs) == len(ALL_METHODS) + 1 + 6


def test_torchrun_command():
    from rankscope.study.config import LauncherConfig
    from rankscope.study.jobs import train_command

    cmd = train_command(Path("/x/run.json"), LauncherConfig(kind="torchrun", nproc=2))
    assert cmd[1:4] == ("-m", "torch.distributed.run", "--standalone") and "--nproc_per_node=2" in cmd


@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory):
    """One full smoke study (every stage), shared by the tests that read it."""
    out = tmp_path_factory.mktemp("smoke") / "study"
    t0 = time.perf_counter()
    result = run_study(load_study_config("smoke"), out, progress=False)
    return out, result, time.perf_counter() - t0


def test_smoke_study_writes_the_study_folder(smoke_study):
    out, result, _ = smoke_study
    assert not result.failed, [(j.id, j.error) for j in result.failed]
    for name in ("study.json", "status.json", "report.html", "results/diagnostics.parquet",
                 "results/downstream.parquet", "results/prediction.json", "results/timings.json"):
        assert (out / name).is_file(), name
    study = json.loads((out / "study.json").read_text())
    assert study["checkpoint_steps"] == [3, 6, 9] and study["preset"] == "smoke"
    for m in ALL_METHODS:
        assert list_checkpoints(out / "runs" / f"{m}_s0") == [3, 6, 9]
    timings = json.loads((out / "results" / "timings.json").read_text())
    assert set(timings) >= {"train", "analyze", "eval", "predict", "report"} and timings["train"] > 0


def test_smoke_study_runs_table_has_model_and_state_sizes(smoke_study):
    """The report's runs table reads memory.json's summary: sizes present, ReLoRA trains a fraction."""
    from rankscope.report.load import load_study

    out, _, _ = smoke_study
    runs = {r.method: r.memory["summary"] for r in load_study(out).runs}
    assert set(runs) == set(ALL_METHODS)
    for method, summary in runs.items():
        assert summary["params"] > 0 and summary["trainable"] > 0 and summary["state_bytes"] > 0, method
    assert runs["relora"]["trainable"] < runs["relora"]["params"]  # the frozen dense W is not trained
    assert runs["galore"]["state_bytes"] < runs["full_rank"]["state_bytes"]  # compact moments


def test_rerun_skips_finished_work(smoke_study):
    out, first, _ = smoke_study
    weights = load_file(step_dir(out / "runs" / "galore_s0", 9) / "model.safetensors")
    again = run_study(load_study_config("smoke"), out, progress=False)
    states = {j["id"]: j["state"] for j in _status(out).values()}
    assert all(states[f"train:{m}_s0"] == "skipped" for m in ALL_METHODS), states
    assert states["analyze"] == states["eval"] == states["predict"] == "skipped" and states["report"] == "done"
    assert again.timings["train"] == first.timings["train"]  # skipped jobs keep the cost of their results
    after = load_file(step_dir(out / "runs" / "galore_s0", 9) / "model.safetensors")
    assert all(torch.equal(weights[k], after[k]) for k in weights)


def test_failing_job_is_reported_and_others_finish(tmp_path):
    cfg = load_study_config(_write(tmp_path, "base: smoke\nmethods: [full_rank, galore]\n"
                                   "method_options: {galore: {lr: 1.0e+30}}\n" + CHEAP_STAGES))
    out = tmp_path / "study"
    result = run_study(cfg, out, progress=False)
    status = _status(out)
    assert status["train:galore_s0"]["state"] == "failed"
    assert "non-finite" in status["train:galore_s0"]["error"]
    assert status["train:full_rank_s0"]["state"] == "done"
    assert list_checkpoints(out / "runs" / "full_rank_s0")[-1] == 9
    assert status["analyze"]["state"] == "done" and (out / "report.html").is_file()
    assert {j.id for j in result.failed} >= {"train:galore_s0"}


def test_bad_method_option_fails_before_any_job(tmp_path):
    cfg = load_study_config(_write(tmp_path, "base: smoke\nmethod_options: {galore: {rnak: 4}}\n"))
    with pytest.raises(UserError, match="rnak"):
        run_study(cfg, tmp_path / "study", progress=False)
    assert not (tmp_path / "study").exists()


def test_submitit_local_executor_runs_a_training_job(tmp_path):
    pytest.importorskip("submitit")
    cfg = load_study_config(_write(tmp_path, "base: smoke\nmethods: [full_rank]\n"
                                   "launcher: {kind: submitit, cluster: local, options: {timeout_min: 10}}\n"
                                   + CHEAP_STAGES))
    out = tmp_path / "study"
    run_study(cfg, out, progress=False)
    status = _status(out)
    assert status["train:full_rank_s0"]["state"] == "done", status["train:full_rank_s0"]["error"]
    assert list_checkpoints(out / "runs" / "full_rank_s0") == [3, 6, 9]
    assert any((out / "submitit").iterdir())


def _diagnostics(out: Path) -> pd.DataFrame:
    d = pd.read_parquet(out / "results" / "diagnostics.parquet")
    keys = ["run", "metric", "step", "step_b", "scope", "name", "space"]
    return d.sort_values(keys, na_position="first").reset_index(drop=True)


@pytest.mark.slow
def test_killed_study_resumes_to_the_same_results(smoke_study, tmp_path):
    reference, _, _ = smoke_study
    out = tmp_path / "study"
    code = f"from rankscope.study.commands import cmd_study; cmd_study(preset='smoke', out={str(out)!r}, quiet=True)"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "runs" / "full_rank_s0"
    deadline = time.time() + 300
    while not list_checkpoints(first) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the study finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the study and its training job, mid-way
    proc.wait()
    assert not (out / "report.html").exists()
    result = run_study(load_study_config("smoke"), out, progress=False)
    assert not result.failed, [(j.id, j.error) for j in result.failed]
    for m in ALL_METHODS:
        a = load_file(step_dir(reference / "runs" / f"{m}_s0", 9) / "model.safetensors")
        b = load_file(step_dir(out / "runs" / f"{m}_s0", 9) / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), m
    da, db = _diagnostics(reference), _diagnostics(out)
    assert len(da) == len(db) and (da["metric"] == db["metric"]).all()
    np.testing.assert_allclose(db["value"].to_numpy(float), da["value"].to_numpy(float), rtol=1e-6, atol=1e-9)
    # Every table is byte-identical, the fine-tuning probe's too (issue 23: ReLoRA's dropout was drawn from
    # the unseeded global RNG, so its rows differed in the 5th digit between two studies).
    tables = sorted(p.relative_to(reference) for p in reference.glob("results/**/*.parquet"))
    assert {Path("results/finetune.parquet"), Path("results/parity/finetune.parquet")} <= set(tables), tables
    for rel in tables:
        a, b = pd.read_parquet(reference / rel), pd.read_parquet(out / rel)
        assert a.equals(b), (rel, a.compare(b) if a.shape == b.shape else (a.shape, b.shape))
        assert (reference / rel).read_bytes() == (out / rel).read_bytes(), rel


def test_parallel_local_jobs_overlap_split_threads_and_report_failures(tmp_path):
    """launcher.parallel = 2: two jobs run at once, each with cores // 2 threads; a failing job is reported
    with its log tail and the queue goes on."""
    import os
    import sys

    from rankscope.study.jobs import Job
    from rankscope.study.launch import run_jobs_local

    script = ("import json, os, sys, time; t = time.time(); time.sleep(1.5); "
              "print(json.dumps([t, time.time(), os.environ.get('OMP_NUM_THREADS')])); sys.exit(int(sys.argv[1]))")
    jobs = [Job(f"train:j{i}", "train", f"j{i}", (sys.executable, "-c", script, str(int(i == 1))))
            for i in range(3)]
    started, reported = [], {}
    run_jobs_local(jobs, tmp_path, lambda job, state, sec, err: reported.update({job.run: (state, err)}),
                   lambda job: started.append(job.run), parallel=2)
    assert started == ["j0", "j1", "j2"]
    assert reported["j0"][0] == reported["j2"][0] == "done"
    assert reported["j1"][0] == "failed" and "exit code 1" in reported["j1"][1]
    spans = {j: json.loads((tmp_path / f"{j}.log").read_text().strip().splitlines()[-1]) for j in ("j0", "j1")}
    assert spans["j0"][0] < spans["j1"][1] and spans["j1"][0] < spans["j0"][1]  # the two ran at the same time
    assert spans["j0"][2] == str(max(1, (os.cpu_count() or 1) // 2))


def test_smoke_study_measures_shift_and_finetuning(smoke_study):
    """The ood and finetune stages: leave-one-source-out shift, a listed text, the probe, targets, panels."""
    from rankscope.diagnostics.table import read_table

    out, _, _ = smoke_study
    states = {j["id"]: j["state"] for j in _status(out).values()}
    assert states["ood"] in ("done", "skipped") and states["finetune"] in ("done", "skipped"), states  # rerun: skipped
    heldout = read_table(out / "results" / "heldout.parquet")
    assert set(heldout["name"]) == {"val", "shift", "embedded:test:brown"}
    evaluated = {f"{m}_s0" for m in ALL_METHODS} | {"full_rank_s0_d1"}  # the sibling too (siblings.evaluate)
    assert set(heldout["run"]) == evaluated
    gaps = heldout[heldout["metric"] == "shift_gap_nll"]
    assert len(gaps) == 2 * len(evaluated) and set(gaps["name"]) == {"shift", "embedded:test:brown"}
    ft = read_table(out / "results" / "finetune.parquet")
    assert len(ft) == 6 * len(evaluated) and set(ft["scope"]) == {"finetune"}
    targets = json.loads((out / "results" / "prediction_targets.json").read_text())
    assert set(targets) == {"shift_nll:shift", "shift_nll:embedded:test:brown", "ft_acc", "forgetting"}
    html = (out / "report.html").read_text()
    for text in ("Distribution shift", "Fine-tuning pressure", "F7·ft_acc", "F7·shift_nll:shift"):
        assert text in html, text


def test_ood_section_is_checked_when_read(tmp_path):
    with pytest.raises(UserError, match="ood: unknown field"):
        load_study_config(_write(tmp_path, "base: smoke\nood: {txts: [a.txt]}\n"))
    with pytest.raises(UserError, match="ood.finetune.*stepz"):
        load_study_config(_write(tmp_path, "base: smoke\nood: {finetune: {stepz: 3}}\n"))
    with pytest.raises(UserError, match="spec"):
        load_study_config(_write(tmp_path, "base: smoke\nood: {texts: [{split: validation}]}\n"))


def test_smoke_study_compares_at_parity(smoke_study):
    """The smoke preset runs the parity protocol: WSD runs, one cooldown branch each, choices and the section."""
    out, result, _ = smoke_study
    status = _status(out)
    assert status["parity"]["state"] == "done", status["parity"]["error"]
    assert all(status[f"train:{m}_s0_b6"]["state"] in ("done", "skipped") for m in ALL_METHODS)  # skipped: re-run
    branch = json.loads((out / "parity_runs" / "galore_s0_b6" / "meta.json").read_text())["branch"]
    assert branch["parent"] == "galore_s0" and (branch["step"], branch["budget"]) == (6, 8)
    assert list_checkpoints(out / "parity_runs" / "galore_s0_b6") == [6, 8]
    parity = json.loads((out / "results" / "parity.json").read_text())
    assert parity["protocol"] == "wsd-branches" and parity["target"]["ppl"] > 1
    assert {r["method"] for r in parity["runs"]} == set(ALL_METHODS)
    for r in parity["runs"]:
        assert r["status"] in ("within", "outside", "predict", "not_reached") and r["best_ppl"] > 1
        assert len(parity["curves"][r["main_run"]]) >= 2  # the branch and the main run (budget 9)
    base = parity["baselines"]
    assert base["unigram_ppl"] > base["bigram_ppl"] > 1
    assert (out / "results" / "parity" / "downstream.parquet").is_file()
    html = (out / "report.html").read_text()
    for text in ("Perplexity parity and baselines", "Findings at parity", "early training", "Cost to the target"):
        assert text in html, text


def test_smoke_study_keeps_per_item_rows_and_the_bootstraps_use_them(smoke_study):
    """eval writes one row per scored item next to each downstream table (equal steps and parity); P1 and the
    predictor resample those items (the same items for every model) and say so."""
    from rankscope.diagnostics.table import read_table
    from rankscope.downstream.item_rows import read_items
    from rankscope.report.parity_verdicts import ITEMS_PAIRED

    out, _, _ = smoke_study
    for folder in (out / "results", out / "results" / "parity"):
        down, items = read_table(folder / "downstream.parquet"), read_items(folder / "downstream.parquet")
        assert items is not None and set(items["run"]) == set(down["run"]), folder
        tasks = down[down["scope"] == "task"].set_index(["run", "name", "metric"])["value"]
        means = items.groupby(["run", "task", "metric"])["correct"].mean()
        assert len(means) == len(tasks) and np.allclose(means.loc[tasks.index].to_numpy(), tasks.to_numpy())
        per_run = items.groupby(["run", "task", "metric"])["item"].apply(tuple).unstack("run")
        assert (per_run.nunique(axis=1) == 1).all()  # every model answered the same items
    prediction = json.loads((out / "results" / "prediction.json").read_text())
    assert "per-item rows" in prediction["bootstrap"], prediction["bootstrap"]
    html = (out / "report.html").read_text()
    assert ITEMS_PAIRED in html and "items resampled from per-item rows" in html


@pytest.mark.browser
@pytest.mark.skipif(find_chromium() is None, reason=f"headless Chromium not found; install: {INSTALL_HINT}")
def test_smoke_study_report_passes_the_browser_check(smoke_study):
    """The real smoke study's report (parity, shift and fine-tuning sections included) in headless Chromium:
    every figure decodes and the page logs no console error."""
    out, _, _ = smoke_study
    page = out / "report.html"
    html = page.read_text()
    for text in ("Perplexity parity and baselines", "Distribution shift", "Fine-tuning pressure"):
        assert text in html, text
    seen = check_page(page)
    assert seen.probe_ran, "the probe script did not run"
    assert seen.figures_total >= 8 and seen.figures_ok == seen.figures_total
    assert seen.console_errors == []
    _assert_issue_25_report_items(html)


def _assert_issue_25_report_items(html: str) -> None:
    """One average per model per task set (equal to F6's), majority baselines, both perplexities explained,
    and every metric link pointing at a glossary entry of the same page."""
    import re

    tables = re.findall(r"<table>.*?</table>", html, flags=re.S)
    down = [t for t in tables if "majority class</th>" in t]
    assert down, "no downstream table with a majority-class column"
    for t in down:  # equal steps and at parity: one average row each, with its definition
        assert t.count("average accuracy") == 1
        assert "agreement_hard: a subset of another task, reported but not averaged" in t
    assert "average over tasks" not in html
    equal_steps = next(t for t in tables if "majority class</th>" in t and t in html.split('id="downstream"')[1])
    avg_row = re.search(r"<tr><td><b>average accuracy</b>.*?</tr>", equal_steps, flags=re.S).group(0)
    heads = re.findall(r"<th>(.*?)</th>", equal_steps)[4:]
    cells = dict(zip(heads, re.findall(r"<td[^>]*>(.*?)</td>", avg_row)[4:], strict=True))
    f6 = re.search(r'data-finding="F6".*?</div>', html, flags=re.S).group(0)
    f6_means = re.findall(r"<td>(\w+): mean acc over 4 tasks</td><td class=\"num\">(.*?)</td>", f6)
    assert len(f6_means) == len(heads), f6_means
    for method, value in f6_means:
        assert cells[method] == value, (method, cells[method], value)  # the table and F6 print one number
    genre = re.search(r"<tr><td>genre</td>(.*?)</tr>", equal_steps).group(1)
    majority = re.findall(r"<td[^>]*>(.*?)</td>", genre)[2]
    assert 0.5 <= float(majority) <= 1.0
    assert "majority class (test)</th>" in html  # beside the fine-tuning probe's accuracies
    assert "trainer val ppl (sampled)" in html and "in-domain ppl (whole val text)" in html
    assert "They differ because they score different tokens with different context" in html
    targets = set(re.findall(r'href="#(metric-[\w]+)"', html))
    assert targets and targets <= set(re.findall(r'id="(metric-[\w]+)"', html))


def test_smoke_study_trains_a_sibling_and_computes_every_null(smoke_study):
    """The smoke preset's full-rank sibling: final checkpoint only, no parity model; analyze gives the sibling
    barrier (plain and cross-fitted), the CKA ceiling and sibling rows of every per-run metric; it is scored
    downstream, on shift and fine-tuning (``siblings.evaluate``: the F6 / P1 / shift / forgetting nulls); its
    final perplexity enters the parity target's seed mean."""
    from rankscope.diagnostics.table import read_table

    out, result, _ = smoke_study
    assert list_checkpoints(out / "runs" / "full_rank_s0_d1") == [9]
    meta = json.loads((out / "runs" / "full_rank_s0_d1" / "meta.json").read_text())
    main_meta = json.loads((out / "runs" / "full_rank_s0" / "meta.json").read_text())
    assert (meta["init_seed"], meta["data_seed"]) == (0, 1)
    assert meta["init_fingerprint"] == main_meta["init_fingerprint"]  # same start
    diag = read_table(out / "results" / "diagnostics.parquet")
    nulls = diag[diag["null"] == "sibling"]
    barrier = nulls[(nulls.metric.isin(["imib", "imib_xfit"])) & (nulls.step == 9)]
    assert set(barrier.metric) == {"imib", "imib_xfit"} and set(barrier.name) == {"full_rank_s0_d1"}
    assert barrier.value.notna().all()
    ceiling = nulls[(nulls.metric == "act_cka") & (nulls.scope == "layer")]
    assert set(ceiling.run) == {"full_rank_s0_d1"} and len(ceiling) >= 2 and (ceiling.value < 1).all()
    sib = diag[(diag.run == "full_rank_s0_d1") & (diag.scope == "model")]
    assert {"rand_sharpness", "rand_sharpness_fn", "w_erank", "pca_top1_sharpness"} <= set(sib.metric)
    assert set(sib.init_seed) == {0} and set(sib.data_seed) == {1}
    # cross-method pairs stay paired: nothing between the sibling and another method
    assert not len(diag[(diag.scope == "pair") & (diag.name == "full_rank_s0_d1") & (diag.method != "full_rank")])
    for table in ("downstream", "heldout", "finetune"):
        assert "full_rank_s0_d1" in set(read_table(out / "results" / f"{table}.parquet").run)
    html = (out / "report.html").read_text()
    assert "sibling spread of average accuracy" in html  # F6 and P1 read the sibling's accuracy
    parity = json.loads((out / "results" / "parity.json").read_text())
    assert "full_rank 2" in parity["target"]["how"]
    assert not any(r["main_run"] == "full_rank_s0_d1" for r in parity["runs"])
