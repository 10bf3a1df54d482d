"""The guide study's config section (rankscope/study/guide_arms.py): arms, controls, bad input, dry-run."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers_fs import assert_clean_failure, assert_unchanged, run_cli, snapshot

from rankscope.study.config_file import load_study_config
from rankscope.study.guide_arms import needs_reference

GUIDES = """base: smoke
methods: [full_rank, galore, cola]
seeds: [0, 1]
siblings: {methods: [full_rank], data_seeds: [5]}
guides:
  methods: [galore, cola]
  guides: [sam, align]
  options: {sam: {rho: 0.1}}
  controls: {full_rank: true, cost_matched: true}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


def test_arms_pair_with_the_unguided_runs(tmp_path):
    cfg = load_study_config(_write(tmp_path, GUIDES))
    runs = {r.name: r for r in cfg.to_run_configs(tmp_path / "out")}
    for s in (0, 1):
        for m in ("galore", "cola"):
            base, sam, align = runs[f"{m}_s{s}"], runs[f"{m}_s{s}_sam"], runs[f"{m}_s{s}_align"]
            assert (sam.guide, sam.guide_options["rho"]) == ("sam", 0.1)
            # paired seeds: only the guide differs from the unguided run
            assert sam.train == base.train and sam.method_options == base.method_options
            assert Path(align.guide_options["reference"]) == runs[f"full_rank_s{s}"].run_dir
            assert needs_reference(align) == f"full_rank_s{s}" and not needs_reference(sam)
            cm = runs[f"{m}_s{s}_cm_sam"]  # sam doubles the FLOPs: the control gets twice the sequences
            assert not cm.guide and cm.train.steps == base.train.steps
            assert cm.train.micro_batch_size * cm.train.grad_accum == 2 * base.train.micro_batch_size
        assert runs[f"full_rank_s{s}_sam"].guide == "sam"
        assert f"full_rank_s{s}_align" not in runs  # align's reference would be the run itself
        assert f"galore_s{s}_cm_align" not in runs  # +5 % FLOPs: below one more sequence per update
    arms = cfg.to_dict()["guide_arms"]
    roles = {a["run"]: (a["role"], a["base"]) for a in arms}
    assert roles["galore_s1_cm_sam"] == ("cost_matched", "galore_s1")
    assert roles["cola_s0_align"] == ("guided", "cola_s0")
    sam = next(a for a in arms if a["run"] == "galore_s0_sam")
    assert sam["extra_flops"] == pytest.approx(1.0, abs=0.02)


def test_no_guides_section_adds_nothing(tmp_path):
    cfg = load_study_config(_write(tmp_path, "base: smoke\n"))
    assert not any(r.guide for r in cfg.to_run_configs(tmp_path)) and "guide_arms" not in cfg.to_dict()


@pytest.mark.parametrize(("edit", "words"), [
    (("guides: [sam, align]", "guides: [sam, flatten]"), ["guides.guides", "flatten", "available"]),
    (("methods: [galore, cola]\n", "methods: [galore, fira]\n"), ["guides.methods", "fira", "does not train"]),
    (("guides: [sam, align]\n  options: {sam: {rho: 0.1}}", "guides: [spectral]"), ["cola", "spectral",
                                                                                       "guides.methods"]),
    (("methods: [full_rank, galore, cola]\nseeds: [0, 1]\nsiblings: {methods: [full_rank], data_seeds: [5]}",
      "methods: [galore, cola]\nsiblings: {methods: [], data_seeds: []}"), ["align", "full-rank reference",
                                                                          "guides.options.align.reference"]),
    (("{rho: 0.1}", "{rhoo: 0.1}"), ["guides.options.sam", "rhoo"]),
    (("{rho: 0.1}", "{rho: big}"), ["guides.options.sam", "rho"]),
    (("cost_matched: true", "cost_match: true"), ["guides.controls", "cost_match"]),
    (("options: {sam: {rho: 0.1}}", "options: {rwp: {sigma: 0.1}}"), ["guides.options", "rwp"]),
])
def test_bad_guide_sections_exit_2_naming_the_field(tmp_path, edit, words):
    config = _write(tmp_path, GUIDES.replace(*edit))
    out = tmp_path / "out"
    before = snapshot(tmp_path)
    proc = run_cli("study", "--config", config, "--out", out)
    assert_clean_failure(proc, 2)
    for w in words:
        assert w in proc.stderr, (w, proc.stderr)
    assert_unchanged(before, tmp_path)


