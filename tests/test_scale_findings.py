"""Findings across model sizes (issue 24) on synthetic tables whose answer is known: where a finding holds, its trend
over size with an interval, F6 as the paper's existential claim, and the pooled predictor's leave-one-size-out CV."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from rankscope.downstream.predict import predict
from rankscope.report.findings_downstream import check_f7
from rankscope.report.load import TABLE_COLUMNS
from rankscope.report.scale_findings import (
    HOLDS_EVERY,
    HOLDS_NONE,
    NO_TREND,
    STRONGER,
    WEAKER,
    evaluate_across_sizes,
    holds_at,
    order_sizes,
    size_axis,
    trend,
)
from rankscope.report.stats import FAILS, HOLDS

SIZES = ("60m", "130m", "350m")
SEEDS = range(5)


def _rec(run: str, method: str, size: str, init: int, data: int, metric: str, value: float, **kw) -> dict:
    rec = dict.fromkeys(TABLE_COLUMNS)
    rec.update(run=run, method=method, scale=size, seed=init, init_seed=init, data_seed=data, step=100.0,
               metric=metric, value=value, scope="model", name="", mode="default", space="dense", note="", null="")
    rec.update(kw)
    return rec


def sharpness_table(effect: dict[str, float], rng: np.random.Generator, noise: float = 0.02) -> pd.DataFrame:
    """rand_sharpness_fn per size: full-rank − galore = ``effect[size]`` at every paired seed (plus noise), one
    full-rank data-order sibling per seed (the null: spread ≈ ``noise``)."""
    recs = []
    for size in effect:
        for s in SEEDS:
            base = 1.0 + 0.1 * s
            recs.append(_rec(f"{size}_full_rank_s{s}", "full_rank", size, s, s, "rand_sharpness_fn",
                             base + effect[size] + rng.normal(0, noise)))
            recs.append(_rec(f"{size}_full_rank_s{s}_d{s + 100}", "full_rank", size, s, s + 100,
                             "rand_sharpness_fn", base + effect[size] + rng.normal(0, noise)))
            recs.append(_rec(f"{size}_galore_s{s}", "galore", size, s, s, "rand_sharpness_fn",
                             base + rng.normal(0, noise)))
    return pd.DataFrame(recs, columns=TABLE_COLUMNS)


def _by_id(result, fid: str):
    return next(f for f in result.findings if f.id == fid)


def test_sizes_are_ordered_by_parameters_not_by_name() -> None:
    assert order_sizes(["350m", "60m", "130m", "60m"]) == ["60m", "130m", "350m"]
    assert order_sizes(["tiny", "smoke", "mine"]) == ["smoke", "tiny", "mine"]  # unknown names last
    x, unit = size_axis(["60m", "130m"])
    assert unit == "per doubling of parameters" and x[1] > x[0]
    assert size_axis(["smoke", "mine"])[1] == "per size step"


def test_a_finding_that_holds_at_two_of_three_sizes_is_reported_as_such() -> None:
    table = sharpness_table({"60m": 0.6, "130m": 0.9, "350m": 0.0}, np.random.default_rng(0))
    res = evaluate_across_sizes(table, None, None, [])
    assert res is not None and res.sizes == list(SIZES)
    f1 = _by_id(res, "F1")
    assert [res.per_size[s][0].verdict for s in SIZES] == [HOLDS, HOLDS, "within the noise floor"]
    assert f1.verdict == holds_at(2, 3) == "holds at 2 of 3 sizes"
    assert f1.holds == ["60m", "130m"]
    assert "350m: within the noise floor" in f1.reason
    # every size strong: "every"; none: "no size"
    every = _by_id(evaluate_across_sizes(sharpness_table({s: 0.8 for s in SIZES}, np.random.default_rng(1)),
                                         None, None, []), "F1")
    assert every.verdict == HOLDS_EVERY
    none = _by_id(evaluate_across_sizes(sharpness_table({s: 0.0 for s in SIZES}, np.random.default_rng(2)),
                                        None, None, []), "F1")
    assert none.verdict == HOLDS_NONE


def test_pairs_and_nulls_never_cross_sizes() -> None:
    """A sibling at one size is no null for another: without siblings at 350m, 350m says 'no null'."""
    table = sharpness_table({s: 0.8 for s in SIZES}, np.random.default_rng(3))
    table = table[~((table["scale"] == "350m") & table["run"].str.contains("_d1"))]
    res = evaluate_across_sizes(table, None, None, [])
    assert res.per_size["350m"][0].verdict == "no null: run siblings"
    assert _by_id(res, "F1").verdict == "holds at 2 of 3 sizes"
    none = evaluate_across_sizes(table[~table["run"].str.contains("_d1")], None, None, [])
    assert _by_id(none, "F1").verdict == "no null: run siblings (at every size)"  # not "holds at no size"


def test_exploratory_sizes_are_counted_apart_never_as_holds() -> None:
    table = sharpness_table({s: 0.8 for s in SIZES}, np.random.default_rng(9))
    table = table[table["init_seed"] < 3]  # 3 paired seeds: too few for a test, the effect is far beyond the floor
    f1 = _by_id(evaluate_across_sizes(table, None, None, []), "F1")
    assert f1.verdict == "exceeds the noise floor at 3 of 3 sizes (exploratory)" and f1.holds == []


def test_trend_over_size_with_its_interval() -> None:
    table = sharpness_table({"60m": 0.3, "130m": 0.6, "350m": 0.9}, np.random.default_rng(4), noise=0.01)
    t = _by_id(evaluate_across_sizes(table, None, None, []), "F1").trends
    assert len(t) == 1 and t[0].sizes == list(SIZES) and t[0].unit == "per doubling of parameters"
    x, _ = size_axis(SIZES)
    true = float(np.polyfit(x, [0.3, 0.6, 0.9], 1)[0])
    assert t[0].lo < true < t[0].hi and t[0].lo > 0 and t[0].word == STRONGER
    flat = _by_id(evaluate_across_sizes(sharpness_table({s: 0.6 for s in SIZES}, np.random.default_rng(5)),
                                        None, None, []), "F1").trends[0]
    assert flat.lo < 0 < flat.hi and flat.word == NO_TREND


def test_trend_interval_matches_the_analytic_one_for_normal_errors() -> None:
    """Known standard errors (no df: normal) -> the slope's SE is sqrt(Σ xc² se²) / Σ xc²; the resampled interval
    must agree with slope ± 1.96 SE."""
    x = np.array([0.0, 1.0, 2.5, 4.0])
    v = np.array([1.0, 1.4, 1.9, 2.8])
    se = np.array([0.1, 0.2, 0.15, 0.3])
    t = trend("demo", x, v, v - 1.959964 * se, v + 1.959964 * se, [None] * 4, "u")
    xc = x - x.mean()
    slope = float(xc @ v / (xc @ xc))
    half = 1.959964 * math.sqrt(float(np.sum(xc**2 * se**2))) / float(xc @ xc)
    assert t.slope == pytest.approx(slope)
    assert t.lo == pytest.approx(slope - half, abs=0.06 * half)
    assert t.hi == pytest.approx(slope + half, abs=0.06 * half)
    down = trend("d", x, -v, -v - 0.1, -v + 0.1, [None] * 4, "u")
    assert down.word == WEAKER and trend("d", x, -v, -v - 0.1, -v + 0.1, [None] * 4, "u", direction=-1).word == STRONGER


def downstream_and_runs(agree: dict[str, bool], rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Three methods per size, 5 seeds each, plus a full-rank data-order sibling per seed (the null: perplexity
    spread ≈ 0.5, accuracy spread ≈ 0.005); at sizes where ``agree`` is False the accuracy order is the reverse
    of the perplexity order, clearly (gaps of 5 in perplexity and 0.1 in accuracy: 10 and 20 sibling spreads)."""
    methods = ("full_rank", "galore", "relora")
    recs, runs = [], []
    for size, same in agree.items():
        for k, m in enumerate(methods):
            for s in SEEDS:
                for data in (s, s + 100) if m == "full_rank" else (s,):
                    run = f"{size}_{m}_s{s}" + (f"_d{data}" if data != s else "")
                    acc = (0.7 - 0.1 * k if same else 0.5 + 0.1 * k) + rng.normal(0, 0.005)
                    for task in ("a", "b", "c", "d"):
                        recs.append(_rec(run, m, size, s, data, "acc", acc + rng.normal(0, 0.002), scope="task",
                                         name=task))
                    runs.append({"run": run, "method": m, "seed": s, "init_seed": s, "data_seed": data,
                                 "scale": size, "val_ppl": 20.0 + 5 * k + rng.normal(0, 0.5)})
    return pd.DataFrame(recs, columns=TABLE_COLUMNS), pd.DataFrame(runs)


