"""The guide study's report rules (rankscope/report/guide_closure.py, guide_section.py) on synthetic tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from helpers_guide_report import (
    BASE_FLOPS_TO_TARGET,
    GUIDE_FLOOR,
    GUIDE_GAP,
    guide_parity,
    guide_study_tables,
)

from rankscope.report.guide_closure import (
    FAILURE,
    INCONCLUSIVE,
    NO_NULL,
    SUCCESS,
    closure,
    distances,
    null_floor,
)
from rankscope.report.guide_section import guide_html, guide_verdicts

ALL = {"barrier": 0.6, "activations": 0.6, "alpha": 0.6, "stable_rank": 0.6}


def _verdicts(**kw):
    diag, down, arms, ppl = guide_study_tables(**kw)
    return guide_verdicts(diag, down, arms, ppl, tolerance=0.02)


def test_distances_and_floor_are_the_constructed_ones():
    diag, _, arms, _ = guide_study_tables(noise=0.0, closes=ALL)
    dist = distances(diag, arms)
    floor = null_floor(diag, dist, arms)
    for m in GUIDE_FLOOR:
        assert floor[m] == pytest.approx(GUIDE_FLOOR[m], abs=1e-9)
        assert dist[m]["galore_s1"] == pytest.approx(GUIDE_GAP[m], abs=1e-9)
        moved = GUIDE_GAP[m] - 0.6 * (GUIDE_GAP[m] - GUIDE_FLOOR[m])
        assert dist[m]["galore_s1_sam"] == pytest.approx(moved, abs=1e-9)
    assert "full_rank_s0" not in dist["barrier"]  # the reference has no distance to itself


def test_g_is_exactly_the_closed_fraction_without_noise():
    diag, _, arms, _ = guide_study_tables(noise=0.0, closes={**ALL, "barrier": 0.3})
    dist = distances(diag, arms)
    floor = null_floor(diag, dist, arms)
    pairs = [(f"galore_s{s}", f"galore_s{s}_sam") for s in range(3)]
    assert closure(dist, floor, pairs, "barrier").mean == pytest.approx(0.3)
    c = closure(dist, floor, pairs, "spectra")
    assert c.mean == pytest.approx(0.6) and c.lo == pytest.approx(0.6)  # zero spread: zero-width interval


def test_a_guide_that_closes_the_gap_beyond_the_null_is_a_success():
    [v] = _verdicts(closes=ALL)
    assert v.word == SUCCESS, v.reasons
    assert all(v.closures[f].lo > 0.25 for f in ("barrier", "activations", "spectra"))


def test_pure_noise_stays_inconclusive():
    for seed in range(5):
        [v] = _verdicts(pure_noise=True, rng_seed=seed, noise=0.01)
        assert v.word == INCONCLUSIVE, (seed, v.reasons)


def test_a_guide_that_does_nothing_to_a_real_gap_is_a_failure():
    [v] = _verdicts(closes={})
    assert v.word == FAILURE and "inside the floor" in " ".join(v.reasons)


def test_a_guide_that_moves_only_its_own_metric_is_not_a_success():
    [v] = _verdicts(guide="align", closes={"activations": 0.9})
    assert v.word == FAILURE and "only the optimised" in " ".join(v.reasons)
    [v] = _verdicts(guide="spectral", closes={"alpha": 0.9, "stable_rank": 0.9})
    assert v.word == FAILURE
    # the same movement of activations by a guide that does not optimise them counts (with a second family)
    [v] = _verdicts(guide="sam", closes={"activations": 0.9, "barrier": 0.9})
    assert v.word == SUCCESS


def test_no_sibling_means_no_null():
    [v] = _verdicts(closes=ALL, siblings=False)
    assert v.word == NO_NULL


def test_one_seed_has_no_interval_and_is_inconclusive():
    [v] = _verdicts(closes=ALL, seeds=(0,))
    assert v.word == INCONCLUSIVE and math.isnan(v.closures["barrier"].lo)
    assert "one seed" in v.closures["barrier"].note


def test_downstream_worse_beyond_its_interval_is_a_failure():
    [v] = _verdicts(closes=ALL, acc_change=-0.1)
    assert v.word == FAILURE and "downstream" in " ".join(v.reasons)


def test_costly_guide_needs_the_cost_matched_control():
    [v] = _verdicts(closes=ALL, extra_flops=1.0)
    assert v.word == INCONCLUSIVE and "cost-matched" in " ".join(v.reasons)
    [v] = _verdicts(closes=ALL, extra_flops=1.0, cost_matched={k: 0.6 for k in ALL})
    assert v.word == FAILURE  # more tokens alone close as much
    [v] = _verdicts(closes=ALL, extra_flops=1.0, cost_matched={k: 0.1 for k in ALL})
    assert v.word == SUCCESS


def test_off_parity_arm_is_not_a_success():
    diag, down, arms, ppl = guide_study_tables(closes=ALL)
    ppl = {r: (60.0 if r.endswith("_sam") else p) for r, p in ppl.items()}
    [v] = guide_verdicts(diag, down, arms, ppl, tolerance=0.02)
    assert v.word == INCONCLUSIVE and "parity" in " ".join(v.reasons)


@pytest.mark.parametrize(("guide", "rand", "top1", "word"), [
    ("rwp", 0.3, 0.9, "confirmed"),  # random sharpness falls away from full-rank's 0.9
    ("rwp", 0.8, 0.9, "contradicted"),
    ("sam", 0.5, 0.5, "confirmed"),  # top-1 moves toward full-rank's 0.4
    ("sam", 0.5, 1.2, "contradicted"),
])
def test_sign_prediction_is_checked(guide, rand, top1, word):
    diag, down, arms, ppl = guide_study_tables(guide=guide, closes=ALL)
    arm = diag["run"].str.endswith(f"_{guide}")
    rng = np.random.default_rng(0)
    for metric, value in (("rand_sharpness", rand), ("pca_top1_sharpness", top1)):
        sel = arm & (diag["metric"] == metric)
        diag.loc[sel, "value"] = value + rng.normal(0, 0.01, sel.sum())
    [v] = guide_verdicts(diag, down, arms, ppl)
    assert v.sign.endswith(word), v.sign


def test_section_html_names_the_verdicts_and_the_missing_null():
    html = guide_html(_verdicts(closes=ALL))
    assert "success" in html and "G barrier" in html and "sign prediction" in html
    html = guide_html(_verdicts(closes=ALL, siblings=False))
    assert "no null: run siblings" in html and "No full-rank sibling" in html
    assert "No guided arms" in guide_html([])


def test_full_rank_with_the_guide_is_a_control_in_floor_units():
    diag, down, arms, ppl = guide_study_tables(closes=ALL)
    extra, _, fr_arms, _ = guide_study_tables(method="full_rank", closes=ALL)
    fr_arms = [a for a in fr_arms if a.run.endswith("_sam")]
    keep = extra["run"].str.endswith("_sam")
    both = pd.concat([diag, extra[keep]], ignore_index=True)
    vs = guide_verdicts(both, down, arms + fr_arms, ppl)
    fr = next(v for v in vs if v.method == "full_rank")
    assert fr.word == "control" and "× floor" in guide_html(vs)


def test_report_of_a_guided_study_has_the_section_and_keeps_arms_out_of_the_findings(tmp_path):
    from helpers_guide_report import make_guided_study

    from rankscope.report.render import render_report

    html = render_report(make_guided_study(tmp_path / "g")).read_text()
    section = html[html.index("Did guidance move low-rank toward full-rank?"):]
    assert "sam on galore" in section and "sam on cola" in section and "× floor" in section
    assert "galore_s0_sam" in html  # the runs table lists the arms
    # the paper's findings compare methods: an arm must not be a fourth "method" nor pooled into galore
    findings = html[:html.index("Did guidance move")]
    assert findings.count("galore_s0_sam") == 1


def test_parity_findings_leave_the_arms_parity_models_out(tmp_path):
    import json

    from rankscope.report.load import RunInfo
    from rankscope.report.parity_section import _without_arm_models

    (tmp_path / "study.json").write_text(json.dumps({"guide_arms": [{"run": "galore_s0_sam"}]}))
    parity = {"runs": [{"main_run": "galore_s0", "run": "galore_s0_b80"},
                       {"main_run": "galore_s0_sam", "run": "galore_s0_sam_b80"}]}
    diag, down, _, _ = guide_study_tables(seeds=(0,))
    diag = diag.assign(run=diag["run"].replace({"galore_s0": "galore_s0_b80", "galore_s0_sam": "galore_s0_sam_b80"}))
    models = [RunInfo("galore_s0_b80", "galore", 0), RunInfo("galore_s0_sam_b80", "galore", 0)]
    d, _, m = _without_arm_models(tmp_path, parity, diag, down, models)
    assert "galore_s0_sam_b80" not in set(d["run"]) and "galore_s0_b80" in set(d["run"])
    assert [r.name for r in m] == ["galore_s0_b80"]


# ---- cost to the parity target (rankscope/report/guide_cost.py) ----

def _with_parity(ratios, cm_ratio=None, **kw):
    diag, down, arms, ppl = guide_study_tables(**kw)
    return guide_verdicts(diag, down, arms, ppl, tolerance=0.02, parity=guide_parity(arms, ratios, cm_ratio))


def test_flops_to_target_ratio_is_exact_on_paired_seeds():
    from rankscope.report.guide_cost import cost_ratio, parity_rows

    _, _, arms, _ = guide_study_tables(closes=ALL)
    rows = parity_rows(guide_parity(arms, [1.2, 1.5, 1.8]))
    assert rows["galore_s2_sam"]["flops_to_target"] == pytest.approx(3 * BASE_FLOPS_TO_TARGET * 1.8)
    c = cost_ratio(rows, [(a.base, a.run) for a in arms])
    half = 4.302652729911275 * 0.3 / math.sqrt(3)  # t(0.975, 2 df) · sd / √n of 1.2, 1.5, 1.8
    assert c.per_seed == pytest.approx([1.2, 1.5, 1.8])
    assert (c.mean, c.lo, c.hi) == pytest.approx((1.5, 1.5 - half, 1.5 + half))
    assert c.cell() == f"1.50× [{1.5 - half:.2f}, {1.5 + half:.2f}]"
    [v] = _with_parity([1.2, 1.5, 1.8], closes=ALL)
    assert v.to_target.mean == pytest.approx(1.5)
    assert "tokens to target 1.00× [1.00, 1.00]" in " ".join(v.reasons)
    assert "peak memory of the parity model 1.10× [1.10, 1.10]" in " ".join(v.reasons)
    bad = {**rows, "galore_s0_sam": {**rows["galore_s0_sam"], "flops_to_target": "n/a"}}  # not measured, no crash
    assert cost_ratio(bad, [(a.base, a.run) for a in arms]).per_seed == pytest.approx([1.5, 1.8])
    assert parity_rows({"runs": [["not", "a", "row"]]}) == {} and parity_rows([]) == {}
    one = cost_ratio(rows, [("galore_s1", "galore_s1_sam")])
    assert one.mean == pytest.approx(1.5) and one.cell() == "1.50× (one seed)"


def test_an_arm_that_never_reaches_the_target_says_so_and_is_not_a_success():
    [v] = _with_parity(None, closes=ALL)
    assert v.to_target.cell() == "not reached"
    assert v.word == INCONCLUSIVE and "never reaches the parity target" in " ".join(v.reasons)
    assert "not reached" in guide_html([v])
    [v] = _with_parity([1.1, None, 1.1], closes=ALL)  # one seed missed: the ratio of the others, and the count
    assert v.to_target.mean == pytest.approx(1.1) and "1 of 3 seeds not reached" in v.to_target.cell()


def test_the_cost_to_the_target_decides_the_35_percent_rule():
    # cheap per update (+20 %) but 60 % more FLOPs to the target: costly, and without a control inconclusive
    [v] = _with_parity(1.6, closes=ALL, extra_flops=0.2)
    assert v.word == INCONCLUSIVE and "extra FLOPs to the parity target +60%" in " ".join(v.reasons)
    # costly per update (sam, +100 %) but only 20 % more FLOPs to the target: within the rule, a success
    [v] = _with_parity(1.2, closes=ALL, extra_flops=1.0)
    assert v.word == SUCCESS and "extra FLOPs to the parity target +20% (≤ 35%)" in " ".join(v.reasons)
    # without parity the per-update figure decides, as before
    [v] = _verdicts(closes=ALL, extra_flops=1.0)
    assert v.word == INCONCLUSIVE and v.to_target is None


def test_the_cost_matched_controls_ratio_is_in_the_reasons_line():
    [v] = _with_parity(1.6, cm_ratio=1.45, closes=ALL, extra_flops=0.6, cost_matched={k: 0.1 for k in ALL})
    assert v.cost_matched_to_target.mean == pytest.approx(1.45)
    assert v.word == SUCCESS, v.reasons  # costly, but beats its control
    html = guide_html([v])
    assert "cost-matched control / unguided: FLOPs to target 1.45× [1.45, 1.45]" in html


def test_guide_section_has_the_flops_to_target_column(tmp_path):
    from helpers_guide_report import make_guided_study

    from rankscope.report.render import render_report

    html = render_report(make_guided_study(tmp_path / "g", parity_ratio=1.25)).read_text()
    section = html[html.index("Did guidance move low-rank toward full-rank?"):]
    assert "FLOPs to target (× unguided)" in section and "1.25× [1.25, 1.25]" in section
