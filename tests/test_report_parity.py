"""Report: n-gram baseline verdicts, the parity section and the "differ at parity?" finding."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from helpers_report import make_synthetic_study

from rankscope.report.browser import check_page, find_chromium
from rankscope.report.load import load_study
from rankscope.report.parity_section import NOT_APPLICABLE, apply_baseline_verdicts, differ_at_parity
from rankscope.report.parity_verdicts import speed_html
from rankscope.report.plots import FIGURE_NAMES
from rankscope.report.render import render_report
from rankscope.report.stats import HOLDS, Finding
from rankscope.report.verdict_rules import NO_NULL, WITHIN, is_exploratory


def _study(tmp_path, unigram):
    root = make_synthetic_study(tmp_path / "s", seeds=(0, 1))
    data = load_study(root)
    baselines = {"unigram_ppl": unigram, "bigram_ppl": unigram / 5, "bigram_lambda": 0.8}
    (root / "results" / "baselines.json").write_text(json.dumps({"key": {}, "baselines": baselines}))
    models = [r.name for r in data.runs]
    rows = [{"main_run": r.name, "method": r.method, "seed": r.seed, "status": "within", "reached": True,
             "run": r.name, "ppl": r.final_val_ppl, "tokens_to_target": 1e5, "flops_to_target": 1e12,
             "seconds_to_target": 10.0, "memory_bytes": 2**20, "peak_mib": None, "best_ppl": r.final_val_ppl,
             "equal_step_ppl": r.final_val_ppl} for r in data.runs]
    curves = {r.name: [{"tokens": 5e4, "ppl": 2 * r.final_val_ppl}, {"tokens": 1e5, "ppl": r.final_val_ppl}]
              for r in data.runs}
    parity = {"protocol": "wsd-branches", "settings": {"tolerance": 0.02, "cap": 1.0},
              "target": {"ppl": 100.0, "how": "explicit"}, "runs": rows, "models": models, "curves": curves,
              "per_method": {"galore": {"reached": 2, "seeds": 2, "ppl": {"mean": 100, "lo": 98, "hi": 102, "n": 2}}},
              "baselines": baselines}
    (root / "results" / "parity.json").write_text(json.dumps(parity))
    (root / "results" / "parity").mkdir()
    for name in ("diagnostics.parquet", "downstream.parquet"):
        shutil.copy(root / "results" / name, root / "results" / "parity" / name)
    return root, data


def test_verdicts_not_applicable_only_when_a_run_is_not_past_unigram(tmp_path):
    root, data = _study(tmp_path, unigram=1e9)
    worst = max(r.final_val_ppl for r in data.runs)
    f = [Finding("F1", "s", "c", verdict=HOLDS)]
    apply_baseline_verdicts(f, data.runs, {"unigram_ppl": worst * 2})
    assert f[0].verdict == HOLDS
    apply_baseline_verdicts(f, data.runs, {"unigram_ppl": worst})  # the worst run sits at the baseline: not past
    assert f[0].verdict == NOT_APPLICABLE and "holds" in f[0].notes[0]


def test_report_has_parity_section_and_baseline_verdicts(tmp_path):
    root, _ = _study(tmp_path, unigram=1.0)  # every run is "not past unigram"
    html = render_report(root).read_text()
    for text in ("Perplexity parity and baselines", "Cost to the target", "Findings at parity", "P1.",
                 "Diagnostics: equal steps and at parity", "Downstream at parity", "(at equal steps)",
                 "Speed to the target (seed level)",
                 "early training"):
        assert text in html, text
    assert html.count("<figcaption>") == len(FIGURE_NAMES) + 1  # + the cooled-model curves
    assert NOT_APPLICABLE in html and "verdict before the baseline check" in html


def _down(values):
    """values: (method, init_seed, data_seed, avg_acc); each model's evaluator interval is ±0.02."""
    return pd.DataFrame([{"run": f"{m}_s{i}_d{d}", "method": m, "seed": i, "init_seed": i, "data_seed": d,
                          "step": 10, "metric": "avg_acc", "scope": "model", "name": "", "value": v,
                          "ci_low": v - 0.02, "ci_high": v + 0.02} for m, i, d, v in values])


