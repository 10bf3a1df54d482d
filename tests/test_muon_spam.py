"""Muon (grouping, scaling, orthogonality), SPAM and Stable-SPAM (from-equations references) (methods2.md)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from rankscope.methods.base import Schedule
from rankscope.methods.galore import target_linears
from rankscope.methods.memory import memory_table
from rankscope.methods.registry import get_method
from rankscope.models.llama import LlamaLM, lm_loss
from rankscope.models.presets import model_config
from rankscope.optim.spam import draw_support, spam_warmup_scale
from rankscope.optim.stable_spam import progress_factor
from rankscope.training.checkpoint import flatten_optimizer_state, unflatten_optimizer_state

SMOKE = model_config("smoke")
pytestmark = pytest.mark.usefixtures("one_thread")


def build(name: str, steps: int = 20, **overrides):
    cls = get_method(name)
    method = cls(cls.Config.for_preset("smoke", **overrides), Schedule(total_steps=steps, warmup_steps=1))
    torch.manual_seed(0)
    model = method.prepare(LlamaLM(SMOKE))
    return method, model


def batch(seed: int) -> torch.Tensor:
    return torch.randint(0, SMOKE.vocab_size, (2, 16), generator=torch.Generator().manual_seed(seed))


def backward(model, seed: int) -> None:
    lm_loss(model(batch(seed)), batch(seed + 100)).backward()


# --------------------------------------------------------------------------------------------------- Muon
def ns_reference(x: torch.Tensor, steps: int = 5, a: float = 3.4445, b: float = -4.7750, c: float = 2.0315):
    """Quintic Newton-Schulz from the equations, in fp32, on the Frobenius-normalised (wide) matrix."""
    tall = x.shape[0] > x.shape[1]
    y = x.t() if tall else x
    y = y / y.norm()
    for _ in range(steps):
        gram = y @ y.t()
        y = a * y + (b * gram + c * gram @ gram) @ y
    return y.t() if tall else y


def well_conditioned(m: int, n: int, gen: torch.Generator) -> torch.Tensor:
    u, _ = torch.linalg.qr(torch.randn(m, min(m, n), generator=gen))
    v, _ = torch.linalg.qr(torch.randn(n, min(m, n), generator=gen))
    return (u * torch.linspace(0.2, 1.0, min(m, n))) @ v.t()


def test_muon_groups_targets_on_muon_and_the_rest_on_adamw():
    method, model = build("muon")
    opt = method.build_optimizer(model)
    muon, adamw = opt.parts
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    targets = {id(m.weight) for _, m in target_linears(model)}
    in_muon = {id(p) for g in muon.param_groups for p in g["params"]}
    in_adam = {id(p) for g in adamw.param_groups for p in g["params"]}
    assert in_muon == targets and len(targets) == 7 * SMOKE.n_layers
    assert in_muon.isdisjoint(in_adam) and in_muon | in_adam == {id(p) for p in model.parameters()}
    assert muon.param_groups[0]["adjust_lr_fn"] == "match_rms_adamw"
    assert adamw.param_groups[0]["betas"] == (0.9, 0.95)
    jordan, _ = build("muon", scaling="jordan", muon_lr=0.02)
    jopt = jordan.build_optimizer(model)
    assert jopt.parts[0].param_groups[0]["adjust_lr_fn"] == "original"
    assert jopt.param_groups[0]["base_lr"] == 0.02 and jopt.param_groups[1]["base_lr"] == 1e-3
    with pytest.raises(ValueError, match="scaling"):
        get_method("muon").Config(scaling="kimi")


@pytest.mark.parametrize("scaling", ["moonlight", "jordan"])
def test_muon_update_is_orthogonal_and_scaled(scaling):
    """Applied update / (lr·c(m, n)) has every singular value in the Newton-Schulz band and equals the
    from-equations Newton-Schulz of the (first-step) Nesterov momentum, which is ∝ G."""
    lr = 1e-2
    method, model = build("muon", scaling=scaling, lr=lr)
    opt = method.build_optimizer(model)
    gen = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen)
    for _, mod in target_linears(model):
        mod.weight.grad = well_conditioned(*mod.weight.shape, gen)
    before = {id(m.weight): (m.weight.detach().clone(), m.weight.grad.clone()) for _, m in target_linears(model)}
    opt.step()
    for _, mod in target_linears(model):
        w0, g = before[id(mod.weight)]
        m, n = w0.shape
        c = 0.2 * math.sqrt(max(m, n)) if scaling == "moonlight" else math.sqrt(max(1.0, m / n))
        update = (w0 - mod.weight.detach()) / (lr * c)
        s = torch.linalg.svdvals(update)
        assert 0.65 < s.min() and s.max() < 1.2, (s.min(), s.max())  # NS band, not one singular direction
        ref = ns_reference(g)
        assert (update - ref).norm() / ref.norm() < 3e-2  # bf16 Newton-Schulz in torch


def test_muon_state_round_trips_and_equals_theory():
    method, model = build("muon")
    opt = method.build_optimizer(model)
    backward(model, 0)
    opt.step()
    rows = {r["quantity"]: r for r in memory_table(model, opt, type(method), method.config, SMOKE)}
    assert rows["optimizer_state"]["rel_diff"] == 0.0
    tensors, meta = flatten_optimizer_state(opt.state_dict())
    tensors = {k: v.clone() for k, v in tensors.items()}  # as read from disk: no aliasing of live state
    twin = copy.deepcopy(model)
    twin_opt = method.build_optimizer(twin)
    twin_opt.load_state_dict(unflatten_optimizer_state(tensors, meta))
    for m, o in ((model, opt), (twin, twin_opt)):
        o.zero_grad()
        backward(m, 1)
        o.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


# --------------------------------------------------------------------------------------------------- SPAM
def spam_reference(params, grads_per_step, *, lr, beta1, beta2, eps, theta, gap, warmup, clip_after, supports):
    """SPAM from the equations, one dense tensor at a time; sparse supports given as full-size masks."""
    state = [{"m": torch.zeros_like(p), "v": torch.zeros_like(p)} for p in params]
    clipped = 0
    for k, grads in enumerate(grads_per_step, start=1):
        for i, (p, g) in enumerate(zip(params, grads)):
            st = state[i]
            mask = supports(i, k)
            if k % gap == 0:
                st["m"], st["v"] = torch.zeros_like(p), torch.zeros_like(p)
            g = g.clone() if mask is None else g * mask
            if k >= clip_after and k % gap >= clip_after:
                spike = g ** 2 > theta * st["v"]
                clipped += int(spike.sum())
                g = torch.where(spike, torch.sign(g) * torch.sqrt(theta * st["v"]), g)
            st["m"] = beta1 * st["m"] + (1 - beta1) * g
            st["v"] = beta2 * st["v"] + (1 - beta2) * g * g
            t = k % gap
            s = 1 - 0.99 * 0.5 * (1 + math.cos(math.pi * t / (warmup + 1))) if k >= gap and t < warmup else 1.0
            upd = (st["m"] / (1 - beta1 ** k)) / (torch.sqrt(st["v"] / (1 - beta2 ** k)) + eps)
            if mask is not None:
                upd = upd * mask
            p.sub_(lr * s * upd)
    return clipped


def collect_grads(model, steps: int):
    """Fixed per-step gradients (from the initial model) so optimizer and reference see the same inputs."""
    out = []
    for k in range(steps):
        model.zero_grad()
        backward(model, k)
        out.append([p.grad.clone() * (30.0 if k == 6 else 1.0) for p in model.parameters()])  # a spike at 7
    model.zero_grad()
    return out


@pytest.mark.parametrize("density", [1.0, 0.3])
def test_spam_matches_reference_from_equations(density):
    gap, warmup, clip_after, theta, steps = 4, 2, 1, 50.0, 11
    method, model = build("spam", reset_every=gap, warmup=warmup, clip_after=clip_after, threshold=theta,
                          density=density, lr=1e-2)
    opt = method.build_optimizer(model)
    grads = collect_grads(model, steps)
    ref_params = [p.detach().clone() for p in model.parameters()]
    targets = {id(m.weight) for _, m in target_linears(model)}
    index = {}  # parameter number -> position in the target group (the seed salt)
    for j, p in enumerate(opt.param_groups[0]["params"]):
        index[id(p)] = j
    params = list(model.parameters())
    seed = opt.param_groups[0]["mask_seed"]

    def supports(i, k):
        p = params[i]
        if density >= 1 or id(p) not in targets:
            return None
        mask = torch.zeros(p.numel())
        j = index[id(p)]
        mask[draw_support(p.numel(), density, seed + 1_000_003 * (k // gap) + 7919 * j, p.device)] = 1
        return mask.view_as(p)

    for k in range(steps):
        for p, g in zip(model.parameters(), grads[k]):
            p.grad = g.clone()
        opt.step()
    c = method.config
    clipped = spam_reference(ref_params, grads, lr=1e-2, beta1=c.beta1, beta2=c.beta2, eps=c.adam_eps,
                             theta=theta, gap=gap, warmup=warmup, clip_after=clip_after, supports=supports)
    assert clipped > 0  # the spike rule fired, so the comparison covers it
    for p, q in zip(model.parameters(), ref_params):
        torch.testing.assert_close(p.detach(), q, rtol=1e-5, atol=1e-6)
    rows = {r["quantity"]: r for r in memory_table(model, opt, type(method), c, SMOKE)}
    assert rows["optimizer_state"]["rel_diff"] == 0.0


def test_spam_warmup_scale_and_sparse_support_count():
    assert spam_warmup_scale(3, 4, 2) == 1.0  # before the first reset
    assert spam_warmup_scale(4, 4, 2) == pytest.approx(0.01)
    assert spam_warmup_scale(6, 4, 2) == 1.0
    s = draw_support(1000, 0.25, 7, torch.device("cpu"))
    assert s.numel() == 250 and torch.equal(s, s.sort().values) and s.unique().numel() == 250
    assert torch.equal(s, draw_support(1000, 0.25, 7, torch.device("cpu")))


# -------------------------------------------------------------------------------------------- Stable-SPAM
def stable_spam_reference(params, grads_per_step, *, lr, beta1, beta2, eps, g1, g2, g3, gap, total, eta):
    st = [dict(m=torch.zeros_like(p), v=torch.zeros_like(p), mu=0.0, a=0.0, b=0.0, s=0) for p in params]
    clipped = 0
    for k, grads in enumerate(grads_per_step, start=1):
        rho = eta + (1 - eta) * 0.5 * (1 + math.cos(math.pi * k / (total + 1)))
        for i, (p, g) in enumerate(zip(params, grads)):
            x = st[i]
            x["s"] += 1
            if k % gap == 0:
                x["m"], x["v"], x["s"] = torch.zeros_like(p), torch.zeros_like(p), 1
            s = x["s"]
            gmax = g.abs().max().item()
            x["mu"] = g3 * x["mu"] + (1 - g3) * gmax
            mu_hat = x["mu"] / (1 - g3 ** s)
            over = g.abs() > mu_hat
            clipped += int(over.sum())
            g = torch.where(over, g / gmax * mu_hat, g)
            n = g.norm().item()
            x["a"] = g1 * rho * x["a"] + (1 - g1 * rho) * n
            x["b"] = g2 * x["b"] + (1 - g2) * n * n
            c = (x["a"] / (1 - (g1 * rho) ** s)) / (math.sqrt(x["b"] / (1 - g2 ** s)) + eps)
            g = g / n * c
            b1 = beta1 * rho
            x["m"] = b1 * x["m"] + (1 - b1) * g
            x["v"] = beta2 * x["v"] + (1 - beta2) * g * g
            p.sub_(lr / (1 - b1 ** s) * x["m"] / (torch.sqrt(x["v"]) / math.sqrt(1 - beta2 ** s) + eps))
    return clipped


def test_stable_spam_matches_reference_from_equations():
    steps, gap = 10, 4
    method, model = build("stable_spam", steps=steps, reset_every=gap, lr=1e-2, gamma2=0.99)
    opt = method.build_optimizer(model)
    grads = collect_grads(model, steps)
    ref = [p.detach().clone() for p in model.parameters()]
    for k in range(steps):
        for p, g in zip(model.parameters(), grads[k]):
            p.grad = g.clone()
        opt.step()
    c = method.config
    clipped = stable_spam_reference(ref, grads, lr=1e-2, beta1=c.beta1, beta2=c.beta2, eps=c.adam_eps,
                                    g1=c.gamma1, g2=c.gamma2, g3=c.gamma3, gap=gap, total=steps, eta=c.eta)
    assert clipped > 0
    for p, q in zip(model.parameters(), ref):
        torch.testing.assert_close(p.detach(), q, rtol=1e-5, atol=1e-6)
    rows = {r["quantity"]: r for r in memory_table(model, opt, type(method), c, SMOKE)}
    assert rows["optimizer_state"]["rel_diff"] == 0.0
    assert progress_factor(0, 10, 0.5) == 1.0 and progress_factor(11, 10, 0.5) == pytest.approx(0.5)


@pytest.mark.parametrize("name,keys", [("spam", {"support": torch.int64}),
                                       ("stable_spam", {"total_step": torch.float32, "max_ema": torch.float32}),
                                       ("loro", {"total_step": torch.float32})])
def test_counters_and_indices_keep_their_dtype_on_load_with_bf16_params(name, keys):
    """torch casts loaded state to the parameter dtype; counters/indices must survive a bf16-pure resume."""
    method, model = build(name, **({"density": 0.5} if name == "spam" else {}))
    model.to(torch.bfloat16)
    opt = method.build_optimizer(model)
    backward(model, 0)
    opt.step()
    tensors, meta = flatten_optimizer_state(opt.state_dict())
    twin_opt = method.build_optimizer(model)
    twin_opt.load_state_dict(unflatten_optimizer_state({k: v.clone() for k, v in tensors.items()}, meta))
    checked = 0
    for p, state in twin_opt.state.items():
        for key, dtype in keys.items():
            if key in state:
                assert state[key].dtype == dtype and torch.equal(state[key], opt.state[p][key]), key
                checked += 1
        assert state["exp_avg"].dtype == torch.bfloat16
    assert checked > 0
