"""The paired multi-bootstrap over seeds and items from per-item rows (seedstats.paired_item_bootstrap), its use in
P1 and the predictor, and the fallback to evaluator standard errors for results stored without per-item rows.

Analytic: one seed, two models that differ on k of n items -> the SD of a paired difference over n items.
Simulation (200 studies each): items whose difficulty is shared by every model, a method × item interaction (items
one method finds easier), seed and run noise; under no difference in the mean the rule declares "differ" in
≤ 5 %, and a difference of 3 × the sibling spread with 5 paired seeds in ≥ 80 %.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rankscope.downstream.item_rows import COLUMNS, acc_matrices, items_path, read_items
from rankscope.downstream.scoring import mean_stderr
from rankscope.downstream.tasks import SOURCE_NOTE
from rankscope.report.parity_verdicts import ITEMS_FALLBACK, ITEMS_PAIRED, differ_at_parity
from rankscope.report.seedstats import item_effects, multi_bootstrap, paired_item_bootstrap, pooled_sd
from rankscope.report.stats import HOLDS
from rankscope.report.verdict_rules import bootstrap_verdicts

N_STUDIES = 200


def _pair(n: int, a_only: int, b_only: int, both: int) -> tuple[np.ndarray, np.ndarray]:
    """0/1 answers of two models on n items: a_only items only A gets right, b_only only B, both: both."""
    a = np.zeros(n)
    b = np.zeros(n)
    a[:a_only] = 1
    b[a_only : a_only + b_only] = 1
    a[a_only + b_only : a_only + b_only + both] = b[a_only + b_only : a_only + b_only + both] = 1
    return a, b


def _formula_sd(d: np.ndarray) -> float:
    """SD of the mean of a paired difference over n items drawn with replacement: sqrt(var(d) / n)."""
    return float(np.sqrt(d.var() / len(d)))


# ---------------------------------------------------------------------------------------------- analytic


def test_one_seed_matches_the_paired_difference_formula_and_beats_independent_errors():
    a, b = _pair(200, a_only=8, b_only=4, both=100)  # differ on k = 12 of 200 items, agree on the rest
    d = a - b
    draws = paired_item_bootstrap([d[None, :]], n_boot=10000, seed=1)
    # var(d) = k/n − (mean d)²: 12/200 − (4/200)²
    assert _formula_sd(d) == pytest.approx(np.sqrt((12 / 200 - (4 / 200) ** 2) / 200))
    assert draws.std() == pytest.approx(_formula_sd(d), rel=0.04)
    assert draws.mean() == pytest.approx(d.mean(), abs=3 * _formula_sd(d) / np.sqrt(10000))
    # the fallback: each model's own standard error, independent per model (what older results get)
    se = np.hypot(mean_stderr(a), mean_stderr(b))
    independent = multi_bootstrap(np.array([d.mean()]), np.array([se]), n_boot=10000, seed=1)
    assert independent.std() == pytest.approx(se, rel=0.04)
    assert draws.std() < 0.4 * independent.std()  # the models agree on 188 of 200 items


def test_identical_seeds_add_nothing_and_tasks_average_as_defined():
    a, b = _pair(200, 8, 4, 100)
    d = a - b
    same = paired_item_bootstrap([np.tile(d, (5, 1))], n_boot=10000, seed=2)
    assert same.std() == pytest.approx(_formula_sd(d), rel=0.04)  # 5 copies of one seed: the item part only
    a2, b2 = _pair(50, 10, 0, 20)
    d2 = a2 - b2
    two = paired_item_bootstrap([d[None, :], d2[None, :]], n_boot=10000, seed=3)
    # the one average: unweighted mean over tasks, so var = (var_1 / n_1 + var_2 / n_2) / 4
    assert two.mean() == pytest.approx((d.mean() + d2.mean()) / 2, abs=0.002)
    assert two.std() == pytest.approx(np.hypot(_formula_sd(d), _formula_sd(d2)) / 2, rel=0.04)


def test_item_effects_keep_shared_items_and_drop_seed_noise():
    rng = np.random.default_rng(4)
    shared = rng.choice([-1.0, 0.0, 1.0], size=400, p=[0.1, 0.7, 0.2])
    assert np.allclose(item_effects(np.tile(shared, (5, 1))), shared - shared.mean())  # no noise: kept whole
    noise = rng.choice([-1.0, 0.0, 1.0], size=(5, 400))  # per-seed noise only, no effect shared by the seeds
    raw = noise.mean(axis=0)
    assert item_effects(noise).var() < 0.2 * raw.var()  # mostly seed × item noise: counted in the seed draw


def test_rows_say_which_item_bootstrap_was_used():
    a, b = _pair(100, 3, 1, 50)
    rows = np.tile(a - b, (5, 1))
    for seed in range(1, 5):  # the seeds differ a little: each also gets one more item right with A
        rows[seed, 10 + seed] = 1
    d, se = rows.mean(axis=1), np.full(5, np.hypot(mean_stderr(a), mean_stderr(b)))
    paired = bootstrap_verdicts([d], [se], 0.01, 5, ("differ", "differ"), per_item=[[rows]])[0]
    fallback = bootstrap_verdicts([d], [se], 0.01, 5, ("differ", "differ"))[0]
    assert "per-item rows" in paired.detail and "100 items over 1 task" in paired.detail
    assert "evaluator standard error" in fallback.detail
    assert paired.effect == fallback.effect == pytest.approx(d.mean())
    assert paired.hi - paired.lo < 0.8 * (fallback.hi - fallback.lo)
    with pytest.raises(ValueError, match="per-item rows"):  # rows that are not the values' own items
        bootstrap_verdicts([d + 0.1], [se], 0.01, 5, ("differ", "differ"), per_item=[[rows]])


# ------------------------------------------------------------------------------------ simulated studies


def _simulator():
    """scripts/item_bootstrap_sim.py's study model: the test and the script's measurements share one simulator."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "item_bootstrap_sim.py"
    spec = importlib.util.spec_from_file_location("item_bootstrap_sim", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.study


def _study(rng: np.random.Generator, delta: float, tau: float, spread_items: float, seeds: int = 5,
           tasks: tuple[int, ...] = (100, 100)) -> dict[str, list[np.ndarray]]:
    """Per-item answers [seeds, n_t] of full_rank, galore (the script's method b: ability − delta, its own item
    offsets of SD tau) and a full_rank data-order sibling; item difficulties of SD ``spread_items``."""
    s = _simulator()(rng, delta, tau, spread_items, seeds, tasks)
    return {"full_rank": s["a"], "galore": s["b"], "sibling": s["sibling"]}


def _avg(answers: list[np.ndarray]) -> np.ndarray:
    return np.mean([m.mean(axis=1) for m in answers], axis=0)


def _rates(delta: float, tau: float, spread_items: float, seed: int) -> dict[str, float]:
    """Share of 200 studies declaring "differ": items resampled from rows, the evaluator-SE fallback, seeds only."""
    rng = np.random.default_rng(seed)
    hits = {"rows": 0, "fallback": 0, "seeds only": 0}
    for _ in range(N_STUDIES):
        s = _study(rng, delta, tau, spread_items)
        a, b, sib = _avg(s["full_rank"]), _avg(s["galore"]), _avg(s["sibling"])
        spread, df = pooled_sd([np.array([x, y]) for x, y in zip(a, sib, strict=True)])
        se = np.hypot(*(np.sqrt(sum(np.array([mean_stderr(r) for r in m]) ** 2 for m in s[k])) / 2
                        for k in ("full_rank", "galore")))
        rows = [x - y for x, y in zip(s["full_rank"], s["galore"], strict=True)]
        for key, item_se, per_item in (("rows", se, [rows]), ("fallback", se, None), ("seeds only", None, None)):
            row = bootstrap_verdicts([a - b], [item_se], spread, df, ("differ", "differ"), n_boot=500,
                                     per_item=per_item)[0]
            hits[key] += row.word == "differ"
    return {k: v / N_STUDIES for k, v in hits.items()}


def test_no_difference_is_declared_rarely_even_when_items_favour_one_method():
    """Galore finds some items much easier and others much harder (tau = 2 logits) but is not better on average:
    the item draw keeps P1 at ≤ 5 %; resampling seeds only would not (the test's scenario needs the items)."""
    rates = _rates(delta=0.0, tau=2.0, spread_items=3.0, seed=11)
    assert rates["rows"] <= 0.05 and rates["seeds only"] > 0.05, rates


def test_a_real_difference_is_found_and_more_often_than_with_independent_errors():
    """A gap of 3 × the sibling spread (delta = 0.6 logits here; galore's own item offsets tau = 0.5) with 5
    paired seeds: ≥ 80 % of 200 studies, more than the independent-SE fallback; with no gap ≤ 5 %."""
    null = _rates(delta=0.0, tau=0.5, spread_items=1.5, seed=12)
    assert null["rows"] <= 0.05, null
    rng = np.random.default_rng(13)
    gaps, spreads = [], []
    for _ in range(100):  # the gap in units of the sibling spread (its RMS over studies), on the generator itself
        s = _study(rng, 0.6, 0.5, 1.5)
        a, b, sib = _avg(s["full_rank"]), _avg(s["galore"]), _avg(s["sibling"])
        gaps.append(np.mean(a - b))
        spreads.append(pooled_sd([np.array([x, y]) for x, y in zip(a, sib, strict=True)])[0])
    assert 2.6 < np.mean(gaps) / np.sqrt(np.mean(np.square(spreads))) < 3.4
    power = _rates(delta=0.6, tau=0.5, spread_items=1.5, seed=14)
    assert power["rows"] >= 0.80 and power["rows"] > power["fallback"] + 0.1, power


# ------------------------------------------------------------------------------------- through the tables


def _tables(s: dict[str, list[np.ndarray]], shift_items: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The downstream table (avg_acc rows with evaluator intervals) and the per-item rows of one study."""
    down, items = [], []
    for method, answers in s.items():
        name, data_off = ("full_rank", 100) if method == "sibling" else (method, 0)
        for seed in range(answers[0].shape[0]):
            run = f"{name}_s{seed}_d{seed + data_off}"
            value = float(np.mean([m[seed].mean() for m in answers]))
            se = np.sqrt(sum(mean_stderr(m[seed]) ** 2 for m in answers)) / len(answers)
            down.append({"run": run, "method": name, "seed": seed, "init_seed": seed, "data_seed": seed + data_off,
                         "step": 10, "metric": "avg_acc", "scope": "model", "name": "average", "value": value,
                         "ci_low": value - 1.96 * se, "ci_high": value + 1.96 * se, "note": SOURCE_NOTE})
            for t, m in enumerate(answers):
                ids = np.arange(m.shape[1]) + (1000 if shift_items and method == "galore" else 0)
                items.append(pd.DataFrame({"run": run, "method": name, "step": 10, "task_set": SOURCE_NOTE,
                                           "task": f"t{t}", "metric": "acc", "item": ids,
                                           "correct": m[seed].astype("int8"), "margin": np.nan}))
    return pd.DataFrame(down), pd.concat(items, ignore_index=True)


def test_p1_uses_the_rows_when_they_match_and_falls_back_otherwise(tmp_path):
    s = _study(np.random.default_rng(5), 0.6, 1.0, 1.5)
    down, items = _tables(s)
    with_rows = differ_at_parity(down, n_boot=500, items=items)
    assert ITEMS_PAIRED in with_rows.notes
    assert all("per-item rows" in e.detail for e in with_rows.evidence)
    without = differ_at_parity(down, n_boot=500)  # a study written before downstream_items.parquet
    assert ITEMS_FALLBACK in without.notes and all("evaluator standard error" in e.detail for e in without.evidence)
    assert [e.value for e in with_rows.evidence] == pytest.approx([e.value for e in without.evidence])
    _, shifted = _tables(s, shift_items=True)  # galore answered other items: nothing to pair
    assert ITEMS_FALLBACK in differ_at_parity(down, n_boot=200, items=shifted).notes
    stale = items.assign(correct=lambda f: 1 - f["correct"])  # rows that do not reproduce the table's averages
    assert ITEMS_FALLBACK in differ_at_parity(down, n_boot=200, items=stale).notes
    # the file next to the table: missing or damaged reads as "no rows", never a crash
    table = tmp_path / "downstream.parquet"
    assert read_items(table) is None
    items_path(table).write_bytes(b"not parquet")
    assert read_items(table) is None
    items.to_parquet(items_path(table), index=False)
    assert list(read_items(table).columns) == list(COLUMNS)


@pytest.mark.parametrize("delta", [0.0, 0.6])
def test_p1_calibration_with_item_rows(delta):
    """P1 through the tables with per-item rows: no gap ≤ 5 % of 200 studies, 3 × the sibling spread ≥ 80 %."""
    rng = np.random.default_rng(21)
    declared = 0
    for _ in range(N_STUDIES):
        down, items = _tables(_study(rng, delta, 0.5, 1.5))
        f = differ_at_parity(down, n_boot=500, items=items)
        assert ITEMS_PAIRED in f.notes
        declared += f.verdict == HOLDS
    rate = declared / N_STUDIES
    assert rate <= 0.05 if delta == 0 else rate >= 0.80


def test_acc_matrices_need_every_run():
    s = _study(np.random.default_rng(6), 0.0, 1.0, 1.5)
    _, items = _tables(s)
    runs = sorted(items["run"].unique())
    mats = acc_matrices(items, runs)
    assert mats is not None and set(mats) == {"t0", "t1"} and mats["t0"].shape == (len(runs), 100)
    assert acc_matrices(items, [*runs, "missing_run"]) is None and acc_matrices(None, runs) is None
