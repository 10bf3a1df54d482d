"""SPAM (Huang et al., ICLR 2025, arXiv 2501.06842): Adam with spike-aware clipping and momentum reset.

Update k (1-based, per parameter; every parameter steps every update) with gradient g:

1. **Momentum reset** when k mod ΔT = 0: m, v ← 0 (the step counter used for bias correction is *not*
   reset, as in the release). With sparse momentum, the support is redrawn at the same time.
2. **Spike-aware clipping** (θ = 5000) once k ≥ N_a and (k mod ΔT) ≥ N_a (N_a = 20: v must have
   re-accumulated first): coordinates with g² > θ·v_{k−1} become sign(g)·√(θ·v_{k−1}); v is the raw EMA.
3. Adam moments and the step with a **cosine warm-up after each reset**: the update is multiplied by
   s(t) = 1 − 0.99·½(1 + cos(π t/(W+1))) for t = k mod ΔT < W after the first reset, else 1
   (t = 0 gives 0.01).
4. ``adam_form``: ``torch`` (decay before, m̂/(√v̂+ε), eps 1e-8: rankscope's default for every method) or
   ``folded`` (the release: lr·√(1−β₂ᵏ)/(1−β₁ᵏ)·m/(√v+ε), decay after, eps 1e-6).

**Sparse momentum** (groups with ``density`` < 1): m and v exist only on a random support of exactly
⌊density·numel⌋ coordinates, stored as sorted flat int indices (``support``); the gradient outside it is
dropped, so those weights move only by decay. The support is drawn from a CPU generator seeded by
(``mask_seed``, reset number, parameter number): identical on every DDP rank and after a resume.

Deviations from the release (TianjinYellow/SPAM-Optimizer), written down as the issue asks:
* The release draws each redrawn mask with ``rand < density`` (a varying count) and keeps it as a dense
  bool tensor; here the count is exact and the support is an index list (so state = theory, 3 numbers
  per kept coordinate instead of 2 + a full-size mask).
* The release copies moments on the overlap of old and new masks, but zeroes them at the very next update
  (the reset), so the copy has no effect; here the reset simply zeroes them.
* The release's decay on sparse groups indexes a copy (``p.data[mask].add_``) and so never decays; here
  decay applies to the whole tensor.
* The release passes its LR warm-up length (``--warmup_steps``, 1000) as SPAM's momentum warm-up instead
  of ``--warmup_epoch`` (150); rankscope uses ``warmup`` = 150 unless set.

Speed: dense torch-form parameters are clipped in place and stepped by torch's multi-tensor AdamW kernel at
lr·s(t) (decay rescaled so it stays lr·wd); sparse supports and the folded form run one tensor at a time.

State per parameter: ``step`` (float32 scalar), ``exp_avg``, ``exp_avg_sq`` (full or support-sized) and,
when sparse, ``support`` (int64). Everything is a tensor; resume is bit-exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from rankscope.optim.closure import loss_of
from rankscope.optim.galore import _plain_adamw
from rankscope.optim.state_dtypes import load_keeping


def spam_warmup_scale(k: int, reset_every: int, warmup: int) -> float:
    """s(t) of step 3 above for update k (no warm-up before the first reset, nor when warmup = 0)."""
    if reset_every <= 0 or warmup <= 0 or k < reset_every:
        return 1.0
    t = k % reset_every
    if t >= warmup:
        return 1.0
    return 1.0 - 0.99 * 0.5 * (1.0 + math.cos(math.pi * t / (warmup + 1)))


def draw_support(numel: int, density: float, seed: int, device: torch.device) -> torch.Tensor:
    """Exactly ⌊density·numel⌋ sorted flat indices from a CPU generator (same on every device)."""
    count = max(1, math.floor(round(density * numel, 6)))
    gen = torch.Generator().manual_seed(seed % 2**63)
    return torch.randperm(numel, generator=gen)[:count].sort().values.to(device)


class SPAMAdamW(Optimizer):
    """SPAM; groups may carry ``density`` (< 1: sparse momentum on that group). See the module docstring."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, *, threshold: float = 5000.0,
                 reset_every: int = 500, warmup: int = 150, clip_after: int = 20, adam_form: str = "torch",
                 mask_seed: int = 0) -> None:
        if adam_form not in ("torch", "folded"):
            raise ValueError(f"adam_form={adam_form!r}; choose torch or folded")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, threshold=threshold,
                        reset_every=reset_every, warmup=warmup, clip_after=clip_after, adam_form=adam_form,
                        density=1.0, mask_seed=mask_seed)
        super().__init__(params, defaults)
        for group in self.param_groups:
            if not 0.0 < group["density"] <= 1.0:
                raise ValueError(f"density must be in (0, 1], got {group['density']}")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        load_keeping(self, super().load_state_dict, state_dict, {"support": "param", "step": "step"})  # int index, not float

    def _seed(self, group: dict, reset_index: int, param_index: int) -> int:
        return group["mask_seed"] + 1_000_003 * reset_index + 7919 * param_index

    def _init_state(self, p: torch.Tensor, group: dict, index: int) -> dict:
        state = self.state[p]
        state["step"] = torch.zeros((), dtype=torch.float32, device=p.device if p.is_cuda else "cpu")
        if group["density"] < 1.0:
            state["support"] = draw_support(p.numel(), group["density"], self._seed(group, 0, index), p.device)
            size: tuple[int, ...] = (state["support"].numel(),)
        else:
            size = tuple(p.shape)
        state["exp_avg"] = torch.zeros(size, dtype=p.dtype, device=p.device)
        state["exp_avg_sq"] = torch.zeros(size, dtype=p.dtype, device=p.device)
        return state

    @torch.no_grad()
    def step(self, closure=None):
        loss = loss_of(closure)
        for group in self.param_groups:
            fused: dict[float, list[tuple[torch.Tensor, dict]]] = {}  # warm-up scale -> dense torch-form params
            for index, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                state = self.state[p] if self.state.get(p) else self._init_state(p, group, index)
                k = int(state["step"].item()) + 1
                if "support" not in state and group["adam_form"] == "torch":
                    self._maybe_reset(p, state, group, index, k)
                    self._clip(p.grad, state, group, k)  # in place: the loop drops the gradient next
                    fused.setdefault(spam_warmup_scale(k, group["reset_every"], group["warmup"]), []).append(
                        (p, state))
                else:
                    self._python_step(p, state, group, index, k)
            for scale, items in fused.items():  # one multi-tensor AdamW call per distinct warm-up scale
                ps, sts = [p for p, _ in items], [st for _, st in items]
                _plain_adamw(ps, [p.grad for p in ps], [st["exp_avg"] for st in sts],
                             [st["exp_avg_sq"] for st in sts], [st["step"] for st in sts], lr=group["lr"] * scale,
                             betas=group["betas"], eps=group["eps"], weight_decay=group["weight_decay"] / scale)
        return loss

    def _maybe_reset(self, p: torch.Tensor, state: dict, group: dict, index: int, k: int) -> None:
        """Step 1 for update k: zero m and v (and redraw a sparse support) when k mod ΔT = 0."""
        gap = group["reset_every"]
        if gap > 0 and k % gap == 0:
            state["exp_avg"].zero_()
            state["exp_avg_sq"].zero_()
            if "support" in state:
                state["support"] = draw_support(p.numel(), group["density"], self._seed(group, k // gap, index),
                                                p.device)

    @staticmethod
    def _clip(g: torch.Tensor, state: dict, group: dict, k: int) -> None:
        """Step 2, in place: clamping g to ±√(θ·v) is exactly the rule g² > θv → sign(g)·√(θv)."""
        gap, ca, theta = group["reset_every"], group["clip_after"], group["threshold"]
        if theta > 0 and k >= ca and (gap <= 0 or k % gap >= ca):
            bound = state["exp_avg_sq"].mul(theta).sqrt_()
            torch.minimum(g, bound, out=g)
            torch.maximum(g, bound.neg_(), out=g)

    def _python_step(self, p: torch.Tensor, state: dict, group: dict, index: int, k: int) -> None:
        """Sparse momentum or the folded form: one tensor at a time."""
        beta1, beta2 = group["betas"]
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        state["step"] += 1
        sparse = "support" in state
        self._maybe_reset(p, state, group, index, k)  # first: a redrawn support decides what is gathered
        g = p.grad.reshape(-1).index_select(0, state["support"]) if sparse else p.grad.clone()
        self._clip(g, state, group, k)
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.mul_(beta1).add_(g, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        scale = spam_warmup_scale(k, group["reset_every"], group["warmup"])
        bc1, bc2 = 1 - beta1 ** k, 1 - beta2 ** k
        if group["adam_form"] == "torch":
            p.mul_(1 - lr * wd)
            upd = (m / bc1) / ((v / bc2).sqrt() + eps)
            step_size = lr * scale
        else:
            upd = m / (v.sqrt() + eps)
            step_size = lr * scale * math.sqrt(bc2) / bc1
        if sparse:
            p.view(-1).index_add_(0, state["support"], upd, alpha=-step_size)
        else:
            p.add_(upd, alpha=-step_size)
        if group["adam_form"] == "folded" and wd:
            p.mul_(1 - lr * wd)
