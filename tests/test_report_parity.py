"""Report: n-gram baseline verdicts, the parity section and the "differ at parity?" finding."""

import json
import shutil

import pandas as pd
import pytest
from helpers_report import make_synthetic_study

from rankscope.report.browser import check_page, find_chromium
from rankscope.report.load import load_study
from rankscope.report.parity_section import NOT_APPLICABLE, apply_baseline_verdicts, differ_at_parity
from rankscope.report.plots import FIGURE_NAMES
from rankscope.report.render import render_report
from rankscope.report.stats import HOLDS, INCONCLUSIVE, Finding


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
                 "early training"):
        assert text in html, text
    assert html.count("<figcaption>") == len(FIGURE_NAMES) + 1  # + the cooled-model curves
    assert NOT_APPLICABLE in html and "verdict before the baseline check" in html


def _down(values):
    return pd.DataFrame([{"run": f"{m}_s0", "method": m, "step": 10, "metric": "avg_acc", "scope": "model",
                          "name": "", "value": v, "ci_low": v - 0.02, "ci_high": v + 0.02} for m, v in values])


def test_differ_at_parity_interval_of_largest_pair():
    f = differ_at_parity(_down([("full_rank", 0.50), ("galore", 0.60), ("cola", 0.52)]))
    assert f.verdict == HOLDS and "galore" in f.evidence[0].label and "full_rank" in f.evidence[0].label
    assert abs(f.evidence[0].value) == pytest.approx(0.10)
    se = 0.02 / 1.96
    assert f.evidence[0].hi - f.evidence[0].lo == pytest.approx(2 * 1.96 * (2 * se**2) ** 0.5)
    assert differ_at_parity(_down([("full_rank", 0.50), ("galore", 0.51)])).verdict == INCONCLUSIVE


@pytest.mark.browser
@pytest.mark.skipif(find_chromium() is None, reason="headless Chromium not found")
def test_parity_report_passes_the_browser_check(tmp_path):
    root, _ = _study(tmp_path, 1.0)
    seen = check_page(render_report(root))
    assert seen.probe_ran and seen.figures_ok == seen.figures_total == len(FIGURE_NAMES) + 1
    assert seen.console_errors == []
