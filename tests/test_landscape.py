"""Perturbation engine, landscapes and trajectory PCA (diagnostics.md §6 tests 1, 3, 8, 9 and the oracle)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rankscope.diagnostics.context import AnalysisContext, EvalBatch, RunHandle, mean_loss
from rankscope.diagnostics.landscape import landscape_random, landscape_svd, line_stats, sharpness_per_curve
from rankscope.diagnostics.perturb import (
    filter_normalize_,
    live_params,
    loss_line,
    make_grid,
    model_loss_fn,
    release_grid,
    seeded_direction,
    svd_directions,
    write_point,
)
from rankscope.diagnostics.trajectory import trajectory, trajectory_pca
from rankscope.models.llama import LlamaLM
from rankscope.models.presets import model_config

pytestmark = pytest.mark.usefixtures("one_thread")


class MemoryRun(RunHandle):
    """A run held in memory (one model per step), standing in for a run folder."""

    def __init__(self, name: str, models: dict[int, torch.nn.Module], dense: bool = True, method: str = "full_rank"):
        super().__init__(Path("/nonexistent"), name, method, "smoke", 0, sorted(models))
        self._models = models
        self.__dict__["has_dense_form"] = dense

    def native_model(self, step):
        return copy.deepcopy(self._models[step]).float().eval()

    def dense_state(self, step):
        return {k: v.float().clone() for k, v in self._models[step].state_dict().items()} if self.has_dense_form else None

    def dense_model(self, step):
        return self.native_model(step)


def smoke_model(seed: int = 0) -> LlamaLM:
    torch.manual_seed(seed)
    return LlamaLM(model_config("smoke")).eval()


def token_batch(n_seq: int = 2, t: int = 32, seed: int = 1, vocab: int = 8192) -> EvalBatch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n_seq, t + 1), generator=g)
    return EvalBatch(ids[:, :-1].contiguous(), ids[:, 1:].contiguous(), micro_batch=1)


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.state_dict().items()}


def assert_bit_identical(model, snap):
    for n, p in model.state_dict().items():
        assert torch.equal(p, snap[n]), n


# ---------------------------------------------------------------------------------------------- grids
def test_make_grid_contains_zero_and_is_symmetric():
    for hw, n in [(0.003, 25), (0.25, 11), (0.25, 101), (1.0, 3)]:
        g = make_grid(hw, n)
        assert len(g) == n and np.sum(g == 0.0) == 1 and g[n // 2] == 0.0
        assert np.array_equal(g, -g[::-1]) and math.isclose(g[-1], hw)
    for bad in [(0.1, 10), (0.1, 1), (0.0, 5), (-1.0, 5)]:
        with pytest.raises(ValueError):
            make_grid(*bad)
    assert not np.any(release_grid("pca_sigma") == 0.0)  # the release quirk, faithful mode only


# ---------------------------------------------------------------------------------------------- test 1
def test_quadratic_sharpness_is_exact():
    """½(L(α)+L(−α)) − L(0) = ½α² dᵀHd, so S = ½·mean α_k²·mean_j d_jᵀHd_j exactly."""
    p = 12
    g = torch.Generator().manual_seed(0)
    a = torch.randn(p, p, generator=g, dtype=torch.float64)
    hess, grad = a @ a.T / p, torch.randn(p, generator=g, dtype=torch.float64)
    params = {"theta": torch.randn(p, generator=g, dtype=torch.float64)}
    loss = lambda prm, batch: float(grad @ prm["theta"] + 0.5 * prm["theta"] @ hess @ prm["theta"])  # noqa: E731
    alphas = make_grid(0.3, 7)
    dirs = [seeded_direction(params, 7, j, exclude_1d=False) for j in range(5)]
    curves = loss_line(params, dirs, alphas, None, loss)
    quad = [float(d["theta"].double() @ hess @ d["theta"].double()) for d in dirs]
    expected = 0.5 * np.mean(alphas[alphas > 0] ** 2) * np.mean(quad)
    st = line_stats(alphas, curves)
    assert st.sharpness == pytest.approx(expected, rel=1e-10)
    assert st.sharpness_se is not None and st.variance > 0


# ---------------------------------------------------------------------------------------------- test 3
def test_svd_direction_moves_exactly_one_singular_value():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(8, 6, generator=g)
    s = torch.linalg.svdvals(w)
    for k in (1, 3, 6):
        d = svd_directions({"w": w}, k)["w"]
        assert torch.linalg.norm(d).item() == pytest.approx(1.0, abs=1e-6)
        for alpha in (0.1, -0.2):
            moved = s.clone()
            moved[k - 1] = abs(moved[k - 1] + alpha)
            got = torch.linalg.svdvals(w + alpha * d)
            assert torch.allclose(got, moved.sort(descending=True).values, atol=1e-5)


def test_svd_curve_is_half_alpha_squared_and_self_mode():
    g = torch.Generator().manual_seed(4)
    w_star = torch.randn(8, 6, generator=g, dtype=torch.float64)
    params = {"w": w_star.clone(), "gain": torch.ones(6, dtype=torch.float64) * 1.5}
    loss = lambda prm, batch: float(0.5 * ((prm["w"] - w_star) ** 2).sum())  # noqa: E731
    alphas = make_grid(0.25, 5)
    s = torch.linalg.svdvals(w_star)
    for sigma in (False, True):
        dirs = [svd_directions(params, k, sigma_weighted=sigma) for k in (1, 2, 6)]
        assert all("gain" not in d for d in dirs)  # 1-D frozen by default
        curves = loss_line(params, dirs, alphas, None, loss)
        for row, k in zip(curves, (1, 2, 6)):
            scale = float(s[k - 1]) ** 2 if sigma else 1.0
            np.testing.assert_allclose(row, 0.5 * alphas**2 * scale, atol=1e-10)
    d = svd_directions(params, 1, one_d="self")
    theta0 = {n: t.clone() for n, t in params.items()}
    write_point(params, theta0, d, 0.2)
    assert torch.allclose(params["gain"], 1.2 * theta0["gain"])


# ---------------------------------------------------------------------------------------------- test 9
def test_seeded_direction_is_reproducible_and_shared_by_name():
    model = smoke_model()
    params = live_params(model)
    d1 = seeded_direction(params, 5, 2)
    d2 = seeded_direction(params, 5, 2)
    assert set(d1) == {n for n, p in params.items() if p.ndim > 1}
    assert all(torch.equal(d1[n], d2[n]) for n in d1)
    # Same tensor name → same direction, whatever the dtype or the other tensors present.
    name = "model.layers.0.mlp.up_proj.weight"
    sub = {name: params[name].double()}
    assert torch.equal(seeded_direction(sub, 5, 2)[name], d1[name])
    assert not torch.equal(seeded_direction(params, 5, 3)[name], d1[name])
    assert not torch.equal(seeded_direction(params, 6, 2)[name], d1[name])
    assert len(seeded_direction(params, 5, 2, exclude_1d=False)) == len(params)


def test_filter_normalisation_matches_row_norms():
    model = smoke_model()
    params = live_params(model)
    d = seeded_direction(params, 0, 0, filter_normalize=True, exclude_1d=False)
    assert all(params[n].ndim > 1 for n in d)  # 1-D zeroed (absent)
    for n, t in d.items():
        torch.testing.assert_close(t.norm(dim=1), params[n].norm(dim=1), rtol=1e-5, atol=1e-7)
    x = torch.randn(3, 4)
    assert torch.allclose(filter_normalize_(x.clone(), 2 * x), 2 * x)


def test_parameters_bit_identical_after_a_line_even_on_error():
    model = smoke_model()
    snap = snapshot(model)
    params, batch = live_params(model), token_batch()
    dirs = [seeded_direction(params, 0, j, exclude_1d=False) for j in range(2)]
    curves = loss_line(params, dirs, make_grid(0.003, 5), batch, model_loss_fn(model))
    assert_bit_identical(model, snap)
    assert curves[0, 2] == curves[1, 2] == pytest.approx(mean_loss(model, batch), rel=1e-6)  # shared α = 0

    calls = []

    def failing(prm, b):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return 0.0

    with pytest.raises(RuntimeError):
        loss_line(params, dirs, make_grid(0.003, 5), batch, failing)
    assert_bit_identical(model, snap)
    with pytest.raises(ValueError):
        loss_line(params, dirs, np.array([-0.1, 0.05, 0.1]), batch, failing)


def test_pads_change_nothing():
    model = smoke_model()
    batch = token_batch(n_seq=2, t=24)
    ids = torch.cat([batch.input_ids, torch.zeros(2, 8, dtype=torch.long)], dim=1)
    labels = torch.cat([batch.labels, torch.full((2, 8), -100)], dim=1)
    pad_seq_ids = torch.cat([ids, torch.zeros(1, 32, dtype=torch.long)])
    pad_seq_labels = torch.cat([labels, torch.full((1, 32), -100)])
    padded = EvalBatch(pad_seq_ids, pad_seq_labels, micro_batch=2)
    fn = model_loss_fn(model)
    assert fn(None, padded) == pytest.approx(fn(None, batch), rel=1e-6)
    assert padded.n_tokens == batch.n_tokens


# ---------------------------------------------------------------------------------------------- groups
def test_landscape_groups_on_a_smoke_run():
    model = smoke_model()
    snap = snapshot(model)
    run = MemoryRun("full", {10: model})
    ctx = AnalysisContext(run=run, step=10, batch=token_batch())
    rows = landscape_random(ctx, n_directions=3, n_points=5, max_tokens=None)
    by = {r.metric: r for r in rows}
    assert by["rand_sharpness"].stderr is not None and math.isfinite(by["rand_sharpness"].value)
    assert by["rand_variance"].value > 0 and by["rand_center_gap"].value >= 0
    curve = {float(r.name): r.value for r in rows if r.metric == "rand_curve"}
    assert curve[0.0] == pytest.approx(mean_loss(model, ctx.batch), rel=1e-6)
    assert_bit_identical(model, snap)

    rows = landscape_svd(ctx, k=2, n_points=5, max_tokens=None)
    metrics = {r.metric for r in rows}
    assert {"pca_top1_sharpness", "pca_topk_sharpness", "pca_topk_variance", "pca_topk_curve"} <= metrics

    faithful = AnalysisContext(run=run, step=10, batch=token_batch(), mode="faithful")
    rows = landscape_random(faithful, n_directions=2, max_tokens=None)
    assert all(r.space == "native" and r.mode == "faithful" for r in rows)
    assert len([r for r in rows if r.metric == "rand_curve"]) == 25


def test_sharpness_on_release_grid_uses_middle_point():
    alphas = release_grid("pca_sigma")
    curve = (alphas - alphas[13]) ** 2  # minimum at the release "centre" +0.002
    per = sharpness_per_curve(alphas, curve[None], strict=False)
    assert per[0] == pytest.approx(np.mean((0.004 * np.arange(1, 13)) ** 2))


# ---------------------------------------------------------------------------------------------- oracle
def test_line_matches_loss_landscapes_linear_interpolation():
    ll = pytest.importorskip("loss_landscapes")
    from loss_landscapes.metrics.metric import Metric

    model, batch = smoke_model(), token_batch()

    class LMLoss(Metric):
        def __call__(self, wrapper):
            return mean_loss(wrapper.modules[0], batch)

    params = live_params(model)
    d = {n: 0.01 * t for n, t in seeded_direction(params, 11, 0, exclude_1d=False).items()}
    end = copy.deepcopy(model)
    with torch.no_grad():
        for n, p in end.named_parameters():
            p.add_(d[n])
    steps = 4
    theirs = ll.linear_interpolation(model, end, LMLoss(), steps=steps, deepcopy_model=True)
    ours = loss_line(params, [d], np.arange(0, steps + 1) / steps, batch, model_loss_fn(model))[0, 1:]
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- test 8
def test_trajectory_pca_spans_plane_and_matches_sklearn():
    decomposition = pytest.importorskip("sklearn.decomposition")
    g = torch.Generator().manual_seed(8)
    shapes = {"a": (6, 5), "b": (7,), "c": (3, 4)}
    theta0 = {n: torch.randn(s, generator=g) for n, s in shapes.items()}
    e1 = {n: torch.randn(s, generator=g) for n, s in shapes.items()}
    e2 = {n: torch.randn(s, generator=g) for n, s in shapes.items()}
    n_steps = 7
    states = []
    for t in range(n_steps):
        a, b = 3.0 * math.cos(t / 2), 1.0 * t
        states.append({n: theta0[n] + a * e1[n] + b * e2[n] + 1e-3 * torch.randn(shapes[n], generator=g)
                       for n in shapes})
    pca = trajectory_pca(states[:-1], states[-1])
    flat = lambda s: torch.cat([s[n].reshape(-1) for n in shapes])  # noqa: E731
    x = torch.stack([flat(s) - flat(states[-1]) for s in states[:-1]]).double().numpy()
    ref = decomposition.PCA().fit(x)
    np.testing.assert_allclose(pca.explained_variance_ratio[:3], ref.explained_variance_ratio_[:3], atol=1e-6)
    basis, _ = torch.linalg.qr(torch.stack([flat(e1), flat(e2)], dim=1).double())
    for j in range(2):
        d = flat(pca.direction(j)).double()
        assert d.norm().item() == pytest.approx(1.0, abs=1e-5)
        assert (basis.T @ d).norm().item() == pytest.approx(1.0, abs=1e-3)  # lies in span{e1, e2}
    np.testing.assert_allclose(np.abs(pca.coordinates[:, 0]), np.abs(ref.transform(x)[:, 0]), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(abs(pca.final_coordinates[0]), abs(ref.transform(np.zeros((1, x.shape[1])))[0, 0]),
                               rtol=1e-4, atol=1e-4)


def test_trajectory_group_runs_only_at_the_last_step():
    models = {}
    base = smoke_model()
    for i, step in enumerate((10, 20, 30, 40)):
        m = copy.deepcopy(base)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.01 * i * torch.ones_like(p) + 0.001 * torch.randn_like(p))
        models[step] = m
    run = MemoryRun("full", models)
    assert trajectory(AnalysisContext(run=run, step=20, batch=token_batch())) == []
    rows = trajectory(AnalysisContext(run=run, step=40, batch=token_batch()), n_points=5)
    metrics = {r.metric for r in rows}
    assert {"traj_pca_evr", "traj_pca_coord", "traj_pc1_sharpness", "traj_pc1_curve"} <= metrics
    evr = [r.value for r in rows if r.metric == "traj_pca_evr"]
    assert evr[0] > 0.9 and sum(evr) <= 1 + 1e-9


class _ModelRun:
    """The minimum of a RunHandle a checkpoint group needs, around an in-memory model."""

    def __init__(self, model):
        self.model, self.name, self.method, self.scale, self.seed = model, "m", "full_rank", "smoke", 0

    def analysis_model(self, step):
        return copy.deepcopy(self.model).eval(), "dense"


def test_normalised_sharpness_ignores_a_reparameterisation_that_changes_raw_sharpness():
    """Scaling every MLP's up_proj by c and down_proj by 1/c leaves the function unchanged (SwiGLU is
    linear in the up branch); filter-normalised directions follow the rows, so the normalised sharpness is
    unchanged while the raw N(0,1) sharpness is not (evidence.md §3)."""
    from rankscope.diagnostics.landscape_normalized import landscape_normalized

    model, batch = smoke_model(), token_batch()
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        for layer in scaled.model.layers:
            layer.mlp.up_proj.weight.mul_(8.0)
            layer.mlp.down_proj.weight.div_(8.0)
    assert mean_loss(scaled, batch) == pytest.approx(mean_loss(model, batch), rel=1e-5)

    def metric(m, fn, name, **kw):
        rows = fn(AnalysisContext(run=_ModelRun(m), step=1, batch=batch), n_directions=2, **kw)
        return next(r.value for r in rows if r.metric == name)

    fn_a = metric(model, landscape_normalized, "rand_sharpness_fn")
    fn_b = metric(scaled, landscape_normalized, "rand_sharpness_fn")
    assert fn_a > 0 and fn_b == pytest.approx(fn_a, rel=1e-3)
    raw_a = metric(model, landscape_random, "rand_sharpness", half_width=0.01)
    raw_b = metric(scaled, landscape_random, "rand_sharpness", half_width=0.01)
    assert abs(raw_b - raw_a) > 0.1 * abs(raw_a)
