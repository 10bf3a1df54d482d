"""LORO (exact Riemannian step, optimizer, schedule) and Low-Rank (dense form, re-factorisation) (methods2.md)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from rankscope.methods.base import Schedule
from rankscope.methods.dense import materialize
from rankscope.methods.loro import LOROLinear, cosine_with_restarts
from rankscope.methods.low_rank import LowRankLinear
from rankscope.methods.memory import memory_table
from rankscope.methods.registry import get_method
from rankscope.models.llama import LlamaLM, lm_loss
from rankscope.models.presets import model_config
from rankscope.optim.loro import loro_exact_step

SMOKE = model_config("smoke")
pytestmark = pytest.mark.usefixtures("one_thread")


def build(name: str, **overrides):
    cls = get_method(name)
    method = cls(cls.Config.for_preset("smoke", **overrides), Schedule(total_steps=20, warmup_steps=1))
    torch.manual_seed(0)
    return method, method.prepare(LlamaLM(SMOKE))


def batch(seed: int) -> torch.Tensor:
    return torch.randint(0, SMOKE.vocab_size, (2, 16), generator=torch.Generator().manual_seed(seed))


def loss_of(model, seed: int = 0) -> torch.Tensor:
    return lm_loss(model(batch(seed)), batch(seed + 100))


def dense_twin(model) -> LlamaLM:
    dense = LlamaLM(SMOKE)
    dense.load_state_dict(materialize(model), strict=True)
    return dense


def projected_retraction(W, U, V, G, lr, r):
    """Dense reference: truncated rank-r SVD of W − lr·P_T(G), P_T(G) = UUᵀG + GVVᵀ − UUᵀGVVᵀ."""
    pu, pv = U @ U.t(), V @ V.t()
    y = W - lr * (pu @ G + G @ pv - pu @ G @ pv)
    u, s, vh = torch.linalg.svd(y)
    return (u[:, :r] * s[:r]) @ vh[:r]


# ---------------------------------------------------------------------------------------- LORO exact step
@pytest.mark.parametrize("shape", [(24, 40), (40, 24)])
def test_exact_step_is_the_rank_r_retraction_of_the_tangent_projection(shape):
    m, n, r, lr = *shape, 5, 0.3
    gen = torch.Generator().manual_seed(1)
    M, N = (torch.randn(k, r, generator=gen, dtype=torch.float64) for k in (m, n))
    G = torch.randn(m, n, generator=gen, dtype=torch.float64)
    M_new, N_new = loro_exact_step(M, N, G @ N, G.t() @ M, lr)  # factor gradients, G never passed
    W_new = M_new @ N_new.t()
    U, _ = torch.linalg.qr(M)
    V, _ = torch.linalg.qr(N)
    ref = projected_retraction(M @ N.t(), U, V, G, lr, r)
    torch.testing.assert_close(W_new, ref, rtol=1e-10, atol=1e-10)
    s = torch.linalg.svdvals(W_new)
    assert s[r - 1] > 1e-3 and s[r] < 1e-10 * s[0]  # on the rank-r manifold
    torch.testing.assert_close(M_new.t() @ M_new, N_new.t() @ N_new, rtol=1e-9, atol=1e-9)  # √σ split


def test_exact_step_on_the_small_model_equals_the_dense_projection():
    """Factor gradients of the real LORO model are G N and Gᵀ M for the dense model's G; the exact step from
    them equals the dense tangent-space retraction for every layer."""
    method, model = build("loro")
    loss_of(model).backward()
    dense = dense_twin(model)
    loss_of(dense).backward()
    layers = {n: m for n, m in model.named_modules() if isinstance(m, LOROLinear)}
    assert len(layers) == 7 * SMOKE.n_layers
    for name, layer in layers.items():
        M, N = layer.loro_M.detach(), layer.loro_N.detach()
        G = dense.get_submodule(name).weight.grad
        torch.testing.assert_close(layer.loro_M.grad, G @ N, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(layer.loro_N.grad, G.t() @ M, rtol=1e-4, atol=1e-7)
        lr = 0.5 / G.norm().item()
        M_new, N_new = loro_exact_step(M, N, layer.loro_M.grad, layer.loro_N.grad, lr)
        U, _ = torch.linalg.qr(M.double())
        V, _ = torch.linalg.qr(N.double())
        ref = projected_retraction((M @ N.t()).double(), U, V, G.double(), lr, method.config.rank)
        torch.testing.assert_close((M_new @ N_new.t()).double(), ref, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------ LORO optimizer
def loro_reference(model, steps, *, lr, K, scaler, beta1=0.9, beta2=0.999, eps=1e-8):
    """LORO from the equations: Adam directions; lazy factor steps at lr·scaler; exact step at k ≡ 0 mod K
    on the factor directions; every parameter's m, v and bias-correction counter reset after k ≡ 0 mod K."""
    layers = [m for m in model.modules() if isinstance(m, LOROLinear)]
    factors = {id(p) for m in layers for p in (m.loro_M, m.loro_N)}
    st = {id(p): dict(m=torch.zeros_like(p), v=torch.zeros_like(p), s=0) for p in model.parameters()}
    for k in range(1, steps + 1):
        model.zero_grad()
        loss_of(model, k).backward()
        with torch.no_grad():
            d = {}
            for p in model.parameters():
                x = st[id(p)]
                x["s"] += 1
                x["m"] = beta1 * x["m"] + (1 - beta1) * p.grad
                x["v"] = beta2 * x["v"] + (1 - beta2) * p.grad ** 2
                d[id(p)] = (x["m"] / (1 - beta1 ** x["s"])) / ((x["v"] / (1 - beta2 ** x["s"])).sqrt() + eps)
            for p in model.parameters():
                if id(p) not in factors:
                    p -= lr * d[id(p)]
            for layer in layers:
                M, N = layer.loro_M, layer.loro_N
                if k % K == 0:
                    M_new, N_new = loro_exact_step(M, N, d[id(M)], d[id(N)], lr)
                    M.copy_(M_new)
                    N.copy_(N_new)
                else:
                    M -= lr * scaler * d[id(M)]
                    N -= lr * scaler * d[id(N)]
            if k % K == 0:
                for x in st.values():
                    x["m"], x["v"], x["s"] = torch.zeros_like(x["m"]), torch.zeros_like(x["v"]), 0


