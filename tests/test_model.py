"""The LLaMA model: preset shapes, parameter counts, and exact HF LlamaForCausalLM round trips."""

from __future__ import annotations

import pytest
import torch

from rankscope.models.hf import export_hf, import_hf
from rankscope.models.llama import LlamaLM, dense_param_count, lm_loss
from rankscope.models.presets import PRESETS, model_config

SPEC_TOTALS_M = {"60m": 58.07, "130m": 134.11, "350m": 367.97, "1b": 1339.08}  # methods.md §1


@pytest.mark.parametrize("preset", list(SPEC_TOTALS_M))
def test_paper_preset_parameter_counts(preset):
    assert dense_param_count(PRESETS[preset]) / 1e6 == pytest.approx(SPEC_TOTALS_M[preset], abs=0.006)


def test_smoke_and_tiny_sizes():
    smoke = LlamaLM(PRESETS["smoke"])
    assert sum(p.numel() for p in smoke.parameters()) < 1_000_000
    tiny = PRESETS["tiny"]
    assert (tiny.d_model, tiny.n_layers, tiny.vocab_size) == (256, 4, 8192)
    assert sum(p.numel() for p in smoke.parameters()) == dense_param_count(PRESETS["smoke"])


def test_init_and_structure():
    torch.manual_seed(0)
    model = LlamaLM(model_config("tiny"))
    w = model.model.layers[0].self_attn.q_proj.weight
    assert abs(w.std().item() - 0.02) < 1e-3 and model.model.norm.weight.eq(1).all()
    assert all(m.bias is None for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()  # untied


def test_causality_and_hidden_states():
    torch.manual_seed(0)
    model = LlamaLM(PRESETS["smoke"]).eval()
    ids = torch.randint(0, 8192, (2, 16))
    ids2 = ids.clone()
    ids2[:, 10:] = 7
    with torch.no_grad():
        a, b = model(ids), model(ids2)
        hs = model.hidden_states(ids)
    torch.testing.assert_close(a[:, :10], b[:, :10])  # future tokens never leak backwards
    assert len(hs) == PRESETS["smoke"].n_layers + 2
    torch.testing.assert_close(model.lm_head(hs[-1]), a)


def test_loss_ignores_pads():
    logits = torch.randn(1, 4, 10)
    labels = torch.tensor([[1, 2, -100, -100]])
    expected = torch.nn.functional.cross_entropy(logits[0, :2], labels[0, :2])
    torch.testing.assert_close(lm_loss(logits, labels), expected)


def test_hf_round_trip_identical_logits(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = PRESETS["smoke"]
    ours = LlamaLM(cfg).eval()
    export_hf(ours.state_dict(), cfg, tmp_path / "hf")
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf", torch_dtype=torch.float32).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 32))
    with torch.no_grad():
        ref = ours(ids)
        theirs = hf(ids).logits
        back = import_hf(tmp_path / "hf").eval()(ids)
    torch.testing.assert_close(theirs, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(back, ref, rtol=0, atol=0)
    # And from HF's own save_pretrained back into rankscope.
    hf.save_pretrained(tmp_path / "hf2")
    with torch.no_grad():
        again = import_hf(tmp_path / "hf2").eval()(ids)
    torch.testing.assert_close(again, theirs, rtol=1e-5, atol=1e-5)


def test_import_rejects_non_llama(tmp_path):
    from rankscope.errors import UserError

    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(UserError, match="model_type is 'gpt2'"):
        import_hf(tmp_path)
    with pytest.raises(UserError, match="missing"):
        import_hf(tmp_path / "nowhere")