def test_dry_run_lists_and_prices_the_arms(tmp_path):
    out = tmp_path / "out"
    proc = run_cli("study", "--config", _write(tmp_path, GUIDES), "--out", out, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "guide study: 14 arm(s) next to the unguided runs (paired seeds)" in text
    assert "galore_s0_cm_sam: galore cost-matched control: +100% tokens per update" in text
    assert "galore_s0_align: galore guided by align (pairs with galore_s0, +5% FLOPs; no cost-matched" in text
    rows = {ln.split()[0]: ln.split() for ln in text.splitlines() if ln.startswith(("galore_s0", "cola_s0"))}

    def flops(row):
        v = row[2]
        return float(v[:-1]) * {"G": 1e9, "M": 1e6, "T": 1e12}[v[-1]]

    assert flops(rows["galore_s0_sam"]) / flops(rows["galore_s0"]) == pytest.approx(2.0, rel=0.02)
    assert flops(rows["galore_s0_cm_sam"]) == pytest.approx(flops(rows["galore_s0_sam"]), rel=0.02)
    assert "note: guide sam on 100% of updates: +100% FLOPs per token" in text
    assert not out.exists()


def _total_flops(preset: str, tmp_path: Path) -> float:
    from rankscope.study.cost import study_costs
    from rankscope.study.parity_stage import planned_jobs

    cfg = load_study_config(preset)
    runs = cfg.to_run_configs(tmp_path / preset)
    return sum(r["flops"] for r in study_costs(runs, 1, planned=planned_jobs(cfg, cfg.main_runs(runs))))


def test_cpu_guides_preset_costs_about_the_demo(tmp_path):
    """guides-demo is budgeted with the dry-run's FLOPs against the demo's (15 minutes on 2 cores,
    docs/benchmarks.md): within 15 % of it, training and parity models included."""
    cfg = load_study_config("guides-demo")
    names = {r.name for r in cfg.to_run_configs(tmp_path)}
    assert {"galore_s0_sam", "cola_s0_align", "full_rank_s0_sam", "galore_s0_cm_sam", "full_rank_s0_d1"} <= names
    assert _total_flops("guides-demo", tmp_path) <= 1.15 * _total_flops("demo", tmp_path)


def test_gpu_guides_preset_dry_run_prices_every_arm(tmp_path):
    proc = run_cli("study", "--preset", "guides-60m", "--out", tmp_path / "g", "--dry-run", "--gpu", "h100")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    per_seed = ["galore_s{}_sam", "galore_s{}_cm_sam", "cola_s{}_sam", "cola_s{}_cm_sam", "full_rank_s{}_sam",
                "galore_s{}_align", "galore_s{}_cm_align", "cola_s{}_align", "cola_s{}_cm_align"]
    assert f"guide study: {len(per_seed) * 3} arm(s)" in text
    rows = {ln.split()[0] for ln in text.splitlines() if ln and not ln.startswith(" ")}
    for s in (0, 1, 2):
        assert {n.format(s) for n in per_seed} <= rows
    assert "model 60m, 10000 steps" in text and "3 method(s) × 3 init seed(s)" in text
    total = next(ln for ln in text.splitlines() if ln.startswith("total")).split()
    assert float(total[-2]) > 0  # GPU-hours of the whole study, arms and parity models included
    assert "note: guide sam on 100% of updates: +100% FLOPs per token" in text
