"""Parity target logic on synthetic perplexity curves (power laws, so log-log interpolation is exact)."""

import math

import pytest

from rankscope.study.parity import (
    Point,
    branch_step_for,
    choose,
    crossing_tokens,
    interpolate_ppl,
    resolve_target,
)


def power_curve(a, b, tokens, name):
    """ppl = a · t^(−b): a straight line in log-ppl vs log-tokens."""
    return [Point(t, a * t ** -b, f"{name}_{t}", t // 100) for t in tokens]


TOK = (1000, 2000, 4000, 8000)


def test_interpolation_is_exact_on_a_power_law():
    pts = power_curve(5000.0, 0.3, TOK, "m")
    assert interpolate_ppl(pts, 3000) == pytest.approx(5000 * 3000 ** -0.3, rel=1e-12)
    assert interpolate_ppl(pts, 500) is None and interpolate_ppl(pts, 9000) is None


def test_target_crossing_on_a_power_law():
    pts = power_curve(5000.0, 0.3, TOK, "m")
    target = 5000 * 3000 ** -0.3
    assert crossing_tokens(pts, target) == pytest.approx(3000, rel=1e-9)
    assert crossing_tokens(pts, target, cap=2500) is None  # beyond the cap
    assert crossing_tokens(pts, 10.0) is None
    assert crossing_tokens(list(reversed(pts)), target) == pytest.approx(3000, rel=1e-9)  # order-free


def test_branch_choice_within_tolerance_and_prediction():
    pts = power_curve(5000.0, 0.3, TOK, "m")
    at_4000 = pts[2].ppl
    c = choose("m", pts, at_4000 * 1.01, tolerance=0.02)
    assert c.status == "within" and c.run == "m_4000" and c.ppl == at_4000
    target = 5000 * 3000 ** -0.3  # between branches 2000 and 4000, > 2 % from both
    c = choose("m", pts, target, tolerance=0.02)
    assert c.status == "predict" and c.predicted_tokens == pytest.approx(3000, rel=1e-9)
    s, cd = branch_step_for(c.predicted_tokens, tokens_per_step=10, cooldown_fraction=0.2)
    assert (s, cd) == (240, 60)
    extra = [*pts, Point(3000, target * 1.001, "m_extra")]
    c = choose("m", extra, target, tolerance=0.02)
    assert c.status == "within" and c.run == "m_extra" and c.tokens_to_target == pytest.approx(3000, rel=1e-2)
    missed = [*pts, Point(3000, target * 1.05, "m_extra")]
    assert choose("m", missed, target, 0.02, extra_done=True).status == "outside"


def test_not_reached_reports_best_ppl():
    pts = power_curve(5000.0, 0.1, TOK, "slow")
    c = choose("slow", pts, 100.0, tolerance=0.02, cap=8000)
    assert c.status == "not_reached" and not c.reached and c.best_ppl == pytest.approx(5000 * 8000 ** -0.1)
    # the cap removes the later points: the best within the cap is reported
    c = choose("slow", pts, 100.0, tolerance=0.02, cap=2000)
    assert c.best_ppl == pytest.approx(5000 * 2000 ** -0.1)


def test_auto_and_reference_targets():
    curves = {"full_rank": power_curve(5000.0, 0.4, TOK, "f"), "slow": power_curve(5000.0, 0.2, TOK, "s"),
              "fast": power_curve(5000.0, 0.5, TOK, "q")}
    t = resolve_target("auto", curves, budget=4000)
    assert t.ppl == pytest.approx(5000 * 4000 ** -0.2) and "slow" in t.how
    # every method reaches the auto target within the budget
    assert all(choose(m, p, t.ppl, 0.02, cap=4000).reached for m, p in curves.items())
    r = resolve_target("reference", curves, budget=3000)
    assert r.ppl == pytest.approx(5000 * 3000 ** -0.4, rel=1e-12)
    assert resolve_target(123.0, curves, 4000).ppl == 123.0
    with pytest.raises(ValueError, match="not valid"):
        resolve_target("fastest", curves, 4000)
    assert math.isfinite(t.ppl)


def test_crossing_before_the_first_branch_is_extrapolated():
    pts = power_curve(5000.0, 0.3, TOK, "m")
    target = 5000 * 500 ** -0.3  # reached at 500 tokens, before the first cooled model (1000)
    c = choose("m", pts, target, tolerance=0.02)
    assert c.status == "predict" and c.predicted_tokens == pytest.approx(500, rel=1e-9)
    assert "extrapolated" in c.note
    flat = [Point(1000, 50.0, "a"), Point(2000, 60.0, "b")]  # not falling: nothing to extrapolate
    assert choose("m", flat, 100.0, 0.02).status == "outside"
