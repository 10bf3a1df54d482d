"""APOLLO / APOLLO-Mini: trajectories against apollo-torch 1.0.3, a from-equations reference, state and resume.

Oracle settings aligned with apollo-torch (a test-only dependency, CC-BY-NC; read, never copied):

* ``adam_form="folded"`` and ε = 1e-6: the package is the transformers AdamW copy (m/(√v+ε) with the bias
  correction on the step size, decay after the step).
* the same group order on both sides (a 1-D "norm gain" first, then the target), because the first seed of a
  parameter is its 1-based position in the optimizer; group keys ``proj="random"``, ``proj_type="std"``.
* T = 3, N = 10 steps: projections drawn at counters 0, 3, 6, 9, so three redraws with kept moments. The
  random matrix itself is compared with the package's (same seeds, same generator calls): no injection needed.
* fp32 matrices, r < min(m, n) (rankscope clamps the rank, the package does not).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from helpers_optim import advance, resumed_copy
from torch import nn

from rankscope.methods.base import Schedule
from rankscope.methods.memory import memory_table
from rankscope.methods.registry import get_method
from rankscope.models.llama import LlamaLM
from rankscope.models.presets import model_config
from rankscope.optim.apollo import APOLLOAdamW, next_seed, random_projection
from rankscope.optim.projectors import projection_side

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPES = {"tall": (40, 24), "wide": (24, 40), "square": (32, 32)}
GAP, STEPS, LR, EPS = 3, 10, 0.01, 1e-6
#: (scale_type, rank, α, scale_front): APOLLO's recipe, Mini's recipe, and channel-wise with √α in front.
VARIANTS = {"apollo": ("channel", 6, 1.0, False), "mini": ("tensor", 1, 128.0, True),
            "channel-front": ("channel", 4, 4.0, True)}


def scripted(shape, seed, steps=STEPS):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(shape, generator=gen), torch.randn(shape[0], generator=gen)) for _ in range(steps)]


def make_params(shape, seed):
    gen = torch.Generator().manual_seed(seed)
    w0, gain0 = 0.1 * torch.randn(shape, generator=gen), 1 + 0.1 * torch.randn(shape[0], generator=gen)
    return [nn.Parameter(gain0.clone()), nn.Parameter(w0.clone())]


def ours_optimizer(params, variant, wd, **kw):
    scale_type, rank, alpha, front = VARIANTS[variant]
    groups = [{"params": params[:1]}, {"params": params[1:], "rank": rank, "update_proj_gap": GAP,
                                       "scale": alpha, "scale_type": scale_type, "scale_front": front}]
    return APOLLOAdamW(groups, lr=LR, weight_decay=wd, **{"adam_form": "folded", "eps": EPS, **kw})


@pytest.mark.parametrize("wd", [0.0, 0.1])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_apollo_matches_apollo_torch(shape, variant, wd):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        apollo_torch = pytest.importorskip("apollo_torch")
    scale_type, rank, alpha, front = VARIANTS[variant]
    mine, ref = make_params(shape, 1), make_params(shape, 1)
    ours = ours_optimizer(mine, variant, wd)
    theirs = apollo_torch.APOLLOAdamW(
        [{"params": ref[:1]}, {"params": ref[1:], "rank": rank, "update_proj_gap": GAP, "scale": alpha,
                               "proj": "random", "proj_type": "std", "scale_type": scale_type}],
        lr=LR, weight_decay=wd, scale_front=front)
    for k, (g, g_gain) in enumerate(scripted(shape, 2)):
        for gain, w in (mine, ref):
            w.grad, gain.grad = g.clone(), g_gain.clone()
        ours.step()
        theirs.step()
        for a, b in zip(mine, ref):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=lambda s, k=k: f"step {k + 1}: {s}")
        sa, sb = ours.state[mine[1]], theirs.state[ref[1]]
        assert int(sa["step"]) == sb["step"] == k + 1
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(sa[key], sb[key], rtol=1e-5, atol=1e-6 * float(sb[key].abs().max()))
        torch.testing.assert_close(sa["zeta"], torch.as_tensor(sb["scaled_grad"]), rtol=1e-5, atol=0)
        # the package keeps the *next* seed in its projector; ours keeps the seed of the current P
        assert next_seed(int(sa["seed"])) == sb["projector"].seed
        p_theirs = sb["projector"].ortho_matrix
        p_ours = ours._basis(mine[1], sa)
        assert torch.equal(p_ours, p_theirs.t() if projection_side(shape) == "right" else p_theirs)
    assert int(ours.state[mine[1]]["seed"]) > 2**32  # three redraws reached 63-bit seeds


def reference_apollo(w0, grads, *, rank, alpha, scale_type, front, lr, wd, eps, gap, gamma=1.01, first_seed):
    """APOLLO from the equations in float64 (torch Adam form: m̂/(√v̂+ε), decay before the step)."""
    w = w0.double().clone()
    m = v = zeta = None
    seed = first_seed
    side = projection_side(w.shape)
    dim = 1 if side == "right" else 0
    for k, g in enumerate(grads, start=1):
        g = g.double()
        if (k - 1) % gap == 0:
            seed = first_seed if k == 1 else next_seed(seed)
            p = random_projection(w.shape, rank, seed, "cpu", torch.float32).double()
        r = g @ p if side == "right" else p.t() @ g
        m = (1 - 0.9) * r if m is None else 0.9 * m + 0.1 * r
        v = 0.001 * r * r if v is None else 0.999 * v + 0.001 * r * r
        n = (m / (1 - 0.9**k)) / ((v / (1 - 0.999**k)).sqrt() + eps)
        if scale_type == "channel":
            s = n.norm(dim=dim, keepdim=True) / (r.norm(dim=dim, keepdim=True) + 1e-8)
        else:
            s = n.norm() / (r.norm() + 1e-8)
        u = s * g * (math.sqrt(alpha) if front else 1.0)
        if zeta is None:
            zeta = u.norm()
        else:
            c = max(float(u.norm() / (zeta + 1e-8)), gamma) / gamma
            u, zeta = u / c, u.norm() / c
        u = u if front else u * math.sqrt(alpha)
        w = w * (1 - lr * wd) - lr * u
    return w


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape", [(40, 24), (24, 40)], ids=["tall", "wide"])
def test_torch_form_matches_equations(shape, variant):
    """The default form feeds the bias-corrected N to the scaling and the limiter (not the package's m/(√v+ε))."""
    scale_type, rank, alpha, front = VARIANTS[variant]
    params = make_params(shape, 3)
    w0 = params[1].detach().clone()
    opt = ours_optimizer(params, variant, 0.1, adam_form="torch", eps=1e-8)
    grads = [g for g, _ in scripted(shape, 4)]
    for g in grads:
        params[1].grad, params[0].grad = g.clone(), torch.zeros_like(params[0])
        opt.step()
    ref = reference_apollo(w0, grads, rank=rank, alpha=alpha, scale_type=scale_type, front=front, lr=LR,
                           wd=0.1, eps=1e-8, gap=GAP, first_seed=2)
    torch.testing.assert_close(params[1].detach().double(), ref, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("cache", [False, True])
def test_state_dict_round_trip_crosses_a_redraw_bit_exactly(cache):
    """4 steps, save (weights_only load), 5 more crossing the redraws at 6 and 9 = 9 straight; seeds stay int64."""
    shapes = ((24, 16), (16, 24))
    gen = torch.Generator().manual_seed(5)
    init = [torch.randn(s, generator=gen) for s in shapes] + [torch.randn(16, generator=gen)]
    grads = [[torch.randn(t.shape, generator=gen) for t in init] for _ in range(9)]

    def build():
        ps = [nn.Parameter(t.clone()) for t in init]
        return ps, APOLLOAdamW([{"params": ps[:2], "rank": 4, "update_proj_gap": 3}, {"params": ps[2:]}],
                               lr=0.01, weight_decay=0.1, cache_projection=cache)

    ps_a, opt_a = build()
    advance(ps_a, opt_a, grads[:4])
    ps_b, opt_b = resumed_copy(build, ps_a, opt_a)
    assert opt_b.state[ps_b[0]]["seed"].dtype == torch.int64
    assert int(opt_b.state[ps_b[0]]["seed"]) == int(opt_a.state[ps_a[0]]["seed"]) > 2**32
    advance(ps_a, opt_a, grads[4:])
    advance(ps_b, opt_b, grads[4:])
    for a, b in zip(ps_a, ps_b):
        assert torch.equal(a, b)
    assert all(isinstance(v, torch.Tensor) for st in opt_a.state.values() for v in st.values())
    assert all("projector" not in st for st in opt_a.state.values())  # P is never state
    assert bool(opt_a._projections) == cache


def test_cached_and_regenerated_projections_give_the_same_trajectory():
    shape = (30, 20)
    runs = []
    for cache in (False, True):
        params = make_params(shape, 6)
        opt = ours_optimizer(params, "apollo", 0.0, adam_form="torch", cache_projection=cache)
        for g, g_gain in scripted(shape, 7):
            params[1].grad, params[0].grad = g.clone(), g_gain.clone()
            opt.step()
        runs.append([p.detach().clone() for p in params])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_projection_statistics_and_redraw():
    """Entries N(0, 1/r); a new seed gives a new matrix; the same seed the same one."""
    p = random_projection((2000, 500), 64, seed=11, device="cpu", dtype=torch.float32)
    assert p.shape == (500, 64)
    assert abs(float(p.var()) * 64 - 1) < 0.02 and abs(float(p.mean())) < 0.01
    assert torch.equal(p, random_projection((2000, 500), 64, 11, "cpu", torch.float32))
    assert not torch.equal(p, random_projection((2000, 500), 64, next_seed(11), "cpu", torch.float32))
    assert random_projection((500, 2000), 64, 11, "cpu", torch.float32).shape == (500, 64)


@pytest.mark.parametrize("limiter", [1.01, None])
@pytest.mark.parametrize("name", ["apollo", "apollo_mini"])
def test_measured_state_equals_theory_at_smoke(name, limiter):
    cls = get_method(name)
    cfg = cls.Config.for_preset("smoke", limiter_gamma=limiter)
    model = LlamaLM(model_config("smoke"))
    opt = cls(cfg, Schedule(10, 1)).build_optimizer(model)
    for _ in range(2):
        model(torch.randint(0, 100, (2, 16))).float().logsumexp(-1).mean().backward()
        opt.step()
    rows = {r["quantity"]: r for r in memory_table(model, opt, cls, cfg, model.config)}
    assert rows["optimizer_state"]["elements"] == rows["optimizer_state"]["theory"]
    n_targets = 7 * model.config.n_layers
    seeds = [st["seed"] for st in opt.state.values() if "seed" in st]
    assert len(seeds) == n_targets and all(s.dtype == torch.int64 for s in seeds)
    assert sum("zeta" in st for st in opt.state.values()) == (n_targets if limiter else 0)


def test_theory_counts_60m():
    """APOLLO = GaLore's moments + seed + ζ per target, no projector; Mini: rank-1 moments."""
    galore, apollo, mini = (get_method(n) for n in ("galore", "apollo", "apollo_mini"))
    cfg = model_config("60m")
    g = galore.theory_counts(cfg, galore.Config.for_preset("60m"))
    a = apollo.theory_counts(cfg, apollo.Config.for_preset("60m"))
    assert a["state"] == g["state"] - g["projectors"] + 2 * 56 and a["projectors"] == 0
    from rankscope.models.llama import extra_param_count, target_shapes

    m = mini.theory_counts(cfg, mini.Config.for_preset("60m"))
    expected = 2 * extra_param_count(cfg) + sum(2 * max(a, b) + 2 for _, a, b in target_shapes(cfg))
    assert m["state"] == expected


def test_presets_and_faithful():
    mini = get_method("apollo_mini").Config
    c = mini.for_preset("smoke")
    assert (c.rank, c.scale_type, c.scale, c.scale_front, c.update_proj_gap) == (1, "tensor", 8.0, True, 50)
    assert mini.for_preset("130m").scale == 192.0 and mini.for_preset("350m").scale == 128.0
    apollo = get_method("apollo").Config
    assert [apollo.for_preset(p).rank for p in ("smoke", "tiny", "60m", "130m", "350m")] == [8, 64, 128, 192, 256]
    f = apollo.for_preset("60m", faithful_release=True)
    assert (f.adam_form, f.adam_eps, f.lr, f.scale, f.update_proj_gap) == ("folded", 1e-6, 0.01, 1.0, 200)
    with pytest.raises(ValueError):
        apollo.for_preset("60m", scale_type="row")
