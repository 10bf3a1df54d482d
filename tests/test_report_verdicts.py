"""F1–F5 against within-method nulls, on hand-made diagnostics tables: the words of spec evidence.md §5, the seed
columns, negative sharpness, and calibration by simulation through the table path (≥ 200 simulated studies)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rankscope.report.findings import evaluate_findings
from rankscope.report.findings_geometry import check_f3, check_f4, check_f5, versus_full
from rankscope.report.load import TABLE_COLUMNS, normalise_table
from rankscope.report.noise_floor import barrier_null_figure, design_sentence, noise_floor_html
from rankscope.report.nulls import NULL_FROM_EQUAL_STEPS, null_or_fallback
from rankscope.report.stats import FAILS, HOLDS, INCONCLUSIVE, Finding
from rankscope.report.verdict_rules import CONNECTED, DISTINCT, NO_NULL, NOT_MINIMUM, WITHIN, is_exploratory

SHARP = ("full-rank sharper", "full-rank flatter")


def _frame(recs: list[dict]) -> pd.DataFrame:
    return normalise_table(pd.DataFrame(recs, columns=TABLE_COLUMNS))


def _run(method: str, init: int, data: int) -> str:
    return f"{method}_s{init}" + (f"_d{data}" if data != init else "")


def per_run_table(values: dict[tuple[str, int, int], float], metric: str = "rand_sharpness",
                  null: dict[tuple[str, int, int], str] | None = None) -> pd.DataFrame:
    """values[(method, init_seed, data_seed)] = final-step value of ``metric``; an earlier step is noise."""
    keys = list(values)
    n = len(keys)
    cols = {c: [None] * (2 * n) for c in TABLE_COLUMNS}
    cols["run"] = [_run(m, i, d) for m, i, d in keys] * 2
    cols["method"] = [k[0] for k in keys] * 2
    cols["seed"] = cols["init_seed"] = [k[1] for k in keys] * 2
    cols["data_seed"] = [k[2] for k in keys] * 2
    cols["step"] = [100] * n + [50] * n
    cols["value"] = [values[k] for k in keys] + [-99.0] * n
    cols.update(metric=[metric] * 2 * n, scope=["model"] * 2 * n, name=[""] * 2 * n, mode=["default"] * 2 * n,
                null=[(null or {}).get(k, "") for k in keys] * 2, space=["dense"] * 2 * n, note=[""] * 2 * n)
    frame = pd.DataFrame(cols)
    frame[["value", "step", "init_seed", "data_seed"]] = frame[["value", "step", "init_seed", "data_seed"]].astype(float)
    return frame


def barrier_table(cross: dict[tuple[str, str], list[float]], sib: dict[str, list[float]]) -> pd.DataFrame:
    """cross[(a, b)][s]: barrier of the paired runs at seed s; sib[m][s]: barrier of m_s ↔ its sibling m_s_d(s+100).
    Each run also gets one placeholder row so the table knows its seeds (as analyze's per-run rows do)."""
    recs: list[tuple] = []  # run, method, init, data, metric, value, name, null
    for (a, b), vals in cross.items():
        for s, v in enumerate(vals):
            recs += [(_run(a, s, s), a, s, s, "imib", v, _run(b, s, s), ""),
                     (_run(b, s, s), b, s, s, "placeholder", 0.0, "", "")]
    for m, vals in sib.items():
        for s, v in enumerate(vals):
            recs += [(_run(m, s, s), m, s, s, "imib", v, _run(m, s, s + 100), "sibling"),
                     (_run(m, s, s + 100), m, s, s + 100, "placeholder", 0.0, "", "")]
    frame = pd.DataFrame(recs, columns=["run", "method", "init_seed", "data_seed", "metric", "value", "name", "null"])
    frame = frame.assign(seed=frame["init_seed"], step=100.0, step_b=np.nan, mode="default", space="dense",
                         note="", scope=np.where(frame["metric"] == "imib", "pair", "model"))
    return frame.astype({"init_seed": float, "data_seed": float, "value": float})


def _f1(table: pd.DataFrame, null: pd.DataFrame | None = None) -> Finding:
    f = Finding("F1", "s", "c")
    return versus_full(f, table, "rand_sharpness", True, SHARP, null)


# ---------------------------------------------------------------- words on hand-made tables


def test_f1_words_need_siblings_seeds_and_an_effect_beyond_the_spread() -> None:
    seeds = range(5)
    vals = {("full_rank", s, s): 1.0 + 0.01 * s for s in seeds}
    vals |= {("galore", s, s): 0.5 + 0.012 * s for s in seeds}
    assert _f1(per_run_table(vals)).verdict == NO_NULL  # no siblings: no verdict, however large the gap
    sibs = {("full_rank", s, s + 100): 1.0 + 0.01 * s + (0.02 if s % 2 else -0.02) for s in seeds}
    f = _f1(per_run_table(vals | sibs))
    assert f.verdict == HOLDS and f.evidence[0].verdict == "full-rank sharper"
    ev = f.evidence[0]
    assert ev.n == 5 and ev.n_null == 5 and "× sibling spread" in ev.null_units and "Holm" in ev.detail
    reversed_ = vals | sibs | {("galore", s, s): 1.5 + 0.012 * s for s in seeds}
    f = _f1(per_run_table(reversed_))
    assert f.verdict == FAILS and f.evidence[0].verdict == "full-rank flatter"
    # same gap, but siblings as far apart as the methods: within the noise floor
    wide = {("full_rank", s, s + 100): 1.0 + (0.8 if s % 2 else -0.8) for s in seeds}
    assert _f1(per_run_table(vals | wide)).evidence[0].verdict == WITHIN


def test_f1_few_seeds_is_exploratory_never_holds() -> None:
    vals = {("full_rank", 0, 0): 1.0, ("galore", 0, 0): 0.5, ("full_rank", 0, 100): 1.02, ("full_rank", 0, 200): 0.99}
    f = _f1(per_run_table(vals))
    assert is_exploratory(f.verdict) and "n = 1" in f.verdict and "minimum attainable p = 0.5" in f.verdict
    assert f.verdict != HOLDS


def test_negative_sharpness_is_not_a_minimum() -> None:
    """Issue 25 item 4: loss falls on both sides -> flagged, no sharper/flatter verdict."""
    seeds = range(5)
    vals = {("full_rank", s, s): 1.0 + 0.01 * s for s in seeds}
    vals |= {("full_rank", s, s + 100): 1.0 + 0.01 * s + (0.02 if s % 2 else -0.02) for s in seeds}
    vals |= {("sltrain", s, s): -0.002 - 0.001 * s for s in seeds} | {("galore", s, s): 0.5 for s in seeds}
    f = _f1(per_run_table(vals))
    words = {e.label: e.verdict for e in f.evidence}
    assert words["rand_sharpness: full_rank − sltrain"] == NOT_MINIMUM
    assert words["rand_sharpness: full_rank − galore"] == "full-rank sharper"
    assert f.verdict != HOLDS and any(NOT_MINIMUM in n for n in f.notes)


def test_f1_parity_takes_the_null_from_equal_steps() -> None:
    seeds = range(5)
    vals = {("full_rank", s, s): 1.0 + 0.01 * s for s in seeds} | {("galore", s, s): 0.5 for s in seeds}
    equal = per_run_table(vals | {("full_rank", s, s + 100): 1.0 + 0.01 * s + 0.02 * (-1) ** s for s in seeds})
    f = _f1(per_run_table(vals), null=equal)
    assert f.verdict == HOLDS and any("equal-step siblings" in n for n in f.notes)


def test_deciding_estimator_preferred_with_a_note() -> None:
    seeds = range(5)
    vals = {("full_rank", s, s): 1.0 + 0.01 * s for s in seeds} | {("galore", s, s): 0.5 for s in seeds}
    vals |= {("full_rank", s, s + 100): 1.0 + 0.01 * s + 0.02 * (-1) ** s for s in seeds}
    raw = per_run_table({k: -v for k, v in vals.items()})  # raw form says "flatter" (and negative)
    normed = per_run_table(vals, metric="rand_sharpness_fn")
    f = _f1(pd.concat([raw, normed], ignore_index=True))
    assert f.verdict == HOLDS and "rand_sharpness_fn" in f.evidence[0].label
    assert any("decided on rand_sharpness_fn" in n for n in f.notes)
    assert any("raw rand_sharpness" in n for n in _f1(per_run_table(vals)).notes)


def test_f3_distinct_connected_and_no_null() -> None:
    sib = {"full_rank": [0.05, 0.06, 0.055, 0.07, 0.065]}
    far = {("full_rank", "galore"): [0.3, 0.35, 0.32, 0.31, 0.4]}
    f = check_f3(barrier_table(far, sib))
    assert f.verdict == HOLDS and f.evidence[0].verdict == DISTINCT
    assert f.evidence[0].n == 5 and f.evidence[0].n_null == 5 and "× sibling barrier" in f.evidence[0].null_units
    assert any(e.label.startswith("sibling barrier") for e in f.evidence)
    near = {("full_rank", "galore"): [0.06, 0.05, 0.07, 0.058, 0.062]}
    f = check_f3(barrier_table(near, sib))
    assert f.evidence[0].verdict == CONNECTED and f.verdict == FAILS
    assert check_f3(barrier_table(far, {})).verdict == NO_NULL
    one = check_f3(barrier_table({("full_rank", "galore"): [0.4]}, {"full_rank": [0.05]}))
    assert is_exploratory(one.verdict) and "n = 1" in one.verdict


def test_null_or_fallback_uses_the_fallback_only_for_a_missing_null() -> None:
    table = pd.DataFrame({"value": [1.0]})
    spread = lambda t: (float(t["value"].sum()), 3)  # noqa: E731 - a stand-in for sibling_spread
    assert null_or_fallback((0.5, 2), table, spread) == ((0.5, 2), False)  # own null: fallback never computed
    assert null_or_fallback((float("nan"), 0), table, spread) == ((1.0, 3), True)
    assert null_or_fallback((float("nan"), 0), None, spread)[1] is False
    assert null_or_fallback((float("nan"), 0), table, spread, own=table)[1] is False  # the same table again
    none, used = null_or_fallback((float("nan"), 0), table, lambda t: (float("nan"), 0))
    assert not used and np.isnan(none[0])  # a fallback that has no null either is no fallback
    assert null_or_fallback(pd.DataFrame(), table, lambda t: t) == (table, True)


def test_f3_parity_takes_the_sibling_barriers_from_equal_steps() -> None:
    sib = {"full_rank": [0.05, 0.06, 0.055, 0.07, 0.065]}
    far = {("full_rank", "galore"): [0.3, 0.35, 0.32, 0.31, 0.4]}
    parity, equal = barrier_table(far, {}), barrier_table(far, sib)
    f = check_f3(parity, equal)
    assert f.verdict == HOLDS and NULL_FROM_EQUAL_STEPS in f.notes
    assert NULL_FROM_EQUAL_STEPS not in check_f3(equal, parity).notes  # its own siblings: no fallback, no note
    assert check_f3(parity, parity).verdict == NO_NULL


def _layer_table(slopes: dict[tuple[str, int, int], float], null: dict | None = None) -> pd.DataFrame:
    """act_cka per layer 0..3 of each run: 1 + slope × layer."""
    return pd.concat([per_run_table({k: 1.0 + s * layer for k, s in slopes.items()}, "act_cka", null)
                      .assign(scope="layer", name=str(layer)) for layer in range(4)], ignore_index=True)


def test_f4_parity_takes_the_ceiling_from_equal_steps() -> None:
    seeds = range(5)
    low = _layer_table({("galore", s, s): -0.1 - 0.002 * s for s in seeds})
    ceil = {("full_rank", s, s + d): -0.01 + 0.002 * (-1) ** (s + d // 100) for s in seeds for d in (100, 200)}
    equal = pd.concat([low, _layer_table(ceil, {k: "sibling" for k in ceil})], ignore_index=True)
    f = check_f4(low, equal)
    assert f.verdict == HOLDS and NULL_FROM_EQUAL_STEPS in f.notes
    assert any(e.label.startswith("ceiling depth slope") for e in f.evidence)
    assert NULL_FROM_EQUAL_STEPS not in check_f4(equal, low).notes
    assert check_f4(low).verdict == NO_NULL and NULL_FROM_EQUAL_STEPS not in check_f4(low).notes


def test_f5_against_the_ceiling() -> None:
    seeds = range(5)
    vals = {("galore", s, s): 0.9 + 0.002 * s for s in seeds} | {("fira", s, s): 0.7 + 0.003 * s for s in seeds}
    ceil = {("full_rank", s, s + 100): 0.91 + 0.004 * (-1) ** s for s in seeds}
    ref = {("full_rank", s, s): 1.0 for s in seeds}  # the reference against itself: not part of any null
    table = per_run_table(vals | ceil | ref, metric="act_cka", null={k: "sibling" for k in ceil})
    f = check_f5(table)
    assert f.verdict == HOLDS and f.evidence[0].verdict == "galore more similar"
    ceiling = next(e for e in f.evidence if e.label.startswith("CKA ceiling"))
    assert ceiling.value == pytest.approx(0.91, abs=0.01) and "galore / ceiling" in ceiling.detail
    assert check_f5(per_run_table(vals | ref, metric="act_cka")).verdict == NO_NULL
    # the ceiling written per layer only (no model-scope row for the siblings): the layer mean stands in
    layer_ceiling = per_run_table(ceil, metric="act_cka", null={k: "sibling" for k in ceil}).assign(scope="layer")
    f = check_f5(pd.concat([per_run_table(vals | ref, metric="act_cka"), layer_ceiling], ignore_index=True))
    assert f.verdict == HOLDS


def test_old_tables_without_seed_columns_still_read() -> None:
    old = pd.DataFrame([{"run": "full_rank_s0", "method": "full_rank", "seed": 3, "step": 1, "metric": "x",
                         "value": 1.0}])
    frame = normalise_table(old)
    assert frame.loc[0, "init_seed"] == 3 and frame.loc[0, "data_seed"] == 3 and frame.loc[0, "null"] == ""
    assert all(f.verdict == INCONCLUSIVE for f in evaluate_findings(old, None, None, []))


# ---------------------------------------------------------------- calibration through the table path

N_STUDIES = 200


def _gamma(rng: np.random.Generator, mean: float, size: int, cv: float = 0.3) -> np.ndarray:
    k = 1 / cv**2
    return rng.gamma(k, mean / k, size)


@pytest.mark.parametrize("effect", [1.0, 3.0])
def test_f3_calibration_on_tables(effect: float) -> None:
    """Cross and sibling barriers from one distribution: F3 "holds"/"distinct" in ≤ 5 % of 200 studies;
    cross = 3 × the sibling barrier with 5 paired seeds: in ≥ 80 %."""
    rng = np.random.default_rng(2)
    declared = 0
    for _ in range(N_STUDIES):
        table = barrier_table({("full_rank", "galore"): list(_gamma(rng, 0.06 * effect, 5))},
                              {"full_rank": list(_gamma(rng, 0.06, 5))})
        declared += check_f3(table).verdict == HOLDS
    rate = declared / N_STUDIES
    assert rate <= 0.05 if effect == 1.0 else rate >= 0.80


@pytest.mark.parametrize(("metric", "effect"), [("rand_sharpness", 0.0), ("rand_sharpness", 3.0),
                                                ("act_cka", 0.0), ("act_cka", 3.0)])
def test_per_run_calibration_on_tables(metric: str, effect: float) -> None:
    """Sharpness (F1) and CKA (F5): methods and siblings from one distribution -> "holds" in ≤ 5 %; a paired
    difference of 3 × the sibling spread over 5 paired seeds -> ≥ 80 %."""
    rng = np.random.default_rng(4)
    declared = 0
    for _ in range(N_STUDIES):
        start = rng.normal(0, 0.3, 5)
        noise = lambda: rng.normal(0, 0.05, 5)  # noqa: E731 - one sibling spread for every run
        if metric == "rand_sharpness":
            vals = {("full_rank", s, s): 1 + start[s] + e for s, e in enumerate(noise())}
            vals |= {("full_rank", s, s + 100): 1 + start[s] + e for s, e in enumerate(noise())}
            vals |= {("galore", s, s): 1 + start[s] + e - effect * 0.05 for s, e in enumerate(noise())}
            declared += _f1(per_run_table(vals)).verdict == HOLDS
        else:
            start = start / 10
            vals = {("galore", s, s): 0.8 + start[s] + e + effect * 0.05 for s, e in enumerate(noise())}
            vals |= {("fira", s, s): 0.8 + start[s] + e for s, e in enumerate(noise())}
            vals |= {("fira", s, s + 100): 0.8 + start[s] + e for s, e in enumerate(noise())}
            declared += check_f5(per_run_table(vals, metric="act_cka")).verdict == HOLDS
    rate = declared / N_STUDIES
    assert rate <= 0.05 if effect == 0 else rate >= 0.80


# ---------------------------------------------------------------- the noise-floor section


def test_design_sentence_says_what_the_study_allows() -> None:
    none = barrier_table({("full_rank", "galore"): [0.3]}, {})
    assert "no within-method null" in design_sentence(none)
    few = barrier_table({("full_rank", "galore"): [0.3, 0.3]}, {"full_rank": [0.05, 0.05]})
    text = design_sentence(few)
    assert "2 init seed(s), 2 paired seed(s)" in text and "2 data-order sibling" in text
    assert "exploratory" in text and "minimum attainable p = 0.25" in text
    many = barrier_table({("full_rank", "galore"): [0.3] * 6}, {"full_rank": [0.05] * 6})
    assert "confirmatory" in design_sentence(many)
    assert "no diagnostics rows" in design_sentence(normalise_table(None))


def test_noise_floor_table_flags_negative_sharpness_and_compares_with_the_spread() -> None:
    vals = {("full_rank", 0, 0): 1.0, ("full_rank", 0, 100): 1.1, ("galore", 0, 0): 0.5, ("sltrain", 0, 0): -0.01}
    html = noise_floor_html(per_run_table(vals), ("rand_sharpness",))
    assert "not at a minimum along these directions: sltrain_s0" in html
    assert "galore -0.5" in html and "0.07071" in html  # the difference next to the sibling SD (0.1/√2)


def test_barrier_figure_needs_siblings() -> None:
    table = barrier_table({("full_rank", "galore"): [0.3, 0.35]}, {"full_rank": [0.05, 0.06]})
    fig = barrier_null_figure(table)
    assert fig.uri.startswith("data:image/png;base64,") and not fig.missing
    fig = barrier_null_figure(barrier_table({("full_rank", "galore"): [0.3]}, {}))
    assert not fig.uri and "run data-order siblings" in fig.missing


def test_noise_floor_puts_the_perplexity_spread_of_siblings_beside_the_methods() -> None:
    from rankscope.report.load import RunInfo

    def run(name: str, method: str, init: int, data: int, ppl: float) -> RunInfo:
        evals = pd.DataFrame({"step": [10, 20], "val_ppl": [ppl * 2, ppl]})
        return RunInfo(name, method, init, meta={"init_seed": init, "data_seed": data}, evals=evals)

    runs = [run("full_rank_s0", "full_rank", 0, 0, 850.0), run("full_rank_s0_d1", "full_rank", 0, 1, 700.0),
            run("full_rank_s0_d2", "full_rank", 0, 2, 620.0), run("galore_s0", "galore", 0, 0, 640.0)]
    html = noise_floor_html(normalise_table(None), (), runs)
    assert "final validation perplexity" in html and "galore -210" in html
    assert "116.8" in html  # SD of 850, 700, 620: the data order alone moves perplexity by more than the methods


def test_runs_table_names_the_data_seed_of_siblings(tmp_path) -> None:
    from helpers_report import make_synthetic_study

    from rankscope.report.render import render_report

    html = render_report(make_synthetic_study(tmp_path / "s", methods=("full_rank", "galore"))).read_text()
    assert "<td>full_rank_s0_d1</td><td>full_rank</td><td>0 / data 1</td>" in html
    assert "<td>galore_s0</td><td>galore</td><td class=\"num\">0</td>" in html
