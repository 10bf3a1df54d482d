"""Streaming CKA / L2 / cosine (diagnostics.md §6 tests 6 and 9, torch-cka oracle of §5)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from rankscope.diagnostics.activations import SimilarityAccumulator, similarity_by_layer
from rankscope.diagnostics.context import AnalysisContext, EvalBatch, RunHandle
from rankscope.diagnostics.registry import all_diagnostics
from rankscope.diagnostics.table import rows_to_frame
from rankscope.models.llama import LlamaLM, ModelConfig

TINY = ModelConfig(vocab_size=97, d_model=16, n_layers=2, n_heads=2, d_ff=24, max_seq_len=16)


pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _features(n=200, d=12, seed=0) -> torch.Tensor:
    g = _gen(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)


def _stream(x, y, chunk=37, cross=False):
    acc = SimilarityAccumulator(cross=cross)
    for i in range(0, x.shape[0], chunk):
        acc.update([x[i : i + chunk]], [y[i : i + chunk]])
    return acc.results()


def _kernel_cka(x, y, debiased=False) -> float:
    """Reference: n×n Gram matrices, centring matrix H (biased) or the unbiased HSIC estimator."""
    k, g = x @ x.T, y @ y.T
    n = k.shape[0]
    if not debiased:
        h = torch.eye(n, dtype=x.dtype) - 1.0 / n

        def hsic(p, q):
            return torch.trace(p @ h @ q @ h)
    else:
        k, g = k - torch.diag(torch.diag(k)), g - torch.diag(torch.diag(g))
        one = torch.ones(n, 1, dtype=x.dtype)

        def hsic(p, q):
            t = torch.trace(p @ q) + (one.T @ p @ one) * (one.T @ q @ one) / ((n - 1) * (n - 2))
            return ((t - 2.0 / (n - 2) * (one.T @ p @ q @ one)) / (n * (n - 3))).squeeze()
    return float(hsic(k, g) / torch.sqrt(hsic(k, k) * hsic(g, g)))


def test_cka_of_itself_is_one():
    x = _features()
    r = _stream(x, x)
    assert r["act_cka"][0] == pytest.approx(1.0, abs=1e-12)
    assert r["act_cka_debiased"][0] == pytest.approx(1.0, abs=1e-12)
    assert r["act_l2"][0] == 0.0 and r["act_rel_l2"][0] == 0.0
    assert r["act_cos"][0] == pytest.approx(1.0, abs=1e-12)


def test_invariances_and_non_orthogonal_map():
    x = _features()
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=_gen(5), dtype=torch.float64))
    shift = torch.randn(12, generator=_gen(6), dtype=torch.float64)
    y = 3.7 * x @ q + shift  # cXQ + 1bᵀ
    assert _stream(x, y)["act_cka"][0] == pytest.approx(1.0, abs=1e-10)
    assert _stream(x, y)["act_cka_debiased"][0] == pytest.approx(1.0, abs=1e-10)
    skew = torch.diag(torch.linspace(0.1, 5.0, 12, dtype=torch.float64))
    assert _stream(x, x @ skew)["act_cka"][0] < 0.99


def test_streamed_equals_full_batch_and_kernel_form():
    x = _features(seed=1)
    y = torch.tanh(x @ torch.randn(12, 9, generator=_gen(2), dtype=torch.float64)) + 0.1 * _features(d=9, seed=3)[:, :9]
    streamed, whole = _stream(x, y, chunk=23), _stream(x, y, chunk=10_000)
    for key in ("act_cka", "act_cka_debiased"):
        assert streamed[key][0] == pytest.approx(whole[key][0], abs=1e-10)
    assert whole["act_cka"][0] == pytest.approx(_kernel_cka(x, y), abs=1e-10)
    assert whole["act_cka_debiased"][0] == pytest.approx(_kernel_cka(x, y, debiased=True), abs=1e-10)
    assert abs(whole["act_cka"][0] - whole["act_cka_debiased"][0]) > 1e-6  # really two estimators


def test_fp32_activations_with_a_large_mean_keep_fp64_accuracy():
    """fp32 inputs get fp32 products but a shift by the first micro-batch's mean, so centring does not
    cancel: with a mean 300× the spread, both estimators still match the fp64 kernel form to 1e-6."""
    x, y = _features(seed=3), _features(seed=4)
    x32, y32 = (x + 300.0).float(), (y - 300.0).float()
    ref = [_kernel_cka(x32.double(), y32.double()), _kernel_cka(x32.double(), y32.double(), True)]
    got = _stream(x32, y32)
    assert got["act_cka"][0] == pytest.approx(ref[0], abs=1e-6)
    assert got["act_cka_debiased"][0] == pytest.approx(ref[1], abs=1e-6)


def test_cross_grid_matches_pairwise():
    xs = [_features(seed=s) for s in (1, 2)]
    ys = [_features(d=8, seed=s)[:, :8] for s in (3, 4, 5)]
    acc = SimilarityAccumulator(cross=True)
    for i in range(0, 200, 64):
        acc.update([x[i : i + 64] for x in xs], [y[i : i + 64] for y in ys])
    grid = acc.results()
    for k, (i, j) in enumerate([(i, j) for i in range(2) for j in range(3)]):
        assert grid["act_cka"][k] == pytest.approx(_kernel_cka(xs[i], ys[j]), abs=1e-10)
        assert grid["act_cka_debiased"][k] == pytest.approx(_kernel_cka(xs[i], ys[j], True), abs=1e-10)


# ------------------------------------------------------------------------------------------ on models
def _batch(n_seq=6, t=12, pad_from=None) -> EvalBatch:
    ids = torch.randint(0, TINY.vocab_size, (n_seq, t), generator=_gen(7))
    labels = torch.roll(ids, -1, 1)
    labels[:, -1] = -100
    if pad_from is not None:  # right padding: pad inputs and their (and the previous) targets ignored
        ids[:, pad_from:] = 0
        labels[:, pad_from - 1 :] = -100
    return EvalBatch(ids, labels, micro_batch=4)


class FakeRun(RunHandle):
    def __init__(self, name: str, method: str, model: torch.nn.Module) -> None:
        super().__init__(Path(name), name, method, "tiny", 0, [1])
        self.model = model

    def native_model(self, step: int):
        return copy.deepcopy(self.model).float().eval()

    dense_model = native_model  # a plain LlamaLM already


def test_full_rank_against_itself_through_the_diagnostic():
    torch.manual_seed(0)
    model = LlamaLM(TINY)
    ref, twin = FakeRun("full_a", "full_rank", model), FakeRun("full_b", "full_rank", model)
    ctx = AnalysisContext(run=twin, step=1, batch=_batch(), reference=ref)
    df = rows_to_frame(all_diagnostics()["activations"].fn(ctx))
    layers = df[df.scope == "layer"]
    assert set(layers.name) == {"0", "1", "2", "3"}  # embedding, 2 blocks, final norm
    assert (layers[layers.metric == "act_l2"].value == 0).all()
    assert (layers[layers.metric == "act_rel_l2"].value == 0).all()
    assert layers[layers.metric == "act_cos"].value.tolist() == pytest.approx([1.0] * 4, abs=1e-12)
    assert layers[layers.metric == "act_cka"].value.tolist() == pytest.approx([1.0] * 4, abs=1e-12)
    assert len(df[df.scope == "model"]) == 5


def test_pads_change_nothing():
    torch.manual_seed(0)
    a, b = LlamaLM(TINY), LlamaLM(TINY)
    short = _batch(t=8)
    padded_ids = torch.cat([short.input_ids, torch.zeros(6, 4, dtype=torch.long)], 1)
    padded_labels = torch.cat([short.labels, torch.full((6, 4), -100)], 1)
    padded = EvalBatch(padded_ids, padded_labels, micro_batch=4)
    r1 = similarity_by_layer(a, b, short, [0, 1, 2, 3])
    r2 = similarity_by_layer(a, b, padded, [0, 1, 2, 3])
    for key in r1:  # causal attention: right pads cannot change earlier positions
        assert r2[key] == pytest.approx(r1[key], rel=1e-6, abs=1e-9)
    unmasked = similarity_by_layer(a, b, padded, [0, 1, 2, 3], mask_pads=False)
    assert unmasked["act_cka"] != pytest.approx(r1["act_cka"], rel=1e-6)


def test_matches_torch_cka_on_flattened_sequences():
    """torch-cka 0.21 scores one *sequence* per sample (module output flattened to T·d features) with the
    unbiased minibatch HSIC, averaging HSIC over batches before the ratio. With ONE batch holding all the
    samples that is exactly our ``act_cka_debiased`` fed with those flattened rows (no token mask); it is
    not the token-level ``act_cka`` the diagnostic reports. torch-cka works in fp32 (its ``ones`` vector),
    hence the 1e-4 tolerance."""
    torch_cka = pytest.importorskip("torch_cka")
    import warnings

    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    a, b = LlamaLM(TINY).eval(), LlamaLM(TINY).eval()
    ids = torch.randint(0, TINY.vocab_size, (10, 8), generator=_gen(3))
    names = ["model.embed_tokens", "model.layers.0", "model.layers.1"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cka = torch_cka.CKA(copy.deepcopy(a), copy.deepcopy(b), "a", "b", names, names)
        cka.compare(DataLoader(TensorDataset(ids), batch_size=len(ids)))
    theirs = cka.export()["CKA"]
    with torch.no_grad():
        hx, hy = a.hidden_states(ids, upto=3), b.hidden_states(ids, upto=3)
    acc = SimilarityAccumulator(cross=True)
    acc.update([h.flatten(1) for h in hx], [h.flatten(1) for h in hy])
    ours = torch.tensor(acc.results()["act_cka_debiased"]).view(3, 3)
    assert torch.allclose(ours.float(), theirs, atol=1e-4)


def test_debiased_cka_of_independent_features_is_near_zero_where_plain_cka_is_not():
    """Few tokens against the width (n = 64, d = 256): plain linear CKA of independent Gaussian features is
    ~ d/(n + d)-ish, far from 0; the unbiased-HSIC estimator is centred on 0 (evidence.md §3)."""
    gen = torch.Generator().manual_seed(0)
    plain, debiased = [], []
    for _ in range(20):
        x = torch.randn(64, 256, generator=gen, dtype=torch.float64)
        y = torch.randn(64, 256, generator=gen, dtype=torch.float64)
        r = _stream(x, y)
        plain.append(r["act_cka"][0])
        debiased.append(r["act_cka_debiased"][0])
    assert min(plain) > 0.5
    mean = sum(debiased) / len(debiased)
    se = (sum((v - mean) ** 2 for v in debiased) / (len(debiased) - 1) / len(debiased)) ** 0.5
    assert abs(mean) < 3 * se and max(abs(v) for v in debiased) < 0.15
