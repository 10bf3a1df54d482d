"""Alignment to a full-rank reference: L + λ·Σ_late layers (1 − similarity(H_l, H_l^FR)).

H_l are the activations (block outputs) of this run's model and H_l^FR those of the full-rank reference run
at the same step (rankscope/guides/reference.py: the checkpoint at that step or the nearest earlier one), on
the same micro-batch, over its first ``tokens`` non-pad positions. Similarity:

* ``cka``: linear CKA in feature space, ‖ỸᵀX̃‖²_F / (‖X̃ᵀX̃‖_F·‖ỸᵀỸ‖_F) on column-centred rows (Kornblith
  et al., ICML 2019) — the same quantity as the diagnostics' ``act_cka`` (diagnostics/activations.py, whose
  streaming accumulator is not differentiable; the tests check the two agree);
* ``procrustes``: ‖X̃ᵀỸ‖_* / (‖X̃‖_F·‖Ỹ‖_F), the orthogonal-Procrustes similarity (Williams et al. 2021).

Both are 1, their maximum, when H = H^FR, so the loss and its gradient vanish when the model equals its
reference. The reference forward stops after the last aligned layer (no lm_head). The guide stores nothing:
at resume the reference is re-read from its folder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rankscope.guides.base import Guide, GuideConfig
from rankscope.guides.reference import ReferenceWeights, check_reference
from rankscope.guides.registry import register


@dataclass(frozen=True)
class AlignConfig(GuideConfig):
    reference: str = ""  # full-rank run folder (same model and init, with checkpoints)
    weight: float = 0.1  # λ, the weight of the alignment term
    layers: str = "last_third"  # last_third | comma list of block numbers 1..n_layers
    similarity: str = "cka"  # cka | procrustes
    tokens: int = 2048  # token rows per micro-batch compared (the first non-pad positions)

    def __post_init__(self) -> None:
        if not self.weight > 0:
            raise ValueError(f"option weight={self.weight} must be a positive number")
        if self.similarity not in ("cka", "procrustes"):
            raise ValueError(f"option similarity={self.similarity!r} is not valid; choose cka or procrustes")
        if self.tokens < 2:
            raise ValueError(f"option tokens={self.tokens} must be at least 2")


def aligned_blocks(setting: str, n_layers: int) -> list[int]:
    """Block numbers (1-based) to align: the last third by default."""
    if setting == "last_third":
        return list(range(n_layers - max(1, n_layers // 3) + 1, n_layers + 1))
    try:
        blocks = sorted({int(x) for x in setting.split(",") if x.strip()})
    except ValueError:
        blocks = []
    if not blocks or blocks[0] < 1 or blocks[-1] > n_layers:
        raise ValueError(f"option layers={setting!r} is not valid: give last_third or block numbers 1..{n_layers} "
                         f"separated by commas")
    return blocks


def _centred(x: torch.Tensor) -> torch.Tensor:
    return x - x.mean(dim=0, keepdim=True)


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear CKA of two [n, d] row sets (differentiable)."""
    x, y = _centred(x), _centred(y)
    return (y.mT @ x).square().sum() / ((x.mT @ x).norm() * (y.mT @ y).norm())


def procrustes_similarity(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """‖XᵀY‖_* / (‖X‖_F‖Y‖_F) on centred rows: 1 iff Y is an orthogonal transform of X."""
    x, y = _centred(x), _centred(y)
    return torch.linalg.svdvals(x.mT @ y).sum() / (x.norm() * y.norm())


SIMILARITY = {"cka": linear_cka, "procrustes": procrustes_similarity}


@register("align")
class Align(Guide):
    Config = AlignConfig
    summary = "L + λ·Σ_late (1 − CKA or Procrustes similarity to a full-rank reference run at the same step)"

    def __init__(self, config, run_cfg) -> None:
        super().__init__(config, run_cfg)
        self.blocks = aligned_blocks(config.layers, run_cfg.model_config().n_layers)

    def check(self, method) -> None:
        self.reference = check_reference(self.name, self.config.reference, self.run)

    def setup(self, model, optimizer, info) -> None:
        super().setup(model, optimizer, info)
        if not hasattr(self, "reference"):
            self.check(None)
        dtype = next(model.parameters()).dtype
        device = next(model.parameters()).device
        self.ref = ReferenceWeights(self.reference, self.run, device, dtype)
        self.captured: dict[int, torch.Tensor] = {}
        blocks = model.model.layers
        for b in self.blocks:
            blocks[b - 1].register_forward_hook(self._capture(b))
        self._on = False

    def _capture(self, block: int):
        def hook(module, inputs, output):
            if self._on:
                self.captured[block] = output
        return hook

    def accumulate(self, step, micro_pass):
        reference = self.ref.at(step)
        self._on = True
        try:
            return micro_pass(extra=lambda ids, labels: self.alignment_loss(reference, ids, labels))
        finally:
            self._on = False
            self.captured.clear()

    def alignment_loss(self, reference, ids, labels) -> torch.Tensor:
        """λ·Σ_l (1 − sim) for the activations captured in this micro-batch's forward."""
        keep = (labels.reshape(-1) != -100).nonzero().squeeze(1)[: self.config.tokens]
        ids = ids.to(next(reference.parameters()).device)
        with torch.no_grad():
            ref_hidden = reference.hidden_states(ids, upto=max(self.blocks) + 1)
        keep = keep.to(ids.device)
        sim = SIMILARITY[self.config.similarity]
        total = 0.0
        for b in self.blocks:
            mine = self.captured[b].reshape(-1, self.captured[b].shape[-1])[keep]
            theirs = ref_hidden[b].reshape(-1, ref_hidden[b].shape[-1])[keep].to(mine.dtype)
            total = total + (1.0 - sim(mine.float() if mine.dtype == torch.bfloat16 else mine,
                                       theirs.float() if theirs.dtype == torch.bfloat16 else theirs))
        return self.config.weight * total

    @classmethod
    def cost(cls, config, model_cfg, seq_len, method, method_config):
        """The reference's forward up to the last aligned block, and the similarity's d×d products."""
        from rankscope.models.llama import target_shapes

        blocks = aligned_blocks(config.layers, model_cfg.n_layers)
        upto, d = max(blocks), model_cfg.d_model
        dense_per_block = sum(m * n for _, m, n in target_shapes(model_cfg)) / model_cfg.n_layers
        reference_forward = 2.0 * dense_per_block * upto + 4.0 * upto * seq_len * d
        similarity = 18.0 * d * d * len(blocks)  # 3 d×d Gram products forward, ×3 with their backward
        return reference_forward + similarity, 0.0
