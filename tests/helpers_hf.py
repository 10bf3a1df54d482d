"""Test-only builders of external checkpoint folders, written by transformers itself (``save_pretrained``).

The ReLoRA / SLTrain / CoLA layouts are made by swapping the HF model's projections for small test modules
whose parameter names are the releases' (read from their save code, see rankscope/models/hf_layouts.py),
then calling ``save_pretrained``: the folder is what the release would write, and the wrapped model itself is
the reference whose losses rankscope must reproduce.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def tokenizer_file() -> Path:
    from rankscope.data.tokenizer import embedded_tokenizer_path

    return embedded_tokenizer_path()


def hf_config(**kw):
    """A smoke-sized LlamaConfig (the embedded tokenizer's 8192 ids)."""
    import transformers

    base = dict(vocab_size=8192, hidden_size=32, intermediate_size=88, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=10000.0,
                tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)
    base.update(kw)
    return transformers.LlamaConfig(**base)


def hf_model(seed: int = 0, **kw):
    import transformers

    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(hf_config(**kw)).eval()
    with torch.no_grad():  # norms away from 1 so a missed norm weight shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def save(model, folder: Path, *, dtype=None, max_shard_size=None, tokenizer: bool = True) -> Path:
    folder = Path(folder)
    if dtype is not None:
        model = model.to(dtype)
    kw = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(folder, **kw)
    if tokenizer:
        shutil.copy(tokenizer_file(), folder / "tokenizer.json")
    return folder


def series(root: Path, steps=(10, 20), pattern: str = "model_{}", seed: int = 0, **kw) -> Path:
    """A checkpoint series: one HF folder per step (different weights per step)."""
    for i, step in enumerate(steps):
        save(hf_model(seed + i, **kw), Path(root) / pattern.format(step))
    return Path(root)


def token_losses(model, ids: torch.Tensor) -> torch.Tensor:
    """Per-token next-token NLL of a transformers-style model (``.logits``) or a rankscope LlamaLM."""
    with torch.no_grad():
        out = model(ids)
        logits = out.logits if hasattr(out, "logits") else out
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                           reduction="none")


def sample_ids(n: int = 2, t: int = 48, vocab: int = 8192, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (n, t), generator=torch.Generator().manual_seed(seed))


# --- release layouts (test modules named like the releases' layers) --------------------------------------

class ReLoRAStyle(nn.Module):
    """W frozen + lora_A / lora_B linears, h = W x + s·B A x."""

    def __init__(self, lin: nn.Linear, r: int, alpha: float, gen: torch.Generator) -> None:
        super().__init__()
        self.weight = nn.Parameter(lin.weight.detach().clone())
        self.lora_A = nn.Linear(lin.in_features, r, bias=False)
        self.lora_B = nn.Linear(r, lin.out_features, bias=False)
        with torch.no_grad():
            self.lora_A.weight.copy_(torch.randn(self.lora_A.weight.shape, generator=gen) * 0.1)
            self.lora_B.weight.copy_(torch.randn(self.lora_B.weight.shape, generator=gen) * 0.1)
        self.s = alpha / r

    def forward(self, x):
        return F.linear(x, self.weight) + self.s * self.lora_B(self.lora_A(x))


class SLTrainStyle(nn.Module):
    """Bare lora_A (r×n) / lora_B (m×r) parameters + sparse_value on a row-major sparse_index buffer."""

    def __init__(self, lin: nn.Linear, r: int, alpha: float, density: float, gen: torch.Generator) -> None:
        super().__init__()
        m, n = lin.out_features, lin.in_features
        self.lora_A = nn.Parameter(torch.randn(r, n, generator=gen) * 0.1)
        self.lora_B = nn.Parameter(torch.randn(m, r, generator=gen) * 0.1)
        k = int(density * m * n)
        self.register_buffer("sparse_index", torch.randperm(m * n, generator=gen)[:k].sort().values)
        self.sparse_value = nn.Parameter(torch.randn(k, generator=gen) * 0.1)
        self.s, self.shape = alpha / r, (m, n)

    def forward(self, x):
        w = self.lora_B @ (self.lora_A * self.s)
        w = w.reshape(-1).scatter_add(0, self.sparse_index, self.sparse_value).view(self.shape)
        return F.linear(x, w)


class CoLAStyle(nn.Module):
    """cola_a (n×r), cola_b (r×m): x a → SiLU → b."""

    def __init__(self, lin: nn.Linear, r: int, gen: torch.Generator) -> None:
        super().__init__()
        self.cola_a = nn.Parameter(torch.randn(lin.in_features, r, generator=gen) * 0.2)
        self.cola_b = nn.Parameter(torch.randn(r, lin.out_features, generator=gen) * 0.2)

    def forward(self, x):
        return F.silu(x @ self.cola_a) @ self.cola_b


def swap(model, build) -> None:
    for name, mod in list(model.named_modules()):
        if isinstance(mod, nn.Linear) and name.rsplit(".", 1)[-1] in TARGETS:
            parent = model.get_submodule(name.rsplit(".", 1)[0])
            setattr(parent, name.rsplit(".", 1)[-1], build(mod))


def release_checkpoint(layout: str, folder: Path, seed: int = 0, r: int = 4, alpha: float = 8.0,
                       only_lr_act: bool = False):
    """Write a ReLoRA / SLTrain / CoLA-layout checkpoint; returns the wrapped reference model."""
    model = hf_model(seed)
    gen = torch.Generator().manual_seed(seed + 100)
    folder = Path(folder)
    if layout == "relora":
        swap(model, lambda lin: ReLoRAStyle(lin, r, alpha, gen))
        save(model, folder)
        (folder / "relora_config.json").write_text(json.dumps(
            {"r": r, "lora_alpha": alpha, "lora_dropout": 0.1, "target_modules": ["attn", "mlp"],
             "keep_original_weights": True, "lora_only": False, "trainable_scaling": False}))
    elif layout == "sltrain":
        swap(model, lambda lin: SLTrainStyle(lin, r, alpha, 0.05, gen))
        save(model, folder)
        (folder / "splora_config.json").write_text(json.dumps(
            {"r": r, "lora_alpha": alpha, "lora_dropout": 0.0, "sp_ratio": 0.05, "target_modules": ["attn", "mlp"],
             "trainable_scaling": False}))
    elif layout == "cola":
        swap(model, lambda lin: CoLAStyle(lin, r, gen))
        if only_lr_act:
            for layer in model.model.layers:
                layer.mlp.act_fn = nn.Identity()
        save(model, folder)
        cfg = json.loads((folder / "config.json").read_text())
        cfg.update(model_type="cola", architectures=["ColaForCausalLM"], rank=r, only_lr_act=only_lr_act)
        (folder / "config.json").write_text(json.dumps(cfg))
    else:
        raise ValueError(layout)
    return model