def test_f6_is_the_papers_claim_orders_disagree_at_some_size() -> None:
    down, runs = downstream_and_runs({"60m": True, "130m": False, "350m": True}, np.random.default_rng(6))
    res = evaluate_across_sizes(None, down, None, runs)
    f6 = _by_id(res, "F6")
    assert [res.per_size[s][5].verdict for s in SIZES] == [FAILS, HOLDS, FAILS]
    assert f6.verdict == HOLDS and "130m" in f6.reason and f6.holds == ["130m"]
    assert "beyond the sibling spreads" in f6.reason
    assert not any(n.startswith("One scale only") for n in f6.notes)
    for s in SIZES:  # the τ interval per size is there
        tau = f6.per_size[s].evidence[0]
        assert tau.label.startswith("Kendall τ") and math.isfinite(tau.lo) and math.isfinite(tau.hi)
    down, runs = downstream_and_runs(dict.fromkeys(SIZES, True), np.random.default_rng(7))
    assert _by_id(evaluate_across_sizes(None, down, None, runs), "F6").verdict == FAILS
    # without the siblings: no null at any size, never a verdict
    mains = runs[runs["data_seed"] == runs["init_seed"]]
    none = _by_id(evaluate_across_sizes(None, down[down["run"].isin(set(mains["run"]))], None, mains), "F6")
    assert none.verdict == "no null: run siblings (at every size)"
    # two seeds per size: the disagreement exceeds the noise floor (exploratory), it does not hold
    down, runs = downstream_and_runs({"60m": True, "130m": False, "350m": True}, np.random.default_rng(8))
    two = runs[runs["init_seed"] < 2]
    few = _by_id(evaluate_across_sizes(None, down[down["run"].isin(set(two["run"]))], None, two), "F6")
    assert few.verdict == "exceeds the noise floor at 1 of 3 sizes (exploratory)" and "130m" in few.reason