def _p1_table(gap: float, seeds: int = 5, sib_noise: float = 0.005):
    vals = [("full_rank", s, s, 0.50 + 0.01 * s) for s in range(seeds)]
    vals += [("galore", s, s, 0.50 + 0.01 * s + gap + 0.002 * (-1) ** s) for s in range(seeds)]
    vals += [("cola", s, s, 0.50 + 0.01 * s + 0.001 * (-1) ** s) for s in range(seeds)]
    sibs = [("full_rank", s, s + 100, 0.50 + 0.01 * s + sib_noise * (-1) ** s) for s in range(seeds)]
    return _down(vals), _down(vals + sibs)


def test_differ_at_parity_words():
    parity, equal = _p1_table(gap=0.10)
    f = differ_at_parity(parity, null_down=equal)  # the parity models have no siblings: the equal-step null
    assert f.verdict == HOLDS and any("equal-step siblings" in n for n in f.notes)
    row = next(e for e in f.evidence if "galore" in e.label and "full_rank" in e.label)
    assert row.verdict == "differ" and row.n == 5 and row.n_null == 5 and abs(row.value) == pytest.approx(0.10, abs=1e-3)
    assert "× sibling spread" in row.null_units and "Holm" in row.detail
    assert differ_at_parity(parity).verdict == NO_NULL  # no siblings anywhere: no verdict
    parity, equal = _p1_table(gap=0.001)
    assert differ_at_parity(parity, null_down=equal).verdict == WITHIN
    parity, equal = _p1_table(gap=0.10, seeds=2)
    f = differ_at_parity(parity, null_down=equal)
    assert is_exploratory(f.verdict) and "n = 2" in f.verdict


@pytest.mark.parametrize("effect", [0.0, 3.0])
def test_p1_calibration_on_tables(effect):
    """Accuracies of two methods and a sibling from one distribution: P1 holds in ≤ 5 % of 200 studies; a gap of
    3 × the sibling spread with 5 paired seeds: ≥ 80 %."""
    rng = np.random.default_rng(9)
    sigma, item = 0.01, 0.01  # seed-to-seed and item-level noise of one model's average accuracy
    spread = float(np.hypot(sigma, item))
    declared = 0
    for _ in range(200):
        start = rng.normal(0.5, 0.02, 5)
        a, b, sib = (start + rng.normal(0, sigma, (3, 5)) + rng.normal(0, item, (3, 5)))
        vals = [("full_rank", s, s, v) for s, v in enumerate(a)]
        vals += [("galore", s, s, v + effect * spread) for s, v in enumerate(b)]
        sibs = [("full_rank", s, s + 100, v) for s, v in enumerate(sib)]
        down = _down(vals + sibs).assign(ci_low=lambda f: f["value"] - 1.96 * item,
                                         ci_high=lambda f: f["value"] + 1.96 * item)
        declared += differ_at_parity(down, n_boot=500).verdict == HOLDS
    rate = declared / 200
    assert rate <= 0.05 if effect == 0 else rate >= 0.80


@pytest.mark.browser
@pytest.mark.skipif(find_chromium() is None, reason="headless Chromium not found")
def test_parity_report_passes_the_browser_check(tmp_path):
    root, _ = _study(tmp_path, 1.0)
    seen = check_page(render_report(root))
    assert seen.probe_ran and seen.figures_ok == seen.figures_total == len(FIGURE_NAMES) + 1
    assert seen.console_errors == []


def test_speed_to_target_is_decided_against_the_siblings():
    def run(method, i, d, tokens):
        return {"main_run": f"{method}_s{i}_d{d}", "method": method, "seed": i, "init_seed": i, "data_seed": d,
                "reached": True, "tokens_to_target": tokens, "flops_to_target": 6 * tokens}

    runs = [run("full_rank", s, s, 1e6 * (1 + 0.05 * s)) for s in range(5)]
    runs += [run("galore", s, s, 0.5e6 * (1 + 0.05 * s) * (1 + 0.01 * (-1) ** s)) for s in range(5)]
    html = speed_html({"runs": runs}, None)
    assert "no null" in html and "0.501×" in html  # no sibling reached the target: no speed verdict
    sibs = [run("full_rank", s, s + 100, 1e6 * (1 + 0.05 * s) * (1 + 0.02 * (-1) ** s)) for s in range(5)]
    html = speed_html({"runs": runs + sibs}, None)
    assert "faster to target" in html and "Sibling spread of log tokens" in html
    slow = [run("full_rank", s, s + 100, 1e6 * (1 + 0.05 * s) * (3.0 if s % 2 else 0.3)) for s in range(5)]
    assert "faster to target" not in speed_html({"runs": runs + slow}, None).split("</thead>")[1]
