"""Spectral guide: per-matrix weight decay steered by the heavy-tail exponent α of its spectrum.

AlphaDecay-style (He et al. 2025): every ``every`` guided updates the exponent α_i of each
target matrix's eigenvalue spectrum (λ = s², the diagnostics' power-law fit, rankscope/diagnostics/spectra.py)
is recomputed, and after each optimizer step inside the window the guide applies a decoupled decay
W ← W·(1 − lr·wd·c_i) with c_i = clamp(α_i / α*_i, lo, hi): a heavier tail than the target (α_i < α*_i)
gets less decay, a lighter one more. The target α* is ``target_alpha`` if given, else the α of the same
matrix in a full-rank ``reference`` run (its checkpoint at the step or the nearest earlier one), else the
mean α over the model's target matrices (AlphaDecay's centre). α comes from the matrix's dense form
(``dense_weight()`` for factorised layers; SLTrain's, LORO's and ReLoRA's merged W); the decay acts on the
layer's trainable tensors (the factors and sparse values there). CoLA has no dense form: refused. A matrix
whose α is undefined (too few eigenvalues for the fit) keeps c = 1. The multipliers are in the checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rankscope.diagnostics.spectra import power_law_alpha, singular_values
from rankscope.errors import UserError
from rankscope.guides.base import Guide, GuideConfig
from rankscope.guides.reference import ReferenceWeights, check_reference
from rankscope.guides.registry import register


@dataclass(frozen=True)
class SpectralConfig(GuideConfig):
    weight_decay: float = 0.1  # base decoupled decay (times the current LR), scaled per matrix by c_i
    every: int = 10  # recompute α every K guided updates
    range: str = "0.5:2"  # lo:hi clamp of the per-matrix multiplier c_i = α_i / α*_i
    target_alpha: float = 0.0  # α* for every matrix (0: the reference run's per-matrix α, else the model's mean)
    reference: str = ""  # full-rank run folder whose per-matrix α is the target (when target_alpha is 0)

    def __post_init__(self) -> None:
        if not self.weight_decay > 0:
            raise ValueError(f"option weight_decay={self.weight_decay} must be a positive number")
        if self.every < 1:
            raise ValueError(f"option every={self.every} must be an integer >= 1")
        if self.target_alpha < 0:
            raise ValueError(f"option target_alpha={self.target_alpha} must be >= 0 (0: from the reference or mean)")
        parse_range(self.range)


def parse_range(text: str) -> tuple[float, float]:
    lo, sep, hi = str(text).partition(":")
    try:
        a, b = float(lo), float(hi)
    except ValueError:
        a, b = -1.0, -1.0
    if not sep or not (0 < a <= 1 <= b):
        raise ValueError(f"option range={text!r} is not valid: give lo:hi with 0 < lo <= 1 <= hi (e.g. 0.5:2)")
    return a, b


def matrix_alpha(w: torch.Tensor) -> float:
    """α of the eigenvalues of WᵀW, as the spectra diagnostic computes it (NaN when undefined)."""
    return power_law_alpha(singular_values(w.detach().double()))["alpha"]


def multipliers(alphas: list[float], targets: list[float], lo: float, hi: float) -> list[float]:
    return [1.0 if not (math.isfinite(a) and math.isfinite(t) and t > 0) else min(max(a / t, lo), hi)
            for a, t in zip(alphas, targets)]


def dense_of(module: torch.nn.Module) -> torch.Tensor:
    return module.dense_weight() if hasattr(module, "dense_weight") else module.weight


@register("spectral")
class Spectral(Guide):
    Config = SpectralConfig
    summary = "per-matrix weight decay scaled by α/α* (heavier tail, less decay), α recomputed every K updates"

    def check(self, method) -> None:
        if method is not None and not method.has_dense_form:
            raise UserError(f"guide 'spectral' cannot act on method {self.run.method!r}: its layers have no dense "
                            f"matrix W (a nonlinearity sits between the factors), so W's spectrum is not defined; "
                            f"use sam, rwp, msam or align with {self.run.method!r}, or drop --guide")
        if self.config.target_alpha == 0 and self.config.reference:
            self.reference = check_reference(self.name, self.config.reference, self.run)

    def setup(self, model, optimizer, info) -> None:
        super().setup(model, optimizer, info)
        from rankscope.models.llama import target_shapes

        modules = dict(model.named_modules())
        self.names = [name for name, _, _ in target_shapes(self.run.model_config())]
        self.layers = [modules[n] for n in self.names]
        self.tensors = [[p for p in layer.parameters() if p.requires_grad] for layer in self.layers]
        self.lo, self.hi = parse_range(self.config.range)
        self.c = torch.ones(len(self.layers), dtype=torch.float64)
        self.alphas = [math.nan] * len(self.layers)
        if self.config.target_alpha == 0 and self.config.reference:
            if not hasattr(self, "reference"):
                self.check(None)
            self.ref = ReferenceWeights(self.reference, self.run, torch.device("cpu"), torch.float32)

    def targets(self, step: int, alphas: list[float]) -> list[float]:
        if self.config.target_alpha > 0:
            return [self.config.target_alpha] * len(alphas)
        if hasattr(self, "ref"):
            ref = dict(self.ref.at(step).named_modules())
            return [matrix_alpha(ref[n].weight) for n in self.names]
        finite = [a for a in alphas if math.isfinite(a)]
        mean = sum(finite) / len(finite) if finite else math.nan
        return [mean] * len(alphas)

    def accumulate(self, step, micro_pass):
        if (step - self.steps.start) % self.config.every == 0:
            with torch.no_grad():
                self.alphas = [matrix_alpha(dense_of(layer)) for layer in self.layers]
            c = multipliers(self.alphas, self.targets(step, self.alphas), self.lo, self.hi)
            self.c = torch.tensor(c, dtype=torch.float64)
        return micro_pass()

    @torch.no_grad()
    def after_step(self, step, optimizer):
        wd = self.config.weight_decay
        # the groups are looked up now: a resume's optimizer.load_state_dict replaces the group dicts
        lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
        for c, tensors in zip(self.c.tolist(), self.tensors):
            for p in tensors:
                p.mul_(1.0 - lr_of.get(id(p), 0.0) * wd * c)
        finite = [a for a in self.alphas if math.isfinite(a)]
        return {"guide_alpha_mean": sum(finite) / len(finite)} if finite else {}

    def state_dict(self):
        return {"c": self.c}

    def load_state_dict(self, state):
        if "c" in state:
            self.c = state["c"].to(torch.float64).cpu()

    @classmethod
    def cost(cls, config, model_cfg, seq_len, method, method_config):
        """One singular-value pass per target matrix every K updates (Gram + eigensolver count)."""
        from rankscope.methods.flops import EIGH_FLOPS_PER_N3
        from rankscope.models.llama import target_shapes

        svd = sum(2.0 * max(m, n) * min(m, n) ** 2 + EIGH_FLOPS_PER_N3 * min(m, n) ** 3
                  for _, m, n in target_shapes(model_cfg))
        return 0.0, svd / config.every
