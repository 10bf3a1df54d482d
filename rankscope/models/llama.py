"""The one LLaMA decoder every method trains (GaLore-lineage shapes, HF module names).

Module names match Hugging Face ``LlamaForCausalLM`` exactly (``model.layers.0.self_attn.q_proj`` ...),
so export/import is a rename-free state-dict copy and methods can select targets by HF names.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

TARGET_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a LLaMA decoder. Field docs become CLI help."""

    vocab_size: int = 8192  # rows of the embedding and lm_head
    d_model: int = 256  # hidden size
    n_layers: int = 4  # decoder blocks
    n_heads: int = 4  # attention heads (head dim = d_model / n_heads)
    d_ff: int = 688  # SwiGLU intermediate size
    max_seq_len: int = 256  # longest sequence RoPE tables are built for
    rope_base: float = 10000.0  # RoPE theta
    norm_eps: float = 1e-6  # RMSNorm epsilon
    init_std: float = 0.02  # N(0, std^2) for every Linear and the Embedding
    embedding_padding_idx: int | None = None  # release quirk: a zero, never-trained embedding row
    n_kv_heads: int | None = None  # key/value heads (grouped-query attention); None: n_heads (external models)
    tie_embeddings: bool = False  # lm_head shares the embedding matrix (external models, e.g. small LLaMA 3)

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"head dim {self.d_model // self.n_heads} must be even for RoPE")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.kv_heads}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def kv_dim(self) -> int:
        """Output width of k_proj and v_proj (d_model unless the attention is grouped-query)."""
        return self.kv_heads * self.head_dim

    def to_dict(self) -> dict:
        return asdict(self)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Variance in fp32 (as HF LLaMA): bf16 squares lose too much precision.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_tables(cfg: ModelConfig, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (cfg.rope_base ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim))
    t = torch.arange(cfg.max_seq_len, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)  # half-split (rotate_half) layout, as HF
    return emb.cos().to(device), emb.sin().to(device)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.head_dim, self.kv_heads = cfg.n_heads, cfg.head_dim, cfg.kv_heads
        d = cfg.d_model
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, cfg.kv_dim, bias=False)
        self.v_proj = nn.Linear(d, cfg.kv_dim, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = cos[:t].to(q.dtype), sin[:t].to(q.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.kv_heads != self.n_heads:  # grouped-query: each k/v head serves n_heads / kv_heads query heads
            k = k.repeat_interleave(self.n_heads // self.kv_heads, dim=1)
            v = v.repeat_interleave(self.n_heads // self.kv_heads, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)
        self.act = nn.SiLU()  # CoLA's "release" variant swaps this for Identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Trunk(nn.Module):
    """Embedding + blocks + final norm: HF's ``LlamaModel`` (named ``model`` in the LM)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.embedding_padding_idx)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)


class LlamaLM(nn.Module):
    """Causal LM returning logits. ``hidden_states`` gives per-layer activations for diagnostics."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = Trunk(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:  # one matrix under both names, as HF's tie_word_embeddings
            self.lm_head.weight = self.model.embed_tokens.weight
        cos, sin = rope_tables(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, RMSNorm):
                module.weight.fill_(1.0)
        pad = self.config.embedding_padding_idx
        if pad is not None:
            self.model.embed_tokens.weight[pad].zero_()

    def hidden_states(self, input_ids: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        """Activations: [embedding output, block 1..L outputs, final-norm output].

        ``upto`` stops after that many entries, so similarity metrics never pay for the lm_head.
        """
        n_total = self.config.n_layers + 2
        upto = n_total if upto is None else min(upto, n_total)
        x = self.model.embed_tokens(input_ids)
        out = [x]
        for block in self.model.layers:
            if len(out) >= upto:
                return out
            x = block(x, self.rope_cos, self.rope_sin)
            out.append(x)
        if len(out) < upto:
            out.append(self.model.norm(x))
        return out

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[-1] > self.config.max_seq_len:
            raise ValueError(
                f"sequence length {input_ids.shape[-1]} exceeds max_seq_len={self.config.max_seq_len}"
            )
        x = self.model.embed_tokens(input_ids)
        for block in self.model.layers:
            x = block(x, self.rope_cos, self.rope_sin)
        return self.lm_head(self.model.norm(x))


def lm_loss_sums(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token NLL (fp32) and the number of counted targets; labels == -100 are ignored.

    ``labels`` are already aligned with ``logits`` (the batcher shifts), so there is no off-by-one here.
    """
    nll = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum"
    )
    return nll, (labels != -100).sum()


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Token-mean NLL over non-pad targets (the training objective)."""
    total, count = lm_loss_sums(logits, labels)
    return total / count.clamp_min(1)


def target_shapes(cfg: ModelConfig) -> list[tuple[str, int, int]]:
    """(qualified name, out, in) of the 7 projections of every block, in module order."""
    d, f, kv = cfg.d_model, cfg.d_ff, cfg.kv_dim
    per_block = [
        ("self_attn.q_proj", d, d), ("self_attn.k_proj", kv, d), ("self_attn.v_proj", kv, d),
        ("self_attn.o_proj", d, d), ("mlp.gate_proj", f, d), ("mlp.up_proj", f, d), ("mlp.down_proj", d, f),
    ]
    return [(f"model.layers.{i}.{name}", m, n) for i in range(cfg.n_layers) for name, m, n in per_block]


def extra_param_count(cfg: ModelConfig) -> int:
    """Embedding + lm_head + every RMSNorm gain: the parameters no method makes low-rank."""
    embeddings = 1 if cfg.tie_embeddings else 2
    return embeddings * cfg.vocab_size * cfg.d_model + (2 * cfg.n_layers + 1) * cfg.d_model


def dense_param_count(cfg: ModelConfig) -> int:
    return extra_param_count(cfg) + sum(m * n for _, m, n in target_shapes(cfg))


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def flops_per_token(model_cfg: ModelConfig, matmul_params: int, seq_len: int) -> float:
    """Training FLOPs per token: 6·N_mm + 12·L·T·d (performance.md §2, causal mask not halved)."""
    return 6.0 * matmul_params + 12.0 * model_cfg.n_layers * seq_len * model_cfg.d_model


def perplexity(mean_nll: float) -> float:
    return math.exp(min(mean_nll, 700.0))
