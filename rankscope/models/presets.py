"""Named model sizes: the study's vocabulary (smoke for tests, tiny for the CPU demo, paper sizes)."""

from __future__ import annotations

from dataclasses import replace

from rankscope.models.llama import ModelConfig

PRESETS: dict[str, ModelConfig] = {
    # Well under 1M parameters with the shipped 8192-token tokenizer: for tests.
    "smoke": ModelConfig(vocab_size=8192, d_model=32, n_layers=2, n_heads=2, d_ff=88, max_seq_len=256),
    # The CPU demo size (performance.md §9, "tiny_v8k").
    "tiny": ModelConfig(vocab_size=8192, d_model=256, n_layers=4, n_heads=4, d_ff=688, max_seq_len=256),
    # The paper sizes (methods.md §1), LLaMA vocab 32000.
    "60m": ModelConfig(vocab_size=32000, d_model=512, n_layers=8, n_heads=8, d_ff=1376, max_seq_len=256),
    "130m": ModelConfig(vocab_size=32000, d_model=768, n_layers=12, n_heads=12, d_ff=2048, max_seq_len=256),
    "350m": ModelConfig(vocab_size=32000, d_model=1024, n_layers=24, n_heads=16, d_ff=2736, max_seq_len=256),
    "1b": ModelConfig(vocab_size=32000, d_model=2048, n_layers=24, n_heads=32, d_ff=5461, max_seq_len=256),
}


def model_config(name: str, **overrides) -> ModelConfig:
    """Look up a preset by name, optionally overriding fields (e.g. ``vocab_size``)."""
    try:
        cfg = PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown model preset {name!r}; choose one of: {', '.join(PRESETS)}") from None
    return replace(cfg, **overrides) if overrides else cfg
