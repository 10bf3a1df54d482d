"""Downstream predictor on synthetic studies where the truth is known."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from rankscope.downstream import predict_cv as cv
from rankscope.downstream.predict import predict, predict_from_tables
from rankscope.errors import UserError

METHODS = ("full_rank", "galore", "fira", "cola", "sltrain", "relora")


def synthetic(signal: float, n_per_method: int = 3, seed: int = 0) -> pd.DataFrame:
    """y depends on metric m1 (weight ``signal``) and, when signal = 0, on log-PPL only; m2 is noise."""
    rng = np.random.default_rng(seed)
    n = len(METHODS) * n_per_method
    log_ppl = rng.normal(3.0, 0.1, n)
    m1, m2 = rng.normal(0, 1, n), rng.normal(0, 1, n)
    y = 0.5 + signal * m1 + (0.0 if signal else -0.5) * (log_ppl - 3.0) + rng.normal(0, 0.01, n)
    return pd.DataFrame({"run": [f"r{i}" for i in range(n)], "method": np.repeat(METHODS, n_per_method),
                         "seed": 0, "ppl": np.exp(log_ppl), "y": y, "m1": m1, "m2": m2})


def test_metric_signal_is_recovered_with_ci_above_zero():
    res = predict(synthetic(0.05), bootstrap_iters=150, seed=0)
    for scheme in ("loo", "lomo"):
        s = res.schemes[scheme]
        assert s["extended"]["r2"] > s["baseline"]["r2"] + 0.3
        gain, lo, hi = res.gain(scheme)
        assert lo > 0, (scheme, gain, lo, hi)
        assert s["extended"]["mae"] < s["baseline"]["mae"]
    assert max(res.weights, key=lambda k: abs(res.weights[k])) == "m1"


def test_no_gain_when_accuracy_follows_perplexity_only():
    res = predict(synthetic(0.0), bootstrap_iters=150, seed=0)
    s = res.schemes["loo"]
    assert s["baseline"]["r2"] > 0.8
    gain, lo, hi = res.gain("loo")
    assert gain < 0.05 and lo < 0 < hi or hi <= 0.05  # no claimed improvement


def test_warnings_messages_and_outputs(tmp_path):
    table = synthetic(0.05).rename(columns={"m1": "w_erank", "m2": "rand_sharpness"})  # headline names
    table["imib"] = np.where(table["method"] == "cola", np.nan, 1.0 + np.arange(len(table)))
    res = predict(table, bootstrap_iters=20)
    assert res.features == ["rand_sharpness", "w_erank"] and any("imib" in m and "cola" in m for m in res.messages)
    assert any("exploratory" in w for w in res.warnings)
    paths = res.write(tmp_path)
    doc = json.loads(paths["json"].read_text())
    assert doc["n"] == 18 and set(doc["schemes"]) == {"loo", "lomo"} and "ci" in doc["schemes"]["loo"]
    assert paths["png"].stat().st_size > 1000
    csv = pd.read_csv(paths["csv"])
    assert {"pred_baseline_loo", "pred_extended_lomo", "y"} <= set(csv.columns)
    with pytest.raises(UserError, match="not columns"):
        predict(table, ["nope"], bootstrap_iters=5)


def test_predict_from_long_tables():
    wide = synthetic(0.05)
    diag = []
    for _, r in wide.iterrows():
        for step, scale in ((100, 0.5), (200, 1.0)):  # only the final step may be used
            diag += [{"run": r["run"], "method": r["method"], "step": step, "metric": "m1", "value": r["m1"] * scale,
                      "scope": "model", "name": ""},
                     {"run": r["run"], "method": r["method"], "step": step, "metric": "val_loss",
                      "value": np.log(r["ppl"]), "scope": "model", "name": ""},
                     {"run": r["run"], "method": r["method"], "step": step, "metric": "m1", "value": 99.0,
                      "scope": "layer", "name": "0"}]
    down = [{"run": r["run"], "method": r["method"], "step": 200, "metric": "avg_acc", "value": r["y"],
             "scope": "model", "name": "average"} for _, r in wide.iterrows()]
    res = predict_from_tables(pd.DataFrame(diag), pd.DataFrame(down), wide[["run", "method", "seed"]],
                              bootstrap_iters=10)
    assert res.features == ["m1"]
    np.testing.assert_allclose(res.table["m1"], wide["m1"])
    np.testing.assert_allclose(res.table["ppl"], wide["ppl"])
    with pytest.raises(UserError, match="no perplexity or no downstream"):
        predict_from_tables(pd.DataFrame(diag), pd.DataFrame(down[:-1]), wide[["run", "method"]], bootstrap_iters=5)


def test_inner_loo_closed_form_matches_refitting():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(12, 3)), rng.normal(size=12)
    xs = (x - x.mean(0)) / x.std(0)
    alpha = 0.3
    b0, coef = cv.ridge_fit(xs, y, alpha)
    xc = xs - xs.mean(0)
    u, s, _ = np.linalg.svd(xc, full_matrices=False)
    shrink = s**2 / (s**2 + alpha * len(y))
    h = 1 / len(y) + (u**2) @ shrink
    closed = (y - (b0 + xs @ coef)) / (1 - h)
    brute = []
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        # Same penalty in absolute terms (alpha * n), fitted without row i on the same standardisation.
        xk = xs[keep]
        xkc = xk - xk.mean(0)
        c = np.linalg.solve(xkc.T @ xkc + alpha * len(y) * np.eye(3), xkc.T @ (y[keep] - y[keep].mean()))
        brute.append(y[i] - (y[keep].mean() + (xs[i] - xk.mean(0)) @ c))
    np.testing.assert_allclose(closed, brute, rtol=1e-8)


def test_cmd_predict_reads_a_table_dir(tmp_path):
    from rankscope.downstream.commands import cmd_predict

    synthetic(0.05).to_csv(tmp_path / "prediction_table.csv", index=False)
    out = cmd_predict(tmp_path, out=tmp_path / "out", bootstrap_iters=10)
    assert json.loads(out.read_text())["features"] == ["m1", "m2"]
    with pytest.raises(UserError, match="no diagnostics.parquet"):
        cmd_predict(tmp_path / "out")


def _long_tables(wide: pd.DataFrame, target_metric: str, scope: str, names=("x",)):
    diag = [{"run": r["run"], "method": r["method"], "step": 200, "metric": m, "value": v, "scope": "model",
             "name": ""} for _, r in wide.iterrows() for m, v in (("m1", r["m1"]), ("val_loss", np.log(r["ppl"])))]
    down = [{"run": r["run"], "method": r["method"], "step": step, "metric": target_metric,
             "value": r["y"] + (0 if step == 200 and name == names[0] else 5.0), "scope": scope, "name": name}
            for _, r in wide.iterrows() for step in (100, 200) for name in names]  # only final step, named text
    return pd.DataFrame(diag), pd.DataFrame(down)


@pytest.mark.parametrize("target, metric, scope, names", [
    ("shift_nll", "heldout_nll", "text", ("embedded:all:austen", "val")),
    ("shift_nll:a.txt", "heldout_nll", "text", ("a.txt", "b.txt")),
    ("ft_acc", "ft_acc", "finetune", ("genre",)),
    ("forgetting", "ft_forgetting", "finetune", ("genre",)),
])
def test_every_target_reads_its_rows_and_finds_the_metric_signal(tmp_path, target, metric, scope, names):
    from rankscope.downstream.predict import target_stem

    wide = synthetic(0.05)
    diag, down = _long_tables(wide, metric, scope, names)
    res = predict_from_tables(diag, down, wide[["run", "method", "seed"]], target=target, bootstrap_iters=60)
    np.testing.assert_allclose(res.table["y"], wide["y"])
    assert res.target == target and res.gain("loo")[1] > 0  # metric carries signal: CI of the gain above 0
    paths = res.write(tmp_path)
    assert paths["json"].name == f"{target_stem(target)}.json" != "prediction.json"
    assert json.loads(paths["json"].read_text())["target"] == target


def test_target_errors_name_the_fix():
    wide = synthetic(0.05)
    diag, down = _long_tables(wide, "heldout_nll", "text", ("a.txt", "b.txt"))
    with pytest.raises(UserError, match=r"shift_nll:<label>.*a\.txt"):
        predict_from_tables(diag, down, wide[["run", "method"]], target="shift_nll", bootstrap_iters=5)
    with pytest.raises(UserError, match="unknown prediction target"):
        predict_from_tables(diag, down, wide[["run", "method"]], target="robustness", bootstrap_iters=5)
    with pytest.raises(UserError, match="rankscope ppl"):
        predict_from_tables(diag, down[down["run"] != "r0"], wide[["run", "method"]], target="shift_nll:a.txt",
                            bootstrap_iters=5)


def test_multi_bootstrap_resamples_seeds_and_items():
    """With init seeds and item-level errors the bootstrap resamples whole seeds and moves each target by its
    own item noise: the paired interval widens, and the result says what it resampled."""
    table = synthetic(0.05, n_per_method=4).assign(init_seed=np.tile(np.arange(4), len(METHODS)))
    plain = predict(table.drop(columns=["init_seed"]), ["m1"], bootstrap_iters=120, seed=1, schemes=("loo",))
    assert plain.bootstrap == "resamples models (cases)"
    seeds = predict(table, ["m1"], bootstrap_iters=120, seed=1, schemes=("loo",))
    assert seeds.bootstrap.startswith("resamples init seeds (4")
    noisy = predict(table.assign(y_se=1.0), ["m1"], bootstrap_iters=120, seed=1, schemes=("loo",))
    assert "item-level error" in noisy.bootstrap and json.loads(noisy.to_json())["bootstrap"] == noisy.bootstrap
    assert seeds.gain("loo")[1] > 0 and noisy.gain("loo")[1] < 0  # items this noisy swamp the signal


def test_item_rows_redraw_the_same_items_for_every_model(monkeypatch):
    """With per-item rows every resample re-scores every model on one draw of items: two models that gave the
    same answers keep equal targets in every draw (independent item noise would split them), and a model right
    on every item stays at 1."""
    seen = []
    monkeypatch.setattr(cv, "evaluate_scheme", lambda xb, xe, y, g: seen.append(y.copy()) or
                        {"baseline": {"r2": 0.0}, "extended": {"r2": 0.0}, "diff": {"r2": 0.0}})
    rng = np.random.default_rng(0)
    clusters = np.repeat(np.arange(4), 3)  # per seed: two models with the same answers, one always right
    mats = []
    for n in (40, 60):
        m = np.ones((12, n))
        m[0::3] = m[1::3] = rng.integers(0, 2, (4, n))
        mats.append(m)
    y = np.mean([m.mean(axis=1) for m in mats], axis=0)
    x = np.zeros((12, 1))
    cv.bootstrap_scheme(x, x, y, np.arange(12), iters=30, seed=0, clusters=clusters, item_acc=mats)
    assert len(seen) == 30
    assert all(np.array_equal(d[0::3], d[1::3]) and np.all(d[2::3] == 1.0) for d in seen)
    assert len({round(float(d[0]), 9) for d in seen}) > 5  # the items are redrawn, so the targets move
    seen.clear()
    cv.bootstrap_scheme(x, x, y, np.arange(12), iters=30, seed=0, clusters=clusters, y_se=np.full(12, 0.05))
    assert not any(np.array_equal(d[0::3], d[1::3]) for d in seen)  # the fallback: independent noise per model


def test_predict_from_tables_resamples_items_from_rows():
    from rankscope.downstream.tasks import SOURCE_NOTE

    rng = np.random.default_rng(1)
    wide = synthetic(0.05, n_per_method=2).assign(init_seed=lambda f: np.tile([0, 1], len(METHODS)))
    answers = [(rng.random((len(wide), n)) < wide["y"].to_numpy()[:, None]).astype(int) for n in (30, 50)]
    wide["y"] = np.mean([a.mean(axis=1) for a in answers], axis=0)  # the table's average is the rows' average
    diag = pd.DataFrame([{"run": r, "method": m, "step": 5, "metric": k, "value": v, "scope": "model", "name": ""}
                         for r, m, lp, m1 in zip(wide["run"], wide["method"], np.log(wide["ppl"]), wide["m1"],
                                                 strict=True) for k, v in (("val_loss", lp), ("m1", m1))])
    down = pd.DataFrame({"run": wide["run"], "method": wide["method"], "step": 5, "metric": "avg_acc",
                         "value": wide["y"], "scope": "model", "name": "average", "note": SOURCE_NOTE})
    items = pd.concat([pd.DataFrame({"run": r, "method": "x", "step": 5, "task_set": SOURCE_NOTE, "task": f"t{t}",
                                     "metric": "acc", "item": np.arange(a.shape[1]), "correct": a[i],
                                     "margin": np.nan})
                       for t, a in enumerate(answers) for i, r in enumerate(wide["run"])], ignore_index=True)
    meta = wide[["run", "method", "init_seed"]]
    res = predict_from_tables(diag, down, meta, ["m1"], bootstrap_iters=20, schemes=("loo",), items=items)
    assert "per-item rows (80 items over 2 task(s)" in res.bootstrap
    old = predict_from_tables(diag, down, meta, ["m1"], bootstrap_iters=20, schemes=("loo",))
    assert "per-item rows" not in old.bootstrap  # results without the file: as before
    stale = down.assign(value=down["value"] + 0.01)  # the rows are no longer the items behind the averages
    assert "per-item" not in predict_from_tables(diag, stale, meta, ["m1"], bootstrap_iters=5, schemes=("loo",),
                                                  items=items).bootstrap


def test_cluster_bootstrap_draws_whole_seeds(monkeypatch):
    seen = []
    monkeypatch.setattr(cv, "evaluate_scheme", lambda xb, xe, y, g: seen.append(y.copy()) or
                        {"baseline": {"r2": 0.0}, "extended": {"r2": 0.0}, "diff": {"r2": 0.0}})
    clusters = np.repeat(np.arange(4), 3)
    y = clusters * 10.0 + np.tile(np.arange(3), 4)  # tens digit: the seed; units: the model within it
    x = np.zeros((12, 1))
    cv.bootstrap_scheme(x, x, y, np.arange(12), iters=30, seed=0, clusters=clusters)
    assert len(seen) > 20
    for draw in seen:
        seeds, counts = np.unique(draw // 10, return_counts=True)
        assert len(draw) == 12 and np.all(counts % 3 == 0)  # every drawn seed brings its 3 models
        for s in seeds:
            assert sorted(draw[draw // 10 == s] % 10) == sorted(np.tile(np.arange(3), counts[seeds == s][0] // 3))


def _f7_study(rng: np.random.Generator, effect: float) -> pd.DataFrame:
    """4 methods × 4 seeds; y follows log-PPL, plus ``effect`` × the noise SD per unit of one metric."""
    n = 16
    log_ppl, x = rng.normal(5.0, 0.2, n), rng.normal(0, 1, n)
    y = 0.5 - 0.05 * (log_ppl - 5.0) + effect * 0.01 * x + rng.normal(0, 0.01, n)
    return pd.DataFrame({"method": np.repeat([f"m{i}" for i in range(4)], 4), "init_seed": np.tile(np.arange(4), 4),
                         "ppl": np.exp(log_ppl), "y": y, "feat": x})


@pytest.mark.slow
@pytest.mark.parametrize("effect", [0.0, 3.0])
def test_f7_calibration(effect):
    """F7 through the predictor's bootstrap, 200 simulated studies: a metric with no information beyond log-PPL
    is declared to add predictive power in ≤ 5 %; one whose effect is 3 × the noise SD in ≥ 80 %."""
    from rankscope.report.findings_downstream import check_f7
    from rankscope.report.stats import HOLDS

    rng = np.random.default_rng(3)
    declared = 0
    for k in range(200):
        res = predict(_f7_study(rng, effect), ["feat"], bootstrap_iters=50, seed=k, schemes=("loo",))
        declared += check_f7(json.loads(res.to_json())).verdict == HOLDS
    rate = declared / 200
    assert rate <= 0.05 if effect == 0 else rate >= 0.80
