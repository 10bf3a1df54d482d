"""Interpolation barriers (diagnostics.md §6 test 7) and the barrier groups on in-memory runs."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from rankscope.diagnostics.context import AnalysisContext, EvalBatch
from rankscope.diagnostics.interpolation import (
    barrier,
    ckpt_interpolation,
    imib,
    interpolate,
    interpolation_grid,
    shared_init,
)
from rankscope.diagnostics.perturb import lerp_line
from rankscope.models.llama import LlamaLM
from rankscope.models.presets import model_config

pytestmark = pytest.mark.usefixtures("one_thread")


class _Run:
    """Minimal in-memory run: the attributes and loaders the interpolation groups use."""

    def __init__(self, name, models, dense=True, path="/nonexistent", method="full_rank"):
        self.name, self.method, self.scale, self.seed, self.path = name, method, "smoke", 0, path
        self.steps, self._models, self.has_dense_form = sorted(models), models, dense
        self.memo = {}

    def native_model(self, step):
        return copy.deepcopy(self._models[step]).float().eval()

    def dense_model(self, step):
        return self.native_model(step)

    def dense_state(self, step):
        return {k: v.float().clone() for k, v in self._models[step].state_dict().items()}


def smoke_model(seed=0):
    torch.manual_seed(seed)
    return LlamaLM(model_config("smoke")).eval()


def token_batch(n_seq=4, t=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 8192, (n_seq, t + 1), generator=g)
    return EvalBatch(ids[:, :-1].contiguous(), ids[:, 1:].contiguous(), micro_batch=1)


# ---------------------------------------------------------------------------------------------- test 7
def quartic(params, batch):
    return float((params["theta"].pow(2).sum() - 1.0) ** 2)


@pytest.mark.parametrize("end, expected", [((0.0, 1.0), 0.25), ((-1.0, 0.0), 1.0)])
def test_quartic_barriers(end, expected):
    alphas = interpolation_grid(21)
    params = {"theta": torch.tensor([1.0, 0.0], dtype=torch.float64)}
    curve = lerp_line(params, {"theta": torch.tensor(end, dtype=torch.float64)}, alphas, None, quartic)
    b = barrier(alphas, curve)
    assert b.frankle == pytest.approx(expected) and b.entezari == pytest.approx(expected)
    assert b.argmax_alpha == pytest.approx(0.5)
    assert torch.equal(params["theta"], torch.tensor([1.0, 0.0], dtype=torch.float64))  # restored


def test_linear_curve_frankle_vs_entezari():
    alphas = interpolation_grid(21)
    b = barrier(alphas, 3.0 + alphas)
    assert b.frankle == pytest.approx(0.45) and b.entezari == pytest.approx(0.0, abs=1e-12)
    assert b.frankle_rel == pytest.approx(0.45 / 3.5) and b.argmax_alpha == pytest.approx(0.95)
    with pytest.raises(ValueError):
        barrier(np.linspace(0, 0.9, 5), np.zeros(5))


def test_model_with_itself_has_zero_barrier():
    model, batch = smoke_model(), token_batch()
    b, se, curve = interpolate(model, {k: v.clone() for k, v in model.state_dict().items()},
                               interpolation_grid(5), batch)
    assert b.frankle == 0.0 and b.entezari == 0.0 and np.ptp(curve) == 0.0
    assert se[0] == 0.0


def test_swapped_mlp_units_equal_endpoints_nonnegative_barrier():
    model, batch = smoke_model(), token_batch()
    other = copy.deepcopy(model)
    mlp = other.model.layers[0].mlp
    perm = torch.arange(mlp.gate_proj.weight.shape[0])
    perm[[0, 1]] = perm[[1, 0]]
    with torch.no_grad():
        mlp.gate_proj.weight.copy_(mlp.gate_proj.weight[perm])
        mlp.up_proj.weight.copy_(mlp.up_proj.weight[perm])
        mlp.down_proj.weight.copy_(mlp.down_proj.weight[:, perm])
    b, _, _ = interpolate(model, other.state_dict(), interpolation_grid(11), batch)
    assert b.loss_a == pytest.approx(b.loss_b, abs=1e-6)
    assert b.frankle >= -1e-6


# ---------------------------------------------------------------------------------------------- groups
def test_ckpt_interpolation_group():
    m1 = smoke_model(0)
    m2 = copy.deepcopy(m1)
    with torch.no_grad():
        for p in m2.parameters():
            p.add_(0.01 * torch.randn_like(p))
    run = _Run("full", {10: m1, 20: m2})
    ctx = AnalysisContext(run=run, step=10, step_b=20, batch=token_batch())
    rows = ckpt_interpolation(ctx, n_points=5)
    by = {r.metric: r for r in rows}
    assert set(by) == {"ckpt_barrier", "ckpt_barrier_rel", "ckpt_barrier_lin", "ckpt_barrier_xfit", "ckpt_curve"}
    assert by["ckpt_barrier"].step_b == 20 and by["ckpt_barrier"].stderr is not None
    assert "argmax_alpha=" in by["ckpt_barrier"].note
    assert len([r for r in rows if r.metric == "ckpt_curve"]) == 5


def test_imib_pairs_and_cola_exclusion(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        (tmp_path / d / "meta.json").write_text(json.dumps({"init_fingerprint": "abc"}))
    a = _Run("full", {10: smoke_model(0)}, path=tmp_path / "a")
    b = _Run("galore", {10: smoke_model(1)}, path=tmp_path / "b", method="galore")
    assert shared_init(a, b) is True
    rows = imib(AnalysisContext(run=a, step=10, other=b, batch=token_batch()), n_points=5)
    head = [r for r in rows if r.metric == "imib"][0]
    assert head.name == "galore" and head.scope == "pair" and head.settings["shared_init"] is True
    assert all(r.name.startswith("galore|") for r in rows if r.metric == "imib_curve")

    cola = _Run("cola", {10: smoke_model(2)}, dense=False, method="cola")
    rows = imib(AnalysisContext(run=a, step=10, other=cola, batch=token_batch()))
    assert {r.metric for r in rows} == {"imib", "imib_rel", "imib_lin", "imib_xfit"}
    assert all(math.isnan(r.value) and r.note == "excluded: no dense form" for r in rows)
    assert rows[0].settings["shared_init"] == "unknown"


def test_end_point_losses_are_reused_and_change_nothing():
    """A second line ending at the same checkpoints takes its end points from the memo: same curve, two
    forwards fewer (lerp is exact at α = 0 and 1, so the memo holds exactly what a forward would give)."""
    from rankscope.diagnostics.interpolation import _end

    a, b = smoke_model(0), smoke_model(1)
    run_a, run_b = _Run("a", {1: a}), _Run("b", {1: b})
    batch, alphas = token_batch(), interpolation_grid(5)
    forwards = []
    handle = a.register_forward_hook(lambda *args: forwards.append(1))
    plain = interpolate(a, b.state_dict(), alphas, batch)
    n_plain = len(forwards)
    ends = (_end(run_a, 1, "dense", batch, "cpu"), _end(run_b, 1, "dense", batch, "cpu"))
    interpolate(a, b.state_dict(), alphas, batch, ends=ends)  # fills the memo
    forwards.clear()
    again = interpolate(a, b.state_dict(), alphas, batch, ends=ends)
    handle.remove()
    assert len(forwards) == n_plain * 3 // 5  # 3 interior points of 5, each over the same chunks
    assert np.array_equal(plain[2], again[2]) and plain[0] == again[0]


def test_crossfit_barrier_is_unbiased_on_a_flat_noisy_curve_where_the_plain_max_is_not():
    """A flat loss line (no barrier) seen through per-sequence noise: the plain interior max is biased up."""
    from rankscope.diagnostics.interpolation import crossfit_barrier

    rng = np.random.default_rng(0)
    alphas = interpolation_grid(11)
    plain, xfit = [], []
    for _ in range(2000):
        nll = 3.0 + 0.3 * rng.standard_normal((11, 32))  # per-sequence mean losses, 16 tokens each
        sums = np.stack([16 * nll, np.full_like(nll, 16)], axis=-1)
        plain.append(barrier(alphas, sums[:, :, 0].sum(1) / sums[:, :, 1].sum(1)).frankle)
        xfit.append(crossfit_barrier(alphas, sums))
    se = np.std(xfit) / np.sqrt(len(xfit))
    assert abs(np.mean(xfit)) < 4 * se  # unbiased
    assert np.mean(plain) > 20 * np.std(plain) / np.sqrt(len(plain))  # the plain max is clearly biased up
    # A real bump is found by both.
    bump = 3.0 + 0.5 * np.sin(np.pi * alphas)[:, None] + 0.01 * rng.standard_normal((11, 32))
    sums = np.stack([bump, np.ones_like(bump)], axis=-1)
    assert crossfit_barrier(alphas, sums) == pytest.approx(0.5, abs=0.02)
    assert math.isnan(crossfit_barrier(alphas, sums[:, :1]))
