"""CoLA, SLTrain, ReLoRA: layers, dense export, schedules, resets, accounting (methods.md §2.4–§5.2)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from rankscope.methods.base import Schedule
from rankscope.methods.dense import NoDenseForm, linearised_state, materialize, native_tensors
from rankscope.methods.layers import CoLALinear, ReLoRALinear, SLTrainLinear
from rankscope.methods.memory import format_memory_table, memory_table
from rankscope.methods.registry import get_method
from rankscope.methods.relora import jagged_cosine, prune_
from rankscope.models.llama import LlamaLM
from rankscope.models.presets import model_config

SMOKE = model_config("smoke")
SCHED = Schedule(total_steps=100, warmup_steps=10)


def build(name: str, seed: int = 0, **overrides):
    """A seeded smoke LLaMA transformed by method ``name`` (the loop's order: init, then prepare)."""
    torch.manual_seed(seed)
    cls = get_method(name)
    method = cls(cls.Config.for_preset("smoke", **overrides), SCHED)
    model = method.prepare(LlamaLM(SMOKE))
    return method, model


def perturb_factors(model: nn.Module, seed: int = 1) -> None:
    """Give B (zero at init) random values so merges and exports are non-trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (SLTrainLinear, ReLoRALinear)):
                mod.lora_B.copy_(torch.randn(mod.lora_B.shape, generator=g) * 0.05)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def tokens(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, SMOKE.vocab_size, (2, 16), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------- layers
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_sltrain_gradients_equal_dense_autograd(dtype, tol):
    g = torch.Generator().manual_seed(0)
    layer = SLTrainLinear(24, 40, rank=4, alpha=8.0, delta=0.1, generator=g, like=torch.empty(0, dtype=dtype))
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(40, 4, generator=g, dtype=dtype))
    x = torch.randn(3, 5, 24, generator=g, dtype=dtype, requires_grad=True)
    probe = torch.randn(3, 5, 40, generator=g, dtype=dtype)
    (layer(x) * probe).sum().backward()

    # Oracle: autograd through an explicitly materialised W, with W itself a leaf for the dense gradient.
    A, B, v = (t.detach().clone().requires_grad_() for t in (layer.lora_A, layer.lora_B, layer.sparse_values))
    idx = layer.sparse_index.long()
    s = torch.zeros(40 * 24, dtype=dtype).index_put((idx,), v).view(40, 24)
    w = layer.scale * B @ A + s
    w.retain_grad()
    x2 = x.detach().clone().requires_grad_()
    (torch.nn.functional.linear(x2, w) * probe).sum().backward()

    for mine, ref in [(layer.lora_A.grad, A.grad), (layer.lora_B.grad, B.grad),
                      (layer.sparse_values.grad, v.grad), (x.grad, x2.grad)]:
        torch.testing.assert_close(mine, ref, rtol=tol, atol=tol)
    # ∇values is the dense weight gradient restricted to the support, row-major.
    torch.testing.assert_close(layer.sparse_values.grad, w.grad.flatten()[idx], rtol=tol, atol=tol)


def test_sltrain_support_is_fixed_sorted_and_persistent():
    layer = SLTrainLinear(32, 48, rank=4, alpha=1.0, delta=0.03, generator=torch.Generator().manual_seed(0))
    idx = layer.sparse_index
    assert idx.dtype == torch.int32 and idx.numel() == math.floor(0.03 * 32 * 48)
    assert torch.all(idx[1:] > idx[:-1]) and "sparse_index" in layer.state_dict()
    assert torch.count_nonzero(layer.lora_B) == 0
    assert layer.sparse_values.abs().max() <= 1 / math.sqrt(32)


def test_cola_ba_init_variance():
    n, m, r = 256, 512, 64
    variances = [CoLALinear(n, m, r, generator=torch.Generator().manual_seed(s)).linear_product().var().item()
                 for s in range(4)]
    assert sum(variances) / len(variances) == pytest.approx(1 / (n + m), rel=0.05)


# ----------------------------------------------------------------------------------------- ReLoRA
def test_relora_merge_keeps_function_and_resets_factors():
    method, model = build("relora", reset="zero")
    perturb_factors(model)
    model.eval()
    opt = method.build_optimizer(model)
    ids = tokens()
    before = model(ids)
    layer = model.model.layers[0].self_attn.q_proj
    a_before = layer.lora_A.detach().clone()
    out = method.on_step_end(101, model, opt)  # (101 - 0) mod 100 == 1 -> merge
    after = model(ids)
    assert rel_err(after, before) <= 1e-5
    assert out["relora_merges"] == 1.0 and method.state_dict()["merges"].item() == 1
    assert torch.count_nonzero(layer.lora_B) == 0
    assert not torch.equal(layer.lora_A, a_before)
    assert layer.lora_A.abs().max() <= 1 / math.sqrt(layer.in_features)
    assert method.on_step_end(102, model, opt)["relora_merges"] == 1.0  # no merge off-cycle
    assert method.on_step_end(1, model, opt)["relora_merges"] == 1.0  # k > 1 required


def test_relora_merge_prunes_optimizer_state_not_step():
    method, model = build("relora", reset="prune_random", reset_prune=0.5)
    opt = method.build_optimizer(model)
    perturb_factors(model)
    from rankscope.models.llama import lm_loss

    lm_loss(model(tokens()), tokens(1)).backward()
    opt.step()
    layer = model.model.layers[1].mlp.up_proj
    steps = opt.state[layer.lora_A]["step"].clone()
    emb_state = opt.state[model.model.embed_tokens.weight]["exp_avg"].clone()
    method.on_step_end(101, model, opt)
    moments = torch.cat([opt.state[p][k].flatten() for mod in model.modules() if isinstance(mod, ReLoRALinear)
                         for p in (mod.lora_A, mod.lora_B) for k in ("exp_avg_sq",)])
    frac = (moments == 0).float().mean().item()
    sigma = math.sqrt(0.25 / moments.numel())
    assert abs(frac - 0.5) <= 3 * sigma + 1e-3  # exp_avg_sq of A is nonzero everywhere before pruning
    assert torch.equal(opt.state[layer.lora_A]["step"], steps)
    assert torch.equal(opt.state[model.model.embed_tokens.weight]["exp_avg"], emb_state)


def test_prune_random_fraction_and_prune_magnitude_smallest():
    p, n = 0.99, 200_000
    t = torch.ones(n)
    prune_(t, "prune_random", p, torch.Generator().manual_seed(0))
    frac = (t == 0).float().mean().item()
    assert abs(frac - p) <= 3 * math.sqrt(p * (1 - p) / n)

    t = torch.randn(1000, generator=torch.Generator().manual_seed(1))
    orig = t.clone()
    prune_(t, "prune_magnitude", 0.3, torch.Generator())
    smallest = set(orig.abs().argsort()[:300].tolist())
    assert set((t == 0).nonzero().flatten().tolist()) == smallest
    keep = torch.tensor([i not in smallest for i in range(1000)])
    assert torch.equal(t[keep], orig[keep])


@pytest.mark.parametrize("target", ["rewarm_end", "release"])
def test_jagged_cosine_named_steps(target):
    sched = Schedule(total_steps=1000, warmup_steps=100, min_lr_ratio=0.1)
    R, w = 200, 20

    def env(p):
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))

    end = (lambda c: (c + w - 100) / 900) if target == "rewarm_end" else (lambda c: c / 900)
    expected = {0: 0.0, 50: 0.5, 150: env(50 / 900), 199: env(99 / 900), 200: 0.0,
                210: 0.5 * env(end(200)), 219: 19 / 20 * env(end(200)), 220: env(120 / 900),
                405: 5 / 20 * env(end(400)), 999: env(899 / 900)}
    for t, value in expected.items():
        assert jagged_cosine(t, sched, R, w, target) == pytest.approx(value, abs=1e-12), t
    cls = get_method("relora")
    method = cls(cls.Config(reset_every=R, rewarm=w, rewarm_target=target), sched)
    assert method.lr_factor(210) == pytest.approx(expected[210])


def test_relora_total_steps_must_be_multiple_of_reset_every():
    cls = get_method("relora")
    with pytest.raises(ValueError, match=r"N=200 or 300"):
        cls(cls.Config(reset_every=100, rewarm=10), Schedule(250, 25))
    cls(cls.Config(reset_every=100, rewarm=10), Schedule(300, 30))
    cls(cls.Config(reset_every=100, rewarm=10), Schedule(2, 0))  # one partial cycle: no merge, accepted


def test_relora_config_contradictions_and_faithful():
    cls = get_method("relora")
    with pytest.raises(ValueError, match="reset_flag_ignored"):
        cls.Config(reset_flag_ignored=True, reset="zero")
    with pytest.raises(ValueError, match="only applies"):
        cls.Config(reset="keep", reset_prune=0.5)
    with pytest.raises(ValueError, match="reset must be"):
        cls.Config(reset="sometimes")
    faithful = cls.Config.for_preset("60m", faithful_release=True)
    assert faithful.zero_init_A and faithful.rewarm_target == "release" and faithful.reset_flag_ignored
    _, model = build("relora", zero_init_A=True)
    assert torch.count_nonzero(model.model.layers[0].mlp.down_proj.lora_A) == 0


def test_relora_state_dict_round_trip():
    method, model = build("relora")
    method.on_step_end(101, model, method.build_optimizer(model))
    state = method.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    other, _ = build("relora", seed=5)
    other.load_state_dict(state)
    assert other.merges == 1 and other.seed == method.seed


# ------------------------------------------------------------------------------------- dense export
@pytest.mark.parametrize("name", ["sltrain", "relora"])
def test_materialize_gives_plain_llama_with_same_logits(name):
    _, model = build(name)
    perturb_factors(model)
    model.eval()
    state = materialize(model)
    dense = LlamaLM(SMOKE)
    dense.load_state_dict(state, strict=True)
    dense.eval()
    ids = tokens()
    with torch.no_grad():
        assert rel_err(dense(ids), model(ids)) <= 1e-5


def test_materialize_dense_model_is_bit_exact():
    torch.manual_seed(0)
    model = LlamaLM(SMOKE)
    state = materialize(model)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_cola_has_no_dense_form_but_a_linear_product():
    _, model = build("cola")
    with pytest.raises(NoDenseForm, match="linearised_state"):
        materialize(model)
    lin = linearised_state(model)
    assert len(lin) == 7 * SMOKE.n_layers
    assert lin["model.layers.0.mlp.gate_proj.weight"].shape == (SMOKE.d_ff, SMOKE.d_model)
    native = native_tensors(model)
    assert "model.layers.0.mlp.gate_proj.cola_A" in native and "lm_head.weight" in native


def test_cola_outer_activation_variants():
    _, model = build("cola")
    assert isinstance(model.model.layers[0].mlp.act, nn.SiLU)
    _, model = build("cola", outer_act="release", model_preset="350m")
    assert isinstance(model.model.layers[0].mlp.act, nn.Identity)
    _, model = build("cola", outer_act="release")  # smoke: the release keeps SiLU below 350m
    assert isinstance(model.model.layers[0].mlp.act, nn.SiLU)
    assert get_method("cola").Config.for_preset("1b", faithful_release=True).drops_outer_act()


@pytest.mark.parametrize("name", ["cola", "sltrain", "relora"])
def test_prepare_swaps_seven_targets_and_fails_without_targets(name):
    method, model = build(name)
    swapped = [n for n, m in model.named_modules() if hasattr(m, "dense_weight")]
    assert len(swapped) == 7 * SMOKE.n_layers
    assert not any(isinstance(m, nn.Linear) for n, m in model.named_modules() if n in swapped)
    with pytest.raises(ValueError, match="no target layers"):
        method.prepare(nn.Sequential(nn.Linear(4, 4)))
    with pytest.raises(ValueError, match="no target layers"):
        method.prepare(model)  # already swapped


# -------------------------------------------------------------------------------------- accounting
PAPER = {  # methods.md §2.7, millions: CoLA params, SLTrain params, sparse values, ReLoRA total, trainable
    "60m": (42.77, 43.53, 0.76, 68.07, 42.77),
    "130m": (94.00, 96.55, 2.55, 178.93, 94.00),
    "350m": (185.22, 194.29, 9.07, 487.61, 185.22),
}


@pytest.mark.parametrize("preset", sorted(PAPER))
def test_theory_counts_match_spec_table(preset):
    cfg = model_config(preset)
    cola_p, sl_p, sl_sparse, re_total, re_train = PAPER[preset]

    def counts(name):
        cls = get_method(name)
        return cls.theory_counts(cfg, cls.Config.for_preset(preset))

    def close(value, millions):  # the table prints 2 decimals: equal when rounded, or within 0.1 %
        return round(value / 1e6, 2) == millions or abs(value / 1e6 - millions) / millions < 1e-3

    cola, sl, re = counts("cola"), counts("sltrain"), counts("relora")
    assert close(cola["params"], cola_p) and close(cola["state"], 2 * cola_p)
    assert close(sl["params"], sl_p) and close(sl["buffers"], sl_sparse) and close(sl["state"], 2 * sl_p)
    if preset == "60m":  # exact, hand-computed: 8 blocks x (4 x 7864 + 3 x 21135) sparse entries
        assert sl["buffers"] == 758_888 and cola["params"] == 42_770_944
    assert close(re["params"], re_total) and close(re["trainable"], re_train)
    assert close(re["state"], 2 * re_train)


@pytest.mark.parametrize("name", ["cola", "sltrain", "relora"])
def test_memory_table_measured_equals_theory(name):
    method, model = build(name)
    opt = method.build_optimizer(model)
    from rankscope.models.llama import lm_loss

    lm_loss(model(tokens()), tokens(1)).backward()
    opt.step()
    rows = memory_table(model, opt, type(method), method.config, SMOKE)
    assert {r["quantity"]: r["rel_diff"] for r in rows} == {
        "params": 0.0, "trainable": 0.0, "grads": 0.0, "optimizer_state": 0.0, "buffers": 0.0}
    assert "optimizer_state" in format_memory_table(rows)


# ----------------------------------------------------------------------------------- AdamW oracle
@pytest.mark.parametrize("name", ["cola", "sltrain", "relora"])
def test_optimizer_step_equals_torch_adamw(name):
    method, model = build(name)
    perturb_factors(model)
    model.eval()  # ReLoRA dropout off: both copies must see the same function
    ref = copy.deepcopy(model)
    opt = method.build_optimizer(model)
    c = method.config
    ref_opt = torch.optim.AdamW([p for p in ref.parameters() if p.requires_grad], lr=c.lr,
                                betas=(c.beta1, c.beta2), eps=c.adam_eps, weight_decay=c.weight_decay,
                                foreach=False, fused=False)
    from rankscope.models.llama import lm_loss

    for step in range(3):
        for m, o in ((model, opt), (ref, ref_opt)):
            o.zero_grad()
            lm_loss(m(tokens(step)), tokens(step + 10)).backward()
            o.step()
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), ref.named_parameters()):
        assert n1 == n2
        torch.testing.assert_close(p1, p2, rtol=1e-5, atol=1e-6, msg=n1)
