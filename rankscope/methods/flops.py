"""Closed-form training FLOPs per method: per token (model) plus per update (optimizer / layer work).

performance.md §2 counts a training token as 6·N_mm + 12·L·T·d, with N_mm the matmul weights the method
*actually multiplies*, not the dense model's. Per target m×n at rank r (clamped to min(m, n)):

* dense weights (full-rank and every optimizer-only method: GaLore, Fira, APOLLO, GoLore, Muon, SPAM, ...):
  6·mn per token;
* CoLA and plain factorised layers (LowRank, LORO): 6·r(m+n) per token (W is never formed);
* SLTrain: W = s·BA + S is materialised and used as a dense linear, 6·mn per token, plus per update the
  product BA and the two factor gradients s·G·Aᵀ, s·Bᵀ·G: 6·mnr;
* ReLoRA: frozen W needs forward and input gradient only, 4·mn, plus its adapters 6·r(m+n).

Per-update optimizer GEMMs (not per token, so they amortise over the batch):

* projected optimizers (a config with ``rank`` and ``update_proj_gap``): project and back-project,
  2·(2·mnr), plus a refresh every T updates, amortised: the Gram matrix 2·max·min² and its eigh ≈ 9·min³;
* Muon: ``ns_steps`` (5) Newton-Schulz iterations of 4·min²·max + 2·min³ each.

Elementwise work (Adam, norms, SiLU, softmax) is not counted, as in §2. A method without a rule here falls
back to the dense count with a note saying so; the study's cost estimate prints the note.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rankscope.models.llama import ModelConfig, target_shapes

#: Methods whose targets become two factors without a dense W in the forward (y = B·f(A·x)).
FACTORISED = ("cola", "lowrank", "low_rank", "loro")
DENSE = ("full_rank", "galore", "fira", "apollo", "apollo_mini", "golore", "muon", "spam")
EIGH_FLOPS_PER_N3 = 9.0  # symmetric eigensolver, vectors included: ~9·n³ (Golub & Van Loan)


@dataclass(frozen=True)
class FlopsEstimate:
    """FLOPs of one training token (forward + backward) and of one update's extra work."""

    per_token: float
    per_update: float
    matmul_params: int  # N_mm of the per-token count (weights multiplied per token, lm_head included)
    note: str = ""

    def run_flops(self, tokens_per_update: int, updates: int) -> float:
        return updates * (tokens_per_update * self.per_token + self.per_update)


def _rank(config: Any, m: int, n: int) -> int:
    return min(int(getattr(config, "rank", min(m, n))), m, n)


def _projected_update_flops(config: Any, shapes: list[tuple[str, int, int]]) -> float:
    gap = max(int(getattr(config, "update_proj_gap", 1)), 1)
    total = 0.0
    for _, m, n in shapes:
        r, lo, hi = _rank(config, m, n), min(m, n), max(m, n)
        total += 4.0 * m * n * r + (2.0 * hi * lo * lo + EIGH_FLOPS_PER_N3 * lo**3) / gap
    return total


def _muon_update_flops(config: Any, shapes: list[tuple[str, int, int]]) -> float:
    steps = int(getattr(config, "ns_steps", 5))
    return sum(steps * (4.0 * min(m, n) ** 2 * max(m, n) + 2.0 * min(m, n) ** 3) for _, m, n in shapes)


def estimate(method: str, model_cfg: ModelConfig, config: Any, seq_len: int) -> FlopsEstimate:
    """FLOPs per token and per update of ``method`` (registry name) with its resolved ``config``."""
    shapes = target_shapes(model_cfg)
    lm_head = model_cfg.vocab_size * model_cfg.d_model
    attention = 12.0 * model_cfg.n_layers * seq_len * model_cfg.d_model
    note = ""
    per_update = 0.0
    if method in FACTORISED:
        n_mm = sum(_rank(config, m, n) * (m + n) for _, m, n in shapes)
        per_token_targets = 6.0 * n_mm
    elif method == "sltrain":
        n_mm = sum(m * n for _, m, n in shapes)
        per_token_targets = 6.0 * n_mm
        per_update = sum(6.0 * m * n * _rank(config, m, n) for _, m, n in shapes)
    elif method == "relora":
        frozen = sum(m * n for _, m, n in shapes)
        adapters = sum(_rank(config, m, n) * (m + n) for _, m, n in shapes)
        n_mm = frozen + adapters
        per_token_targets = 4.0 * frozen + 6.0 * adapters
    else:
        n_mm = sum(m * n for _, m, n in shapes)
        per_token_targets = 6.0 * n_mm
        if method not in DENSE:
            note = f"no FLOPs rule for method {method!r}: counted as dense AdamW (rankscope/methods/flops.py)"
    if method == "muon":
        per_update += _muon_update_flops(config, shapes)
    elif hasattr(config, "rank") and hasattr(config, "update_proj_gap") and method not in FACTORISED:
        per_update += _projected_update_flops(config, shapes)
    return FlopsEstimate(per_token_targets + 6.0 * lm_head + attention, per_update, n_mm + lm_head, note)