def test_one_size_gives_no_cross_size_view() -> None:
    table = sharpness_table({"60m": 0.5}, np.random.default_rng(8))
    assert evaluate_across_sizes(table, None, None, []) is None


# ---------------------------------------------------------------- the pooled predictor


def pooled_table(confound: bool, seed: int = 0, per_size: int = 8) -> pd.DataFrame:
    """Models at three sizes. ``confound`` False: y = 0.5 + 0.05·m1 at every size (log-PPL shifts with size but
    says nothing about y), so a fit on two sizes carries to the third. ``confound`` True: m1 only flags the middle
    size and y is 0.1 higher there: within the sizes seen, m1 predicts the offset; with the middle size held out the
    training sizes have m1 = 0 everywhere, so nothing carries over."""
    rng = np.random.default_rng(seed)
    rows = []
    methods = ("full_rank", "galore", "fira", "cola")
    for k, size in enumerate(SIZES):
        for i in range(per_size):
            log_ppl = 3.5 - 0.3 * k + rng.normal(0, 0.05)
            if confound:
                m1 = float(k == 1)
                y = 0.5 + (0.1 if k == 1 else 0.0) + rng.normal(0, 0.005)
            else:
                m1 = rng.normal(0, 1)
                y = 0.5 + 0.05 * m1 + rng.normal(0, 0.005)
            rows.append({"run": f"{size}_{i}", "method": methods[i % 4], "seed": i // 4, "scale": size,
                         "ppl": math.exp(log_ppl), "y": y, "m1": m1})
    return pd.DataFrame(rows)


def test_leave_one_size_out_recovers_a_relation_shared_by_every_size() -> None:
    res = predict(pooled_table(confound=False), bootstrap_iters=100, seed=0)
    assert set(res.schemes) == {"loo", "lomo", "loso"}
    loso = res.schemes["loso"]
    assert loso["extended"]["r2"] > 0.9 and loso["baseline"]["r2"] < 0.2
    gain, lo, hi = res.gain("loso")
    assert lo > 0, (gain, lo, hi)
    assert res.n_by_size == {"130m": 8, "350m": 8, "60m": 8} and res.models_per_feature == pytest.approx(12.0)


