"""F6 against the sibling null (issue 20): a perplexity/accuracy disagreement counts only for method pairs whose
paired differences of both exceed the data-order siblings' spread; words of spec evidence.md §5; calibration by
simulation through the table path (≥ 200 simulated studies)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from rankscope.report.finding_f6 import AGREE, DISAGREE, check_f6
from rankscope.report.findings import evaluate_findings
from rankscope.report.load import TABLE_COLUMNS, RunInfo, normalise_table
from rankscope.report.nulls import NULL_FROM_EQUAL_STEPS
from rankscope.report.stats import FAILS, HOLDS, INCONCLUSIVE
from rankscope.report.verdict_rules import NO_NULL, WITHIN, is_exploratory

TASK_OFFSETS = (-0.02, 0.01, -0.01, 0.02)  # four tasks whose mean is the run's accuracy exactly


def _run(method: str, init: int, data: int) -> str:
    return f"{method}_s{init}" + (f"_d{data}" if data != init else "")


def study(values: dict[tuple[str, int, int], tuple[float, float | None]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """values[(method, init_seed, data_seed)] = (final val ppl, average accuracy or None: not evaluated)."""
    recs, runs = [], []
    for (m, i, d), (ppl, acc) in values.items():
        run = _run(m, i, d)
        runs.append({"run": run, "method": m, "seed": i, "init_seed": i, "data_seed": d, "val_ppl": ppl})
        if acc is None:
            continue
        for t, off in enumerate(TASK_OFFSETS):
            rec = dict.fromkeys(TABLE_COLUMNS)
            rec.update(run=run, method=m, seed=i, init_seed=i, data_seed=d, step=100.0, metric="acc", scope="task",
                       name=f"t{t}", value=acc + off, mode="default", space="", note="", null="")
            recs.append(rec)
    return normalise_table(pd.DataFrame(recs, columns=TABLE_COLUMNS)), pd.DataFrame(runs)


def _siblings(ppl: tuple[float, ...], acc: tuple[float, ...], init: int = 0) -> dict:
    """Full-rank data-order siblings of one start: (ppl, acc) of data seeds 1, 2, ... (the main run is separate)."""
    return {("full_rank", init, init + 1 + k): (p, a) for k, (p, a) in enumerate(zip(ppl, acc, strict=True))}


def _pair_rows(f):
    return [e for e in f.evidence if " − " in e.label and e.label.startswith("avg acc")]


# the measured spread: full-rank siblings at 853.7, 698.7, 623.5 (SD ≈ 117); accuracy SD 0.02
SIBS = _siblings((698.7, 623.5), (0.41, 0.45))
FULL0 = {("full_rank", 0, 0): (853.7, 0.43)}


def test_disagreement_within_the_sibling_spread_is_no_evidence() -> None:
    """(a) The orders disagree (τ < 1), but every perplexity gap is smaller than what two siblings differ by."""
    vals = FULL0 | SIBS | {("galore", 0, 0): (800.0, 0.44), ("fira", 0, 0): (760.0, 0.425)}
    f = check_f6(*study(vals))
    assert f.evidence[0].label.startswith("Kendall τ") and f.evidence[0].value < 1  # the orders do disagree
    assert f.verdict == WITHIN and not is_exploratory(f.verdict) and f.verdict != HOLDS
    within = next(e for e in f.evidence if "within the noise floor" in e.label)
    assert within.label.startswith("3 pair(s)") and "× sibling spread" in within.detail
    spread = next(e for e in f.evidence if e.label.startswith("sibling spread of final val ppl"))
    assert spread.value == pytest.approx(np.std([853.7, 698.7, 623.5], ddof=1)) and spread.n_null == 2
    # five paired seeds, same picture: still no verdict beyond the floor
    vals5 = {}
    for s in range(5):
        vals5 |= {("full_rank", s, s): (800.0 + 5 * s, 0.43), ("galore", s, s): (790.0 + 5 * s, 0.425)}
        vals5 |= _siblings((700.0 + 5 * s, 900.0 + 5 * s), (0.41, 0.45), s)
    assert check_f6(*study(vals5)).verdict == WITHIN


def _swap_study(seeds: int, z: float, discordant: bool = True, s_ppl: float = 10.0, s_acc: float = 0.01) -> dict:
    """full-rank vs galore: galore's perplexity z spreads higher, its accuracy z spreads higher (discordant) or
    lower; siblings of full-rank per seed whose spread is exactly (s_ppl, s_acc)."""
    vals = {}
    sign = 1.0 if discordant else -1.0
    for s in range(seeds):
        vals[("full_rank", s, s)] = (500.0 + s, 0.40 + 0.001 * s)
        vals[("galore", s, s)] = (500.0 + s + z * s_ppl, 0.40 + 0.001 * s + sign * z * s_acc)
        vals |= _siblings((500.0 + s + s_ppl * math.sqrt(2), ), (0.40 + 0.001 * s + s_acc * math.sqrt(2), ), s)
    return vals


def test_a_disagreement_of_three_spreads_speaks() -> None:
    """(b) Δppl and Δacc of 3 × the sibling spread, discordant: exploratory on 2 seeds, "holds" on 5."""
    f = check_f6(*study(_swap_study(2, 3.0)))
    assert is_exploratory(f.verdict) and "n = 2" in f.verdict
    (row,) = _pair_rows(f)
    assert row.label == "avg acc full_rank − galore (full_rank: lower val ppl)"
    assert row.null_units == "Δppl = -3 × sibling spread, Δacc = -3 × sibling spread" and row.n == 2
    assert row.value == pytest.approx(-0.03) and "discordant" in row.detail
    f5 = check_f6(*study(_swap_study(5, 3.0)))
    assert f5.verdict == HOLDS and _pair_rows(f5)[0].verdict == DISAGREE
    assert "Holm" in _pair_rows(f5)[0].detail and _pair_rows(f5)[0].n == 5
    # concordant: the orders agree beyond the floor on 5 seeds -> fails; on 2 seeds: no "exceeds" word
    assert check_f6(*study(_swap_study(5, 3.0, discordant=False))).verdict == FAILS
    few = check_f6(*study(_swap_study(2, 3.0, discordant=False)))
    assert few.verdict == WITHIN and _pair_rows(few)[0].verdict == f"{AGREE} (exploratory: n = 2)"
    # perplexity beyond the spread, accuracy not: within the noise floor
    vals = _swap_study(2, 3.0)
    vals |= {("galore", s, s): (vals[("galore", s, s)][0], vals[("full_rank", s, s)][1] + 0.005) for s in range(2)}
    assert check_f6(*study(vals)).verdict == WITHIN


def test_no_siblings_is_no_null() -> None:
    """(c) No siblings: "no null: run siblings"; siblings without downstream results: no accuracy null."""
    vals = {k: v for k, v in _swap_study(5, 3.0).items() if k[2] == k[1]}
    f = check_f6(*study(vals))
    assert f.verdict == NO_NULL and "validation perplexity or average accuracy" in f.reason
    assert f.evidence[0].label.startswith("Kendall τ")  # τ is still shown as context
    not_evaluated = {k: (v[0], None) if k[2] != k[1] else v for k, v in _swap_study(5, 3.0).items()}
    f = check_f6(*study(not_evaluated))
    assert f.verdict == NO_NULL and "average accuracy" in f.reason and "siblings.evaluate" in f.reason
    assert "validation perplexity" not in f.reason


def test_missing_and_too_few_methods() -> None:
    down, runs = study(_swap_study(2, 3.0))
    assert check_f6(normalise_table(None), runs).reason.startswith("missing: no per-task")
    assert check_f6(down, runs.iloc[:0]).reason.startswith("missing: no run has both")
    one = study({k: v for k, v in _swap_study(2, 3.0).items() if k[0] == "full_rank"})
    assert check_f6(*one).verdict == INCONCLUSIVE and "≥ 2 methods" in check_f6(*one).reason


def test_parity_takes_both_spreads_from_the_equal_step_siblings() -> None:
    """Parity models have no siblings: the spreads come from the equal-step study (RunInfo with meta seeds)."""
    equal_down, _ = study(_swap_study(2, 3.0))
    equal = _swap_study(2, 3.0)

    def info(key: tuple[str, int, int], ppl: float) -> RunInfo:
        m, i, d = key
        return RunInfo(_run(m, i, d), m, i, meta={"init_seed": i, "data_seed": d},
                       evals=pd.DataFrame({"step": [50, 100], "val_ppl": [2 * ppl, ppl]}))

    parity = {k: (500.0 + k[1] + 0.5 * (k[0] == "galore"), v[1]) for k, v in equal.items() if k[1] == k[2]}
    down, _ = study(parity)
    models = [info(k, v[0]) for k, v in parity.items()]
    f6 = evaluate_findings(None, down, None, models, null_downstream_df=equal_down,
                           null_runs=[info(k, v[0]) for k, v in equal.items()])[5]
    assert f6.id == "F6" and NULL_FROM_EQUAL_STEPS in f6.notes
    assert f6.verdict == WITHIN  # at parity the perplexities are equal: no pair can disagree beyond the floor
    assert evaluate_findings(None, down, None, models)[5].verdict == NO_NULL


# ---------------------------------------------------------------- calibration through the table path

N_STUDIES = 200


def _simulated(rng: np.random.Generator, methods: int, seeds: int, swap: float, s_ppl: float = 5.0,
               s_acc: float = 0.01) -> dict:
    """One study: true perplexities 3 spreads apart, accuracy a monotone (decreasing) function of them with a weak
    slope (0.5 accuracy spreads per method: the null's hardest case, where noise can reorder accuracy); every run
    adds a start effect per init seed (shared by the methods: pairing removes it) and sibling-level noise.
    ``swap``: the last method's accuracy instead rises by ``swap`` accuracy spreads above the one before it."""
    vals = {}
    start_p, start_a = rng.normal(0, 3 * s_ppl, seeds), rng.normal(0, 3 * s_acc, seeds)
    names = ["full_rank", "galore", "fira", "cola"][:methods]
    for k, m in enumerate(names):
        mu_p = 100.0 + 3 * s_ppl * k
        mu_a = 0.40 - 0.5 * s_acc * k
        if swap and k == methods - 1:
            mu_p = 100.0 + 3 * s_ppl * (k - 1) + swap * s_ppl
            mu_a = 0.40 - 0.5 * s_acc * (k - 1) + swap * s_acc
        for s in range(seeds):
            draws = [(0, s)] + ([(1, s + 100)] if m == "full_rank" else [])
            for _, data in draws:
                vals[(m, s, data)] = (mu_p + start_p[s] + rng.normal(0, s_ppl),
                                      mu_a + start_a[s] + rng.normal(0, s_acc))
    return vals


def _verdicts(seed: int, methods: int, seeds: int, swap: float, n: int = N_STUDIES) -> list[str]:
    rng = np.random.default_rng(seed)
    return [check_f6(*study(_simulated(rng, methods, seeds, swap)), n_boot=0).verdict for _ in range(n)]


@pytest.mark.parametrize("methods", [2, 4])
def test_f6_calibration_null(methods: int) -> None:
    """(d) Perplexity and accuracy from one monotone relation plus sibling-level noise, 5 paired seeds: F6
    "holds" in ≤ 5 % of 200 studies."""
    words = _verdicts(10 + methods, methods, 5, 0.0)
    assert words.count(HOLDS) / len(words) <= 0.05


def test_f6_calibration_power() -> None:
    """(d) A true swap of 3 × the null (the higher-perplexity method 3 accuracy spreads more accurate) with
    5 paired seeds: F6 "holds" in ≥ 80 % of 200 studies."""
    words = _verdicts(20, 2, 5, 3.0)
    assert words.count(HOLDS) / len(words) >= 0.80


def test_f6_few_seeds_never_hold() -> None:
    """With 2 paired seeds nothing "holds"; a true swap of 3 × the null mostly reaches the exploratory word."""
    words = _verdicts(31, 2, 2, 3.0, n=100)
    assert HOLDS not in words and sum(map(is_exploratory, words)) >= 50
