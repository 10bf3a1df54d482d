"""Hugging Face ``LlamaForCausalLM`` export and import (config.json + model.safetensors).

rankscope's module names are HF's, so the state dict maps one to one; low-rank methods export their merged
dense weights (``rankscope.methods.dense.materialize``). transformers is needed only to *load* the folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rankscope.errors import UserError
from rankscope.models.llama import LlamaLM, ModelConfig
from rankscope.safetensors_io import save as save_safetensors


def hf_config(cfg: ModelConfig, eos_id: int | None = None, bos_id: int | None = None, pad_id: int | None = None) -> dict:
    """HF ``config.json``; ``pad_token_id`` is the model's padding row if it has one, else the tokenizer's pad."""
    pad = cfg.embedding_padding_idx if cfg.embedding_padding_idx is not None else pad_id
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim, "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_base, "hidden_act": "silu", "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False, "mlp_bias": False, "initializer_range": cfg.init_std, "torch_dtype": "float32",
        "bos_token_id": bos_id, "eos_token_id": eos_id,
        "pad_token_id": pad if pad is not None and 0 <= pad < cfg.vocab_size else None,
    }


def export_hf(state: dict[str, torch.Tensor], cfg: ModelConfig, out_dir: str | Path, tokenizer_file: Path | None = None,
              eos_id: int | None = None, pad_id: int | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (+ tokenizer files) for a plain dense LLaMA state.

    Every file gets the same mode (0666 minus the umask); the pad id and the maximum length agree between
    ``config.json`` and ``tokenizer_config.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tied = cfg.tie_embeddings  # one matrix: saved once, under the embedding's name (as HF does)
    save_safetensors({k: v.detach().float().contiguous().cpu().clone() for k, v in state.items()
                      if not (tied and k == "lm_head.weight")}, out / "model.safetensors", {"format": "pt"})
    hf = hf_config(cfg, eos_id=eos_id, bos_id=eos_id, pad_id=pad_id)
    (out / "config.json").write_text(json.dumps(hf, indent=2))
    if tokenizer_file is not None and Path(tokenizer_file).is_file():
        (out / "tokenizer.json").write_bytes(Path(tokenizer_file).read_bytes())
        tok = tokenizer_config(Path(tokenizer_file), eos_id, hf["pad_token_id"], cfg.max_seq_len)
        (out / "tokenizer_config.json").write_text(json.dumps(tok, indent=2))
    return out


def tokenizer_config(tokenizer_file: Path, eos_id: int | None, pad_id: int | None = None,
                     max_length: int | None = None) -> dict:
    """``tokenizer_config.json`` for ``AutoTokenizer``: the fast tokenizer class and its special tokens.

    Without it transformers loads the tokenizer with no EOS/BOS, and lm-eval's ``hf`` model (which prefixes
    an empty context with that token) fails. EOS doubles as BOS, as in training; no BOS is added to text.
    The pad token is the one whose id is the model's ``pad_token_id``, and ``model_max_length`` the model's
    ``max_position_embeddings`` (the longest sequence its RoPE tables cover), so the two files agree.
    """
    added = json.loads(tokenizer_file.read_text()).get("added_tokens", [])
    by_id = {t["id"]: t["content"] for t in added}
    eos = by_id.get(eos_id) if eos_id is not None else None
    pad = by_id.get(pad_id) if pad_id is not None else None
    return {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False, "add_eos_token": False,
            "eos_token": eos, "bos_token": eos, "pad_token": pad,
            "model_max_length": max_length if max_length else 1 << 30}


def import_hf(folder: str | Path, allow_pickle: bool = False) -> LlamaLM:
    """Load a HF LLaMA folder (config.json + safetensors; ReLoRA/SLTrain layouts merged) into rankscope's LlamaLM."""
    from rankscope.models.hf_folder import model_config_from_hf, read_config_json, read_weights
    from rankscope.models.hf_layouts import build_model, detect_layout

    folder = Path(folder)
    hf = read_config_json(folder)
    mcfg = model_config_from_hf(hf, folder / "config.json")
    state = read_weights(folder, allow_pickle)
    return build_model(state, mcfg, detect_layout(hf, folder, set(state)), folder, hf)


def export_run(run_dir, out_dir: str | Path, step: int | None = None) -> Path:
    """Export a checkpoint's dense weights (merged for ReLoRA/SLTrain; CoLA has none and is refused).

    ``run_dir`` is any run (rankscope.runs): a rankscope run folder or external checkpoints.
    """
    from rankscope.methods.dense import NoDenseForm, materialize
    from rankscope.runs import open_run

    run = open_run(run_dir)
    model = run.load_model(step)
    try:
        state = materialize(model)
    except NoDenseForm as exc:
        raise UserError(f"{run.path}: {exc}") from None
    tok = run.tokenizer()
    tok_file = getattr(tok, "source_file", None)
    return export_hf(state, run.model_config(), out_dir, tok_file, eos_id=tok.eos_id, pad_id=tok.pad_id)