def test_loro_optimizer_matches_reference_from_equations():
    K, steps, lr = 3, 7, 1e-2
    method, model = build("loro", exact_every=K, lr=lr, rewarm=1)
    model.double()  # float64: Adam's m/√v amplifies the two codes' different fp32 rounding otherwise
    ref = copy.deepcopy(model)
    opt = method.build_optimizer(model)
    scaler = method.config.rank / SMOKE.d_model
    assert opt.param_groups[0]["lr_scaler"] == pytest.approx(scaler)
    for k in range(1, steps + 1):
        opt.zero_grad()
        loss_of(model, k).backward()
        opt.step()
    loro_reference(ref, steps, lr=lr, K=K, scaler=scaler)
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-9, atol=1e-11, msg=name)
    rows = {r["quantity"]: r["rel_diff"] for r in memory_table(model, opt, type(method), method.config, SMOKE)}
    assert rows == {"params": 0.0, "trainable": 0.0, "grads": 0.0, "optimizer_state": 0.0, "buffers": 0.0}


def test_loro_dense_form_schedule_and_rank_limit():
    _, model = build("loro")
    dense = dense_twin(model)
    torch.testing.assert_close(dense(batch(3)), model(batch(3)), rtol=1e-5, atol=1e-5)
    sched = Schedule(total_steps=100, warmup_steps=10)
    assert cosine_with_restarts(5, sched, 20, 4) == 0.5  # warm-up
    assert cosine_with_restarts(20, sched, 20, 4) == 0.0  # restart: LR 0 right after an exact step
    env = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (40 - 10) / 90))
    assert cosine_with_restarts(42, sched, 20, 4) == pytest.approx(0.5 * env)
    assert cosine_with_restarts(44, sched, 20, 4) == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 34 / 90)))
    wsd = Schedule(total_steps=100, warmup_steps=10, kind="wsd", decay_steps=20)  # parity runs
    assert cosine_with_restarts(30, wsd, 20, 4) == 1.0  # stable phase between restarts
    assert cosine_with_restarts(42, wsd, 20, 4) == 0.5  # re-warm to the stable level
    assert cosine_with_restarts(90, wsd, 20, 4) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
    with pytest.raises(ValueError, match="2·rank"):
        build("loro", rank=17)


# ---------------------------------------------------------------------------------------------- Low-Rank
def test_low_rank_dense_form_equals_forward_and_theory():
    method, model = build("low_rank")
    torch.testing.assert_close(dense_twin(model)(batch(2)), model(batch(2)), rtol=1e-5, atol=1e-5)
    opt = method.build_optimizer(model)
    loss_of(model).backward()
    opt.step()
    rows = {r["quantity"]: r["rel_diff"] for r in memory_table(model, opt, type(method), method.config, SMOKE)}
    assert rows == {"params": 0.0, "trainable": 0.0, "grads": 0.0, "optimizer_state": 0.0, "buffers": 0.0}


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_refactorisation_preserves_w_and_balances_factors(dtype, tol):
    gen = torch.Generator().manual_seed(0)
    layer = LowRankLinear(40, 24, 6, 3.0, gen).to(dtype)
    with torch.no_grad():
        layer.lr_B.mul_(5.0)  # unbalanced: ‖B‖ ≫ ‖A‖
    before = layer.dense_weight().clone()
    layer.refactor()
    after = layer.dense_weight()
    assert ((after - before).norm() / before.norm()).item() < tol
    gram_b, gram_a = layer.lr_B.t() @ layer.lr_B, layer.lr_A @ layer.lr_A.t()
    torch.testing.assert_close(gram_b, gram_a, rtol=10 * tol, atol=10 * tol)
    assert torch.allclose(gram_b, torch.diag(torch.diagonal(gram_b)), atol=10 * tol * gram_b.norm().item())


def test_low_rank_refactor_hook_resets_moments_only_when_due():
    method, model = build("low_rank", refactor_every=2, reset_moments=True)
    opt = method.build_optimizer(model)
    layer = next(m for m in model.modules() if isinstance(m, LowRankLinear))
    loss_of(model).backward()
    opt.step()
    assert method.on_step_end(1, model, opt) == {}
    assert opt.state[layer.lr_A]["exp_avg"].abs().sum() > 0
    w = layer.dense_weight().clone()
    assert method.on_step_end(2, model, opt) == {"refactorisations": 1.0}
    assert opt.state[layer.lr_A]["exp_avg"].abs().sum() == 0 and opt.state[layer.lr_B]["exp_avg_sq"].abs().sum() == 0
    assert opt.state[layer.lr_A]["step"] == 1  # the Adam counter is kept
    torch.testing.assert_close(layer.dense_weight(), w, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="refactor_every"):
        get_method("low_rank").Config(reset_moments=True)
