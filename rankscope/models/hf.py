"""Hugging Face ``LlamaForCausalLM`` export and import (config.json + model.safetensors).

rankscope's module names are HF's, so the state dict maps one to one; low-rank methods export their merged
dense weights (``rankscope.methods.dense.materialize``). transformers is needed only to *load* the folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from rankscope.errors import UserError
from rankscope.models.llama import LlamaLM, ModelConfig


def hf_config(cfg: ModelConfig, eos_id: int | None = None, bos_id: int | None = None) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_heads,
        "head_dim": cfg.head_dim, "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_base, "hidden_act": "silu", "tie_word_embeddings": False,
        "attention_bias": False, "mlp_bias": False, "initializer_range": cfg.init_std, "torch_dtype": "float32",
        "bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": cfg.embedding_padding_idx,
    }


def export_hf(state: dict[str, torch.Tensor], cfg: ModelConfig, out_dir: str | Path, tokenizer_file: Path | None = None,
              eos_id: int | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (+ ``tokenizer.json``) for a plain dense LLaMA state."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().float().contiguous().cpu() for k, v in state.items()}, out / "model.safetensors",
              {"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_config(cfg, eos_id=eos_id, bos_id=eos_id), indent=2))
    if tokenizer_file is not None and Path(tokenizer_file).is_file():
        (out / "tokenizer.json").write_bytes(Path(tokenizer_file).read_bytes())
        (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(Path(tokenizer_file), eos_id), indent=2))
    return out


def tokenizer_config(tokenizer_file: Path, eos_id: int | None) -> dict:
    """``tokenizer_config.json`` for ``AutoTokenizer``: the fast tokenizer class and its special tokens.

    Without it transformers loads the tokenizer with no EOS/BOS, and lm-eval's ``hf`` model (which prefixes
    an empty context with that token) fails. EOS doubles as BOS, as in training; no BOS is added to text.
    """
    added = json.loads(tokenizer_file.read_text()).get("added_tokens", [])
    by_id = {t["id"]: t["content"] for t in added}
    eos = by_id.get(eos_id) if eos_id is not None else None
    pad = next((t["content"] for t in added if "pad" in t["content"]), None)
    return {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False, "add_eos_token": False,
            "eos_token": eos, "bos_token": eos, "pad_token": pad, "model_max_length": 1 << 30}


def import_hf(folder: str | Path) -> LlamaLM:
    """Load a HF LLaMA folder (config.json + safetensors) into rankscope's LlamaLM."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"{folder} is not a Hugging Face model folder: {cfg_path} is missing")
    hf = json.loads(cfg_path.read_text())
    if hf.get("model_type") != "llama":
        raise UserError(f"{cfg_path}: model_type is {hf.get('model_type')!r}, expected 'llama'")
    if hf.get("num_key_value_heads", hf["num_attention_heads"]) != hf["num_attention_heads"]:
        raise UserError(f"{cfg_path}: grouped-query attention is not supported by rankscope's LLaMA")
    cfg = ModelConfig(
        vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"], d_ff=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 256), rope_base=hf.get("rope_theta", 10000.0),
        norm_eps=hf.get("rms_norm_eps", 1e-6),
    )
    state: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(f))
    if not state:
        raise UserError(f"{folder} holds no .safetensors weights")
    model = LlamaLM(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or [k for k in unexpected if "rotary" not in k]:
        raise UserError(f"{folder}: weights do not match a LLaMA of this config (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]})")
    return model


def export_run(run_dir: str | Path, out_dir: str | Path, step: int | None = None) -> Path:
    """Export a run checkpoint's dense weights (merged for ReLoRA/SLTrain; CoLA has none and is refused)."""
    from rankscope.data.tokenizer import load_tokenizer
    from rankscope.methods.dense import NoDenseForm, materialize
    from rankscope.training.checkpoint import load_model, read_run_config

    cfg = read_run_config(run_dir)
    model, _ = load_model(run_dir, step)
    try:
        state = materialize(model)
    except NoDenseForm as exc:
        raise UserError(f"{run_dir}: {exc}") from None
    tok = load_tokenizer(cfg.data.tokenizer)
    tok_file = getattr(tok, "source_file", None)
    return export_hf(state, cfg.model_config(), out_dir, tok_file, eos_id=tok.eos_id)
