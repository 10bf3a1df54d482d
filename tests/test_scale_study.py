"""A study over several model sizes (``models: [...]``): bad input refused before anything is written, the presets
(multiscale on CPU, paper priced by --dry-run), one size failing while the others go on, resuming, and (slow) a
real two-size study whose tables equal the combination of its size folders by ``rankscope report A B``."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from helpers_fs import assert_clean_failure, run_cli
from helpers_report import make_synthetic_study

from rankscope.errors import UserError
from rankscope.study.config_file import load_study_config, study_from_dict
from rankscope.study.multiscale import MultiSizeStudy, multi_size_from_dict, run_multi_size


def _cfg(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, says", [
    ("base: smoke\nmodels: [smoke, huge]\n", "unknown size 'huge'"),
    ("base: smoke\nmodels: [smoke, tiny, smoke]\n", "size 'smoke' is given twice"),
    ("base: smoke\nmodels: [smoke, tiny]\nsizes: {60m: {steps: 4}}\n", "sizes.60m: per-size options for a size not"),
    ("base: smoke\nmodels: [smoke, tiny]\nsizes: {tiny: {methods: [full_rank]}}\n", "sizes.tiny.methods cannot differ"),
    ("base: smoke\nmodels: [smoke, tiny]\nsizes: {tiny: {stepz: 4}}\n", "(size tiny): unknown field 'stepz'"),
    ("base: smoke\nmodels: []\n", "models must be a non-empty list"),
])
def test_bad_sizes_are_refused_naming_the_field(tmp_path, text, says) -> None:
    with pytest.raises(UserError) as err:
        load_study_config(_cfg(tmp_path, text))
    assert says in str(err.value)


@pytest.mark.parametrize("text, says", [
    ("base: smoke\nmodels: [smoke, huge]\n", "unknown size 'huge'"),
    ("base: smoke\nmodels: [smoke]\nsizes: {tiny: {steps: 4}}\n", "sizes.tiny: per-size options"),
])
def test_bad_sizes_through_the_console_script_write_nothing(tmp_path, text, says) -> None:
    out = tmp_path / "out"
    proc = run_cli("study", "--config", str(_cfg(tmp_path, text)), "--out", str(out))
    assert_clean_failure(proc, 2)
    assert says in proc.stderr and not out.exists()


def test_each_size_is_a_full_study_with_its_own_options() -> None:
    multi = multi_size_from_dict({"name": "m", "models": ["tiny", "smoke"], "methods": ["full_rank", "galore"],
                                  "steps": 12, "sizes": {"tiny": {"steps": 24, "analysis": {"n_tokens": 64}}}})
    assert multi.sizes == ["smoke", "tiny"]  # smallest first
    smoke, tiny = multi.configs["smoke"], multi.configs["tiny"]
    assert (smoke.model, smoke.steps, tiny.model, tiny.steps) == ("smoke", 12, "tiny", 24)
    assert tiny.analysis.n_tokens == 64 and smoke.analysis.n_tokens == study_from_dict({}).analysis.n_tokens
    assert smoke.methods == tiny.methods and smoke.name == "m-smoke"


@pytest.mark.parametrize("preset, sizes, steps", [("multiscale", ["smoke", "tiny"], [240, 240]),
                                                  ("paper", ["60m", "130m", "350m"], [10000, 20000, 60000])])
def test_multi_size_presets_build_every_method_at_every_size(preset, sizes, steps, tmp_path) -> None:
    multi = load_study_config(preset)
    assert isinstance(multi, MultiSizeStudy) and multi.sizes == sizes and multi.preset == preset
    assert [c.steps for c in multi.configs.values()] == steps
    first = next(iter(multi.configs.values()))
    for size, cfg in multi.configs.items():
        assert cfg.model == size and (cfg.methods, cfg.seeds, cfg.data, cfg.siblings) == (
            first.methods, first.seeds, first.data, first.siblings)
        for run in cfg.to_run_configs(tmp_path / size):
            run.build_method()
            assert run.model == size


def test_paper_preset_is_priced_by_dry_run(tmp_path) -> None:
    out = tmp_path / "paper"
    proc = run_cli("study", "--preset", "paper", "--out", str(out), "--dry-run", "--quiet")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "over 3 model sizes: 60m, 130m, 350m" in text
    for size in ("60m", "130m", "350m"):
        assert f"=== size {size} ===" in text and f"--- size {size}:" in text
    totals = [line.split() for line in text.splitlines() if line.startswith("  ") and "training job(s)" in line]
    assert [t[0] for t in totals] == ["60m", "130m", "350m", "total"]
    gpu_h = [float(t[t.index("GPU-h,") - 1].replace(",", "")) for t in totals]
    assert gpu_h[0] < gpu_h[1] < gpu_h[2] and gpu_h[3] == pytest.approx(sum(gpu_h[:3]), abs=0.2)
    assert "5 init seed(s) × 2 data order(s)" in text
    assert not out.exists()


def _fake_run_study(broken: set[str], calls: list[str]):
    """A stand-in for run_study that writes a synthetic study folder per size (or breaks for ``broken``)."""
    from rankscope.study.runner import StudyResult

    def fake(cfg, out_dir, dry_run=False, progress=True, stop_signals=()):
        calls.append(cfg.model)
        if cfg.model in broken:
            raise RuntimeError(f"disk full while training {cfg.model}")
        folder = make_synthetic_study(Path(out_dir), methods=("full_rank", "galore", "fira"), seeds=(0, 1),
                                      rng_seed=len(calls))
        study = json.loads((folder / "study.json").read_text())
        study.update(model=cfg.model, predict={"bootstrap_iters": 20})
        (folder / "study.json").write_text(json.dumps(study))
        return StudyResult(Path(out_dir), [])

    return fake


def test_a_failed_size_does_not_stop_the_others_and_a_rerun_resumes(tmp_path, monkeypatch) -> None:
    import rankscope.study.runner as runner

    multi = multi_size_from_dict({"name": "m", "models": ["smoke", "tiny", "60m"], "methods": ["full_rank", "galore"]})
    calls: list[str] = []
    monkeypatch.setattr(runner, "run_study", _fake_run_study({"tiny"}, calls))
    out = tmp_path / "out"
    res = run_multi_size(multi, out, progress=False)
    assert calls == ["smoke", "tiny", "60m"]  # the size after the broken one still ran
    assert list(res.failed_sizes) == ["tiny"] and "disk full" in (out / "logs" / "tiny.log").read_text()
    assert json.loads((out / "study.json").read_text())["models"] == ["smoke", "60m"]
    assert res.report is not None and "scale-findings" in res.report.read_text()
    calls.clear()
    monkeypatch.setattr(runner, "run_study", _fake_run_study(set(), calls))
    import rankscope.report.render as render  # the report was checked above; a stub keeps this test short

    monkeypatch.setattr(render, "render_report", lambda d, out=None: Path(d) / "report.html")
    res = run_multi_size(multi, out, progress=False)  # re-running: every size again (each resumes on its own)
    assert calls == ["smoke", "tiny", "60m"] and not res.failed
    assert json.loads((out / "study.json").read_text())["models"] == ["smoke", "tiny", "60m"]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_two_size_study_equals_combining_its_size_folders(tmp_path) -> None:
    """A real study over smoke and tiny (3 methods, 9 steps, a few metrics, no parity, shift or probe, so that it
    stays short): its tables equal `rankscope report A B --out C`'s."""
    config = _cfg(tmp_path, "base: smoke\nname: two\nmethods: [full_rank, galore, relora]\nmodels: [tiny, smoke]\n"
                            "parity: {protocol: 'off'}\nsiblings: {methods: [], data_seeds: []}\n"
                            "analysis: {metrics: [w_erank, imib, act_cka]}\nood: {texts: [], finetune: null}\n"
                            "data: {holdout_source: ''}\nsizes: {tiny: {analysis: {n_tokens: 128}}}\n")
    out = tmp_path / "study"
    proc = run_cli("study", "--config", str(config), "--out", str(out), "--quiet", timeout=1800)
    errors = [(j["id"], j.get("error")) for s in ("smoke", "tiny") if (out / s / "status.json").is_file()
              for j in json.loads((out / s / "status.json").read_text())["jobs"] if j["state"] == "failed"]
    assert proc.returncode == 0, (proc.stderr[-2000:], errors)
    assert (out / "report.html").is_file()
    proc = run_cli("report", str(out / "smoke"), str(out / "tiny"), "--out", str(tmp_path / "by_hand"))
    assert proc.returncode == 0, proc.stderr
    for stem in ("diagnostics", "downstream"):
        a = pd.read_parquet(out / "results" / f"{stem}.parquet")
        b = pd.read_parquet(tmp_path / "by_hand" / "results" / f"{stem}.parquet")
        pd.testing.assert_frame_equal(a, b)
        assert set(a["scale"]) == {"smoke", "tiny"}
    diag = pd.read_parquet(out / "results" / "diagnostics.parquet")
    pairs = diag[diag["scope"] == "pair"]
    size_of = dict(zip(diag["run"], diag["scale"], strict=False))
    assert all(size_of.get(n, s) == s for n, s in zip(pairs["name"], pairs["scale"], strict=True))  # within a size
    a, b = (json.loads((p / "results" / "prediction.json").read_text()) for p in (out, tmp_path / "by_hand"))
    assert a["schemes"] == b["schemes"] and "loso" in a["schemes"]