def test_leave_one_size_out_exposes_a_size_confound_that_leave_one_out_rewards() -> None:
    res = predict(pooled_table(confound=True), bootstrap_iters=0, seed=0)
    assert res.schemes["loo"]["diff"]["r2"] > 0.5  # within the sizes seen, m1 "predicts" the size offset
    assert res.schemes["loso"]["extended"]["r2"] < 0.1  # but the held-out size's offset is not extrapolable


def test_leave_one_size_out_predictions_equal_refitting_per_held_out_size() -> None:
    """Oracle: scikit-learn's LeaveOneGroupOut + LinearRegression on log-PPL gives the baseline's predictions."""
    from sklearn.linear_model import LinearRegression
    from sklearn.model_selection import LeaveOneGroupOut, cross_val_predict

    table = pooled_table(confound=False, seed=3)
    res = predict(table, bootstrap_iters=0, seed=0)
    x = np.log(table[["ppl"]].to_numpy(float))
    want = cross_val_predict(LinearRegression(), x, table["y"], groups=table["scale"], cv=LeaveOneGroupOut())
    np.testing.assert_allclose(res.schemes["loso"]["pred_baseline"], want, rtol=1e-9, atol=1e-12)


def test_one_size_skips_loso_with_a_message_and_f7_says_models_per_feature() -> None:
    table = pooled_table(confound=False)
    one = predict(table[table["scale"] == "60m"].reset_index(drop=True), bootstrap_iters=0)
    assert "loso" not in one.schemes and "loso: skipped, one model size only" in one.messages
    import json

    pooled = json.loads(predict(table, bootstrap_iters=50).to_json())
    f7 = check_f7(pooled)
    note = next(n for n in f7.notes if n.startswith("n = 24"))
    assert "8 at 60m" in note and "for 2 features: 12 models per feature" in note
    assert any("(loso)" in e.label for e in f7.evidence)


def _run_info(name: str, ppl: float):
    from rankscope.report.load import RunInfo

    return RunInfo(name, name.split("_s")[0].split("_", 1)[-1], 0,
                   evals=pd.DataFrame({"step": [100], "val_ppl": [ppl], "val_loss": [math.log(ppl)]}))


def test_a_size_still_on_the_unigram_plateau_is_not_applicable_and_left_out_of_the_trend() -> None:
    """The one-size report says "not applicable" when a compared run has not left the unigram plateau; the
    cross-size view must say the same for that size, decide on the others, and trend only over them."""
    from rankscope.report.parity_section import NOT_APPLICABLE

    table = sharpness_table({"60m": 0.6, "130m": 0.9, "350m": 1.2}, np.random.default_rng(0))
    runs = {size: [_run_info(r, 500.0) for r in table.loc[table["scale"] == size, "run"].unique()] for size in SIZES}
    runs["60m"][0] = _run_info(runs["60m"][0].name, 1200.0)  # one 60m run above the unigram perplexity
    base = {size: {"unigram_ppl": 1000.0} for size in SIZES}
    res = evaluate_across_sizes(table, None, {}, [], run_infos_by_size=runs, baselines_by_size=base)
    f1 = _by_id(res, "F1")
    assert res.per_size["60m"][0].verdict == NOT_APPLICABLE
    assert [res.per_size[s][0].verdict for s in ("130m", "350m")] == [HOLDS, HOLDS]
    assert f1.verdict.startswith("holds at every applicable size") and "not applicable at 60m" in f1.verdict
    assert f1.trends and all(t.sizes == ["130m", "350m"] for t in f1.trends)
    f7 = _by_id(res, "F7")
    assert f7.verdict == NOT_APPLICABLE and runs["60m"][0].name in f7.reason
    # without the stuck run every size decides and the trend spans all three
    runs["60m"][0] = _run_info(runs["60m"][0].name, 500.0)
    again = _by_id(evaluate_across_sizes(table, None, {}, [], run_infos_by_size=runs, baselines_by_size=base), "F1")
    assert again.verdict == HOLDS_EVERY and all(t.sizes == list(SIZES) for t in again.trends)
    # every size on the plateau: nothing to decide anywhere
    stuck = {size: [_run_info(r.name, 2000.0) for r in rs] for size, rs in runs.items()}
    none = _by_id(evaluate_across_sizes(table, None, {}, [], run_infos_by_size=stuck, baselines_by_size=base), "F1")
    assert none.verdict == NOT_APPLICABLE + " (at every size)" and not none.trends
