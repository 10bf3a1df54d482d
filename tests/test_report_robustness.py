"""Report panels for distribution shift and fine-tuning pressure, and the per-target findings rows."""

from __future__ import annotations

import json
import math

import pandas as pd

from rankscope.report.findings_downstream import check_targets
from rankscope.report.robustness import finetune_html, load_robustness, ranking_survives, shift_html
from rankscope.report.stats import HOLDS, INCONCLUSIVE


def _rows(values: dict[tuple[str, str, str], float]) -> pd.DataFrame:
    return pd.DataFrame([{"run": f"{m}_s0", "method": m, "step": 9, "metric": metric, "name": name, "value": v,
                          "ci_low": v - 0.1, "ci_high": v + 0.1, "scope": "text", "settings": "{}"}
                         for (m, metric, name), v in values.items()])


def test_ranking_survives_names_the_swapped_pairs():
    tau, swaps = ranking_survives({"full_rank": 10.0, "galore": 11.0, "cola": 12.0},
                                  {"full_rank": 30.0, "galore": 29.0, "cola": 40.0})
    assert swaps == ["full_rank vs galore"] and math.isclose(tau, 1 / 3)
    assert ranking_survives({"a": 1.0, "b": 2.0}, {"a": 5.0, "b": 6.0}) == (1.0, [])


def test_shift_panel_shows_ppl_gap_and_ranking():
    frame = _rows({("full_rank", "heldout_ppl", "val"): 10.0, ("galore", "heldout_ppl", "val"): 11.0,
                   ("full_rank", "heldout_ppl", "shift"): 30.0, ("galore", "heldout_ppl", "shift"): 29.0,
                   ("full_rank", "shift_gap_nll", "shift"): 1.1, ("galore", "shift_gap_nll", "shift"): 0.97})
    html = shift_html(frame)
    assert "ppl: shift" in html and "gap (nats/token): shift" in html and "[1, 1.2]" in html
    assert "changes under the shift" in html and "intervals disjoint for full_rank vs galore" in html
    assert "No held-out-text results" in shift_html(pd.DataFrame())
    shifted = (frame["method"] == "galore") & (frame["name"] == "shift") & (frame["metric"] == "heldout_ppl")
    frame.loc[shifted, ["value", "ci_low", "ci_high"]] = [29.95, 29.85, 30.05]  # swapped, intervals overlap
    assert "may be noise" in shift_html(frame)


def test_finetune_panel_and_target_findings(tmp_path):
    ft = _rows({("galore", "ft_acc", "genre"): 0.8, ("galore", "ft_forgetting", "genre"): 0.05})
    ft["settings"] = json.dumps({"task": "genre", "mode": "full", "steps": 10, "lr": 3e-4})
    html = finetune_html(ft)
    assert "fine-tuned acc" in html and "0.8 [0.7, 0.9]" in html and "10 steps" in html
    pred = {"n": 6, "schemes": {"loo": {"baseline": {"r2": 0.1}, "extended": {"r2": 0.6}, "diff": {"r2": 0.5},
                                        "ci": {"diff": {"r2": [0.2, 0.8]}}}}}
    results = tmp_path / "results"
    results.mkdir()
    (results / "prediction_ft_acc.json").write_text(json.dumps(pred))
    (results / "prediction_targets.json").write_text(json.dumps({"ft_acc": "prediction_ft_acc.json",
                                                                 "forgetting": "not fitted: too few runs"}))
    data = load_robustness(tmp_path)
    found = {f.id: f for f in check_targets(data.targets)}
    assert found["F7·ft_acc"].verdict == HOLDS
    assert found["F7·forgetting"].verdict == INCONCLUSIVE and "too few runs" in found["F7·forgetting"].reason


def test_parity_models_get_their_own_panel(tmp_path):
    from rankscope.report.robustness import shift_panels

    frame = _rows({("full_rank", "heldout_ppl", "val"): 10.0, ("full_rank", "heldout_ppl", "shift"): 30.0})
    (tmp_path / "results" / "parity").mkdir(parents=True)
    frame.to_parquet(tmp_path / "results" / "heldout.parquet")
    assert "At parity" not in shift_panels(load_robustness(tmp_path))
    frame.to_parquet(tmp_path / "results" / "parity" / "heldout.parquet")
    html = shift_panels(load_robustness(tmp_path))
    assert "At equal steps" in html and "At parity" in html


def test_probe_that_adapts_no_model_gives_no_finetuning_finding(tmp_path):
    from rankscope.report.robustness import PROBE_IDLE, RobustnessData, adapted_runs, apply_probe_check
    from rankscope.report.stats import Finding

    idle = _rows({("full_rank", "ft_gain", "genre"): 0.0, ("galore", "ft_gain", "genre"): -0.02})
    assert adapted_runs(idle) == [] and "adapts no model" in finetune_html(idle)
    findings = [Finding("F7·ft_acc", "s", "c", verdict=HOLDS), Finding("F7·forgetting", "s", "c"),
                Finding("F1", "s", "c", verdict=HOLDS)]
    apply_probe_check(findings, RobustnessData(finetune=idle))
    assert [f.verdict for f in findings] == [PROBE_IDLE, PROBE_IDLE, HOLDS]
    adapts = _rows({("full_rank", "ft_gain", "genre"): 0.2, ("galore", "ft_gain", "genre"): 0.0})
    assert adapted_runs(adapts) == ["full_rank_s0"] and "adapts 1 of 2" in finetune_html(adapts)
    findings = [Finding("F7·ft_acc", "s", "c", verdict=HOLDS)]
    apply_probe_check(findings, RobustnessData(finetune=adapts))
    assert findings[0].verdict == HOLDS
