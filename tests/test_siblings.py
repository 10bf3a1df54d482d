"""Data-order siblings and the nulls analyze computes from them (evidence.md §1-2, docs/study.md "Seeds,
siblings and nulls"): which pairs are computed, which rows are nulls, and the bad-input cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers_fs import assert_clean_failure, run_cli, snapshot

from rankscope.diagnostics.analyze import analyze, pick_reference
from rankscope.diagnostics.context import RunHandle
from rankscope.diagnostics.table import COLUMNS
from rankscope.errors import UserError
from rankscope.study import load_study_config
from rankscope.study.config import ALL_METHODS

pytestmark = pytest.mark.usefixtures("one_thread")


def _handle(name, method, init, data, steps=(3,), fingerprint="f"):
    return RunHandle(Path("/nowhere") / name, name, method, "smoke", init, list(steps), data_seed=data,
                     init_fingerprint=fingerprint)


def test_reference_is_the_paired_full_rank_and_siblings_get_the_ceiling():
    full, sib, sib2 = _handle("fr", "full_rank", 0, 0), _handle("fr_d1", "full_rank", 0, 1), \
        _handle("fr_d2", "full_rank", 0, 2)
    galore, galore_d1 = _handle("g", "galore", 0, 0), _handle("g_d1", "galore", 0, 1)
    other_init = _handle("fr1", "full_rank", 1, 1)
    runs = [sib2, sib, full, galore, galore_d1, other_init]
    assert pick_reference(full, runs) is full  # the primary full-rank run: its self rows
    assert pick_reference(sib, runs) is full and pick_reference(sib2, runs) is full  # the CKA ceiling
    assert pick_reference(galore, runs) is full
    assert pick_reference(galore_d1, runs) is sib  # paired: same init and data seed
    assert pick_reference(other_init, runs) is other_init


def test_pairs_are_paired_runs_and_siblings_only():
    from rankscope.diagnostics.analyze import _pairs

    full, sib = _handle("fr", "full_rank", 0, 0), _handle("fr_d1", "full_rank", 0, 1)
    galore, cola1 = _handle("g", "galore", 0, 0), _handle("c1", "cola", 1, 1)
    got = {tuple(sorted((a.name, b.name))) for a, b in _pairs([full, sib, galore, cola1])}
    assert got == {("fr", "fr_d1"), ("fr", "g")}  # no galore <-> sibling, nothing across init seeds


def _train(tmp_path: Path, name: str, method: str, **seeds) -> Path:
    from conftest import smoke_config

    from rankscope.training.loop import train

    cfg = smoke_config(tmp_path, name, method, 4, save_every=4, **seeds)
    train(cfg, progress=False)
    return cfg.run_dir


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    root = tmp_path_factory.mktemp("trio")
    return [_train(root, "full_rank_s0", "full_rank", seed=0),
            _train(root, "full_rank_s0_d1", "full_rank", seed=0, data_seed=1),
            _train(root, "galore_s0", "galore", seed=0)]


def test_analyze_marks_sibling_rows_as_nulls(trio, tmp_path):
    table = analyze(trio, metrics=["imib", "act_cka", "w_erank"], out=tmp_path / "a", n_tokens=512,
                    settings={"imib": {"n_points": 3}}, progress=False)
    assert list(table.columns) == COLUMNS
    assert set(table["null"]) == {"", "sibling"}
    sib = table[table.run == "full_rank_s0_d1"]
    assert set(sib.init_seed) == {0} and set(sib.data_seed) == {1} and set(sib.seed) == {0}
    barriers = table[(table.metric == "imib")]
    pairs = {(r.run, r.name, r.null) for r in barriers.itertuples()}
    assert pairs == {("full_rank_s0", "full_rank_s0_d1", "sibling"), ("full_rank_s0", "galore_s0", "")}
    cka = table[(table.metric == "act_cka") & (table.scope == "layer")]
    ceiling = cka[cka.run == "full_rank_s0_d1"]
    assert len(ceiling) and set(ceiling.null) == {"sibling"} and (ceiling.value < 1).all()
    assert set(cka[cka.run == "full_rank_s0"].value.round(9)) == {1.0}  # the primary against itself
    assert set(cka[cka.run == "galore_s0"].null) == {""}
    assert set(table[table.metric == "w_erank"].null) == {""}  # per-run rows are not flagged


def test_siblings_that_do_not_share_their_start_are_refused(trio, tmp_path):
    import shutil

    copy = tmp_path / "runs"
    for run in trio[:2]:
        shutil.copytree(run, copy / run.name)
    meta = copy / "full_rank_s0_d1" / "meta.json"
    data = json.loads(meta.read_text())
    data["init_fingerprint"] = "0123456789abcdef"
    meta.write_text(json.dumps(data))
    with pytest.raises(UserError, match="init_fingerprint differs"):
        analyze(sorted(copy.iterdir()), metrics=["w_erank"], out=tmp_path / "x", progress=False)
    before = snapshot(tmp_path)
    proc = run_cli("analyze", *sorted(copy.iterdir()), "--metric", "w_erank", "--out", tmp_path / "out")
    assert_clean_failure(proc)
    assert "init_fingerprint" in proc.stderr and "full_rank_s0_d1" in proc.stderr
    assert snapshot(tmp_path) == before


def _study(tmp_path: Path, text: str):
    path = tmp_path / "study.yaml"
    path.write_text("base: smoke\n" + text)
    return load_study_config(path)


def test_study_grid_gains_siblings_named_by_both_seeds(tmp_path):
    cfg = _study(tmp_path, "seeds: [0, 1]\nsiblings: {methods: [full_rank, galore], data_seeds: [5]}\n")
    runs = cfg.to_run_configs(tmp_path / "s")
    names = [r.name for r in runs]
    assert names[:6] == [f"{m}_s0" for m in ALL_METHODS]
    sibs = cfg.sibling_runs(runs)
    assert [r.name for r in sibs] == ["full_rank_s0_d5", "galore_s0_d5", "full_rank_s1_d5", "galore_s1_d5"]
    assert [(r.train.weights_seed, r.train.order_seed) for r in sibs] == [(0, 5), (0, 5), (1, 5), (1, 5)]
    assert all(r.train.save_steps == (cfg.steps,) for r in sibs)  # checkpoints: last (the default)
    assert len(cfg.main_runs(runs)) == 12
    every = _study(tmp_path, "siblings: {methods: [full_rank], data_seeds: [5], checkpoints: all}\n")
    assert cfg.sibling_runs(every.to_run_configs(tmp_path / "t"))[0].train.save_steps == every.save_steps


@pytest.mark.parametrize("text,field", [
    ("siblings: {methods: [apollo], data_seeds: [1]}\n", "siblings.methods"),
    ("siblings: {methods: [full_rank], data_seeds: [1, 1]}\n", "siblings.data_seeds"),
    ("seeds: [0, 1]\nsiblings: {methods: [full_rank], data_seeds: [1]}\n", "siblings.data_seeds"),
    ("siblings: {methods: [], data_seeds: [3]}\n", "siblings"),
    ("siblings: {methods: [full_rank], data_seeds: [2], checkpoints: some}\n", "siblings.checkpoints"),
    ("siblings: {methods: [full_rank], data_seeds: [2], every: 1}\n", "siblings"),
])
def test_bad_sibling_settings_are_one_error_naming_the_field(tmp_path, text, field):
    path = tmp_path / "bad.yaml"
    path.write_text("base: smoke\n" + text)
    with pytest.raises(UserError, match=field.replace(".", r"\.")):
        load_study_config(path)
    before = snapshot(tmp_path)
    proc = run_cli("study", "--config", path, "--out", tmp_path / "out")
    assert_clean_failure(proc)
    assert field in proc.stderr
    assert snapshot(tmp_path) == before
