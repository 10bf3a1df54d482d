"""Spectral metrics: analytic cases (diagnostics.md §6 test 4), the registered diagnostics, and the
weightwatcher oracle (§5)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from rankscope.diagnostics import spectra as spectra_mod
from rankscope.diagnostics.context import AnalysisContext, EvalBatch, RunHandle
from rankscope.diagnostics.registry import all_diagnostics, group_of_metric
from rankscope.diagnostics.spectra import matrix_metrics, power_law_alpha, spectral_metrics
from rankscope.diagnostics.table import rows_to_frame
from rankscope.models.llama import LlamaLM, ModelConfig

SMALL = ModelConfig(vocab_size=300, d_model=64, n_layers=2, n_heads=2, d_ff=96, max_seq_len=32)


pytestmark = pytest.mark.usefixtures("one_thread")


def _orthogonal(n: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def _with_spectrum(sv: list[float], m: int, n: int, dtype=torch.float32) -> torch.Tensor:
    u, v = _orthogonal(m, 1)[:, : len(sv)], _orthogonal(n, 2)[:, : len(sv)]
    return (u @ torch.diag(torch.tensor(sv, dtype=torch.float64)) @ v.T).to(dtype)


def test_analytic_spectrum_8x6():
    w = _with_spectrum([4, 2, 1, 1, 0, 0], 8, 6)
    got = spectral_metrics(torch.linalg.svdvals(w), (8, 6))
    assert got["rank"] == 4 and got["rank_ratio"] == pytest.approx(4 / 6)
    assert got["erank"] == pytest.approx(2**1.75, rel=1e-6)  # 3.3636
    assert got["stable_rank"] == pytest.approx(1.375, rel=1e-6)
    assert got["spectral_gap"] == pytest.approx(0.5, rel=1e-6)
    assert got["sv2_sv1"] == pytest.approx(0.5, rel=1e-6)
    assert got["n_sv_gt_0p1"] == 4 and got["frac_sv_gt_0p1"] == pytest.approx(4 / 6)
    assert got["fro"] == pytest.approx(math.sqrt(22), rel=1e-6)
    # The release's 1e-12 absolute tolerance counts fp32 round-off "zeros" (~1e-8) as rank.
    assert spectral_metrics(torch.linalg.svdvals(w), (8, 6), "faithful")["rank"] == 6
    # An fp64 SVD of the fp32-stored matrix uses the storage eps, so fp32 rounding is not rank either.
    assert matrix_metrics(w, torch.float64, alpha=False)["rank"] == 4
    exact = _with_spectrum([4, 2, 1, 1, 0, 0], 8, 6, torch.float64)
    assert matrix_metrics(exact, torch.float64, alpha=False)["erank"] == pytest.approx(2**1.75, rel=1e-12)


def test_wide_matrix_is_decomposed_as_its_transpose_with_the_same_metrics():
    wide = _with_spectrum([4, 2, 1, 1, 0, 0], 8, 6).T  # 6×8: the SVD runs on the (faster) tall view
    assert matrix_metrics(wide) == pytest.approx(matrix_metrics(wide.T.contiguous()), rel=1e-6, nan_ok=True)
    assert matrix_metrics(wide)["rank"] == 4


@pytest.mark.parametrize("m", [32 * 8 * 16 + 37, 32 * 8 * 16])  # block remainder / none (n = 8: blocks of 128)
def test_very_tall_matrix_blocked_qr_keeps_the_exact_spectrum(m):
    sv = [5.0, 3.0, 1.0, 0.5, 1e-2, 0, 0, 0]  # rank 5 (1e-2 is above the 2.5e-3 tolerance), exact zeros
    tall = _with_spectrum(sv, m, 8)
    assert torch.get_num_threads() == 1 and m >= spectra_mod.TSQR_MIN_ASPECT * 8  # the blocked path runs
    got = spectra_mod.singular_values(tall)
    assert got.shape == (8,)
    assert torch.allclose(got.double(), torch.tensor(sv, dtype=torch.float64), atol=5e-6)
    assert torch.allclose(spectra_mod.singular_values(tall.T), got)  # wide input: its transpose
    metrics = matrix_metrics(tall, alpha=False)
    assert metrics["rank"] == 5 and metrics["fro"] == pytest.approx(math.sqrt(sum(s * s for s in sv)), rel=1e-6)


def test_identity_and_rank_one():
    eye = spectral_metrics(torch.linalg.svdvals(torch.eye(7)), (7, 7))
    assert eye["erank"] == pytest.approx(7) and eye["stable_rank"] == pytest.approx(7)
    assert eye["rank"] == 7 and eye["spectral_gap"] == pytest.approx(0.0)
    r1 = matrix_metrics(_with_spectrum([3.0], 9, 5, torch.float64), torch.float64)
    assert r1["erank"] == pytest.approx(1.0, abs=1e-12) and r1["stable_rank"] == pytest.approx(1.0, abs=1e-12)
    assert r1["spectral_gap"] == pytest.approx(1.0, abs=1e-12) and r1["rank"] == 1


def test_zero_matrix_is_defined():
    got = matrix_metrics(torch.zeros(5, 4))
    assert got["rank"] == 0 and got["fro"] == 0 and math.isnan(got["alpha"])


def test_power_law_alpha_recovers_exponent():
    # Exact Pareto quantiles with density exponent 3: the MLE over the full sample is close to 3.
    n = 400
    lam = (1 - (torch.arange(n, dtype=torch.float64) + 0.5) / n) ** (-1 / (3 - 1))
    got = power_law_alpha(lam.sqrt().sort(descending=True).values, n_min=10)
    assert 2.7 < got["alpha"] < 3.3
    assert got["alpha_weighted"] == pytest.approx(got["alpha"] * math.log10(float(lam.max())))
    assert got["alpha_n_tail"] >= 10
    # Too few eigenvalues for the minimum tail: undefined, not an error.
    assert math.isnan(power_law_alpha(torch.ones(5), n_min=10)["alpha"])


# ----------------------------------------------------------------------------- registered diagnostics
class FakeRun(RunHandle):
    """A RunHandle over in-memory models (no run folder), for fast diagnostic tests."""

    def __init__(self, name: str, method: str, models: dict[int, torch.nn.Module]) -> None:
        super().__init__(Path(name), name, method, "small", 0, sorted(models))
        self.models = models

    def native_model(self, step: int):
        return copy.deepcopy(self.models[step]).float().eval()


def _ctx(run: RunHandle, step: int, **kw) -> AnalysisContext:
    batch = EvalBatch(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))
    return AnalysisContext(run=run, step=step, batch=batch, **kw)


def _cola(model: LlamaLM, rank: int = 8) -> LlamaLM:
    from rankscope.methods.layers import CoLALinear

    gen = torch.Generator().manual_seed(3)
    for block in model.model.layers:
        for parent in (block.self_attn, block.mlp):
            for name, child in list(parent.named_children()):
                if isinstance(child, torch.nn.Linear):
                    setattr(parent, name, CoLALinear(child.in_features, child.out_features, rank, generator=gen))
    return model


def test_registry_maps_metrics_to_groups():
    assert {"spectra", "update_spectra"} <= set(all_diagnostics())
    assert group_of_metric("w_erank").name == "spectra"
    assert group_of_metric("dw_rel_fro").name == "update_spectra"


def test_spectra_dense_rows_and_summaries():
    torch.manual_seed(0)
    model = LlamaLM(SMALL)
    rows = all_diagnostics()["spectra"].fn(_ctx(FakeRun("full", "full_rank", {1: model}), 1))
    df = rows_to_frame(rows)
    q = df[(df.metric == "w_stable_rank") & (df.scope == "matrix") & (df.name == "model.layers.0.self_attn.q_proj")]
    s = torch.linalg.svdvals(model.model.layers[0].self_attn.q_proj.weight.detach())
    assert float(q.value.iloc[0]) == pytest.approx(float((s**2).sum() / s[0] ** 2), rel=1e-6)
    matrix = df[(df.metric == "w_erank") & (df.scope == "matrix")]
    assert len(matrix) == 14 and set(df.space) == {"dense"}
    model_mean = df[(df.metric == "w_erank") & (df.scope == "model")].value.iloc[0]
    assert model_mean == pytest.approx(matrix.value.mean())
    assert set(df[df.scope == "layer"].name) == {"0", "1"}
    assert "gate_proj" in set(df[df.scope == "type"].name)
    assert df.n_tokens.isna().all()


def test_spectra_cola_linear_product_and_factors():
    torch.manual_seed(0)
    model = _cola(LlamaLM(SMALL), rank=8)
    df = rows_to_frame(all_diagnostics()["spectra"].fn(_ctx(FakeRun("cola", "cola", {1: model}), 1)))
    assert set(df.space) == {"linear_product", "factor"}
    lp = df[(df.metric == "w_rank") & (df.scope == "matrix") & (df.space == "linear_product")]
    assert len(lp) == 14 and (lp.value <= 8).all()  # B·A has rank ≤ r
    factors = df[(df.metric == "w_rank") & (df.scope == "matrix") & (df.space == "factor")]
    assert len(factors) == 28 and factors.name.str.endswith(("cola_A", "cola_B")).all()
    # The release behaviour: native tensors only.
    native = rows_to_frame(all_diagnostics()["spectra"].fn(_ctx(FakeRun("cola", "cola", {1: model}), 1),
                                                           space="factor"))
    assert set(native.space) == {"native"}


def test_update_spectra_known_delta():
    torch.manual_seed(0)
    a = LlamaLM(SMALL)
    b = copy.deepcopy(a)
    delta = _with_spectrum([2.0, 1.0], 64, 64)
    with torch.no_grad():
        b.model.layers[1].self_attn.v_proj.weight += delta
    run = FakeRun("full", "full_rank", {1: a, 2: b})
    df = rows_to_frame(all_diagnostics()["update_spectra"].fn(_ctx(run, 1, step_b=2)))
    v = df[(df.scope == "matrix") & (df.name == "model.layers.1.self_attn.v_proj")].set_index("metric").value
    assert v["dw_rank"] == 2 and v["dw_stable_rank"] == pytest.approx(1.25, rel=1e-5)
    assert v["dw_fro"] == pytest.approx(math.sqrt(5), rel=1e-5)
    w0 = float(torch.linalg.vector_norm(a.model.layers[1].self_attn.v_proj.weight.double()))
    assert v["dw_rel_fro"] == pytest.approx(math.sqrt(5) / w0, rel=1e-5)
    other = df[(df.metric == "dw_fro") & (df.scope == "matrix") & (df.name != "model.layers.1.self_attn.v_proj")]
    assert (other.value == 0).all()
    total = df[df.metric == "dw_fro_total"].value.iloc[0]
    assert total == pytest.approx(math.sqrt(5), rel=1e-5)
    assert (df.step == 1).all() and (df.step_b == 2).all()


# ------------------------------------------------------------------------------------------- oracle
def test_matches_weightwatcher_fp64():
    """weightwatcher 0.7.7 reports, per Linear/Embedding: ``spectral_norm`` = s₁² (λ_max), ``stable_rank``
    = Σλ/λ_max, ``norm`` = Σλ (= ‖W‖²_F, not ‖W‖_F), ``alpha``/``xmin``/``D`` from its KS scan over every
    eigenvalue but the largest, and ``alpha_weighted`` = α·log₁₀ λ_max. Its ``entropy`` is a different,
    normalised quantity, so erank is checked on its eigenvalues instead (√λ → our erank)."""
    ww = pytest.importorskip("weightwatcher")
    import logging

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    torch.manual_seed(0)
    model = LlamaLM(SMALL).double()
    watcher = ww.WeightWatcher(model=model)
    details = watcher.analyze()
    modules = dict(model.named_modules())
    assert len(details) == 16  # 14 projections + embedding + lm_head
    for _, row in details.iterrows():
        w = modules[row.longname].weight.detach()
        ours = matrix_metrics(w, torch.float64, ww_compat=True)
        assert ours["sv_max"] ** 2 == pytest.approx(row.spectral_norm, rel=1e-12)
        assert ours["stable_rank"] == pytest.approx(row.stable_rank, rel=1e-12)
        assert ours["fro"] ** 2 == pytest.approx(row.norm, rel=1e-12)
        assert ours["alpha"] == pytest.approx(row.alpha, rel=1e-12)
        assert ours["alpha_xmin"] == pytest.approx(row.xmin, rel=1e-12)
        assert ours["alpha_ks"] == pytest.approx(row.D, rel=1e-10, abs=1e-13)
        assert ours["alpha_n_tail"] == row.num_pl_spikes
        assert ours["alpha_weighted"] == pytest.approx(row.alpha_weighted, rel=1e-12)
    esd = watcher.get_ESD(layer=int(details.layer_id.iloc[1]))
    s_ww = torch.from_numpy(esd).double().clamp_min(0).sqrt().sort(descending=True).values
    w = modules[details.longname.iloc[1]].weight.detach()
    assert spectral_metrics(s_ww, tuple(w.shape))["erank"] == pytest.approx(
        matrix_metrics(w, torch.float64)["erank"], rel=1e-12)
