"""GaLoreAdamW: AdamW whose moments live in a periodically refreshed top-r gradient subspace.

Update k of an m×n target (methods.md §2.2): refresh the basis B when the parameter's own counter, read
*before* it is incremented, is a multiple of ``update_proj_gap``; project R = G B (m ≥ n) or Bᵀ G (m < n);
run Adam on R in the compact space; step W by ``scale``·B(N). Moments are kept across refreshes.

Groups whose dict has ``rank`` are projected (keys ``rank``, ``update_proj_gap``, ``scale``, ``projector``,
``canonical_signs``, ``projector_fp64``, and GoLore's ``random_after`` / ``random_seed``: from the parameter's
counter ``random_after`` on, every refresh draws a seeded random orthonormal basis instead of the top-r one,
see :func:`~rankscope.optim.projectors.random_basis`); other groups are plain AdamW run by torch's fused (or foreach)
kernel, so the extras (embedding, lm_head: most of a 60m model) cost one pass instead of the packages'
Python loop of per-tensor ops.

``adam_form`` (methods.md §2 "Adam core"):

* ``"torch"`` (default, eps 1e-8): ``torch.optim.AdamW``: m̂/(√v̂+ε), decoupled decay *before* the step.
  The direction handed to ``_apply_update`` is the whole bias-corrected N = m̂/(√v̂+ε) and the step size is
  the plain lr. For GaLore's linear back-projection that is the same update as folding 1/(1-β₁ᵏ) into the
  step size, but Fira's φ and norm-growth limiter (and APOLLO's scaling) read N itself: with the factor
  folded into the step they would see its warm-up ((1-β₁ᵏ) rises from 0.1 to 1) as a growing N, and the
  limiter, which allows 1 % growth per update, would hold the residual back for up to ~230 updates
  (1.01²³¹ ≈ 10; issue 14, item 8a).
* ``"folded"`` (eps 1e-6): the transformers copy inside galore-torch/fira: η_k·m/(√v+ε) with
  η_k = lr·√(1-β₂ᵏ)/(1-β₁ᵏ), decay *after* the step. The plain group reuses the fused kernel with
  ε' = ε/√(1-β₂ᵏ), which is the same update algebraically.

Non-finite gradients: at a refresh the gradient is checked (it is decomposed anyway); a NaN/Inf gradient
keeps the previous projector and *skips that parameter's update* (moments and counter unchanged, counted in
``nonfinite_skips``), so the refresh is retried next step. Ordinary steps do not check, because that would
cost a full pass and a host sync per matrix; skipping non-finite steps is the training loop's job.

State is tensors only: ``step`` (float32 scalar), ``exp_avg``, ``exp_avg_sq``, ``projector``; the optimizer
state dict loads with ``torch.load(weights_only=True)`` and resumes bit-exactly.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.adam import adam as _adam_functional

from rankscope.optim.closure import loss_of
from rankscope.optim.projectors import (
    PROJECTORS,
    mix_seed,
    project,
    projection_side,
    random_basis,
    refresh_basis,
)

log = logging.getLogger(__name__)

ADAM_FORMS = ("torch", "folded")
DEFAULT_EPS = {"torch": 1e-8, "folded": 1e-6}


def _fused_ok(params: list[torch.Tensor]) -> bool:
    return all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)


def _plain_adamw(
    params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor], steps: list[torch.Tensor], *, lr: float, betas: tuple[float, float],
    eps: float, weight_decay: float,
) -> None:
    """torch.optim.AdamW math through torch's functional kernel (increments ``steps``)."""
    fused = _fused_ok(params)
    _adam_functional(
        params, grads, exp_avgs, exp_avg_sqs, [], steps, foreach=not fused, fused=fused,
        amsgrad=False, beta1=betas[0], beta2=betas[1], lr=lr, weight_decay=weight_decay, eps=eps,
        maximize=False, decoupled_weight_decay=True,
    )


def adamw_defaults(lr: float, betas: tuple[float, float], eps: float | None, weight_decay: float, adam_form: str,
                   **extra: Any) -> dict[str, Any]:
    """The AdamW part of a projected optimizer's group defaults; ``eps=None`` takes the Adam form's own."""
    if adam_form not in ADAM_FORMS:
        raise ValueError(f"adam_form={adam_form!r}; choose one of: {', '.join(ADAM_FORMS)}")
    eps = DEFAULT_EPS[adam_form] if eps is None else eps
    return dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, adam_form=adam_form, **extra)


class GaLoreAdamW(Optimizer):
    """AdamW with GaLore projection on groups that carry ``rank`` (see the module docstring)."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float | None = None,
        weight_decay: float = 0.0,
        *,
        adam_form: str = "torch",
        update_proj_gap: int = 200,
        scale: float = 0.25,
        projector: str = "gram_eigh",
        canonical_signs: bool = True,
        projector_fp64: bool = False,
        random_after: int | None = None,
        random_seed: int = 0,
        **extra_defaults: Any,
    ) -> None:
        defaults = adamw_defaults(
            lr, betas, eps, weight_decay, adam_form, update_proj_gap=update_proj_gap, scale=scale,
            projector=projector, canonical_signs=canonical_signs, projector_fp64=projector_fp64,
            random_after=random_after, random_seed=random_seed, **extra_defaults,
        )
        self._reset_counters()
        super().__init__(params, defaults)

    def _reset_counters(self) -> None:
        self.nonfinite_skips = 0  # parameter updates skipped because of a non-finite gradient at a refresh
        self.refresh_failures = 0  # refreshes whose decomposition failed in fp32 and fp64
        self._clamp_logged: set[tuple[int, int, int]] = set()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if group["adam_form"] not in ADAM_FORMS:
            raise ValueError(f"adam_form={group['adam_form']!r}; choose one of: {', '.join(ADAM_FORMS)}")
        if group.get("rank") is None:
            return
        if int(group["rank"]) < 1 or int(group["update_proj_gap"]) < 1:
            raise ValueError("rank and update_proj_gap must be >= 1")
        for p in group["params"]:
            if p.ndim != 2:
                raise ValueError(f"{type(self).__name__} projects 2-D weights only; got shape {tuple(p.shape)}")
        self._check_projected_group(group)

    def _check_projected_group(self, group: dict[str, Any]) -> None:
        """Validate the subclass-specific keys of a projected group."""
        if group["projector"] not in PROJECTORS:
            raise ValueError(f"projector={group['projector']!r}; choose one of: {', '.join(PROJECTORS)}")
        if group.get("random_after") is not None and int(group["random_after"]) < 0:
            raise ValueError(f"random_after must be >= 0 or None, got {group['random_after']}")

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = loss_of(closure)
        for group in self.param_groups:
            if group.get("rank") is None:
                self._plain_step(group)
            else:
                self._projected_step(group)
        return loss

    # --- plain AdamW groups ---------------------------------------------------------------------
    def _plain_step(self, group: dict[str, Any]) -> None:
        params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            st = self.state[p]
            if not st:
                st["step"] = torch.zeros((), dtype=torch.float32, device=p.device if p.is_cuda else "cpu")
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            params.append(p), grads.append(p.grad), steps.append(st["step"])
            exp_avgs.append(st["exp_avg"]), exp_avg_sqs.append(st["exp_avg_sq"])
        if not params:
            return
        lr, wd, eps, betas = group["lr"], group["weight_decay"], group["eps"], group["betas"]
        if group["adam_form"] == "torch":
            _plain_adamw(params, grads, exp_avgs, exp_avg_sqs, steps, lr=lr, betas=betas, eps=eps,
                         weight_decay=wd)
            return
        # folded: ε/√(1-β₂ᵏ) turns torch's m̂/(√v̂+ε') into the packages' η_k·m/(√v+ε); k may differ
        # between tensors (skipped grads), so run the kernel once per distinct k, then decay after.
        by_k: dict[int, list[int]] = defaultdict(list)
        for i, s in enumerate(steps):
            by_k[int(s) + 1].append(i)
        for k, idx in by_k.items():
            pick = lambda xs, idx=idx: [xs[i] for i in idx]  # noqa: E731
            _plain_adamw(pick(params), pick(grads), pick(exp_avgs), pick(exp_avg_sqs), pick(steps), lr=lr,
                         betas=betas, eps=eps / math.sqrt(1 - betas[1] ** k), weight_decay=0.0)
        if wd:
            torch._foreach_mul_(params, 1 - lr * wd)

    # --- projected groups -----------------------------------------------------------------------
    def _rank(self, p: torch.Tensor, group: dict[str, Any]) -> int:
        r, (m, n) = int(group["rank"]), p.shape
        if r > min(m, n) and (m, n, r) not in self._clamp_logged:
            self._clamp_logged.add((m, n, r))
            log.info("%s: rank %d clamped to min(m, n) = %d for a %dx%d matrix", type(self).__name__, r,
                     min(m, n), m, n)
        return min(r, m, n)

    def _param_index(self, p: torch.Tensor) -> int:
        """1-based position of ``p`` in the optimizer's parameter order (seeds derive from it)."""
        flat = (q for g in self.param_groups for q in g["params"])
        return next(i for i, q in enumerate(flat, start=1) if q is p)

    def _needs_refresh(self, st: dict[str, Any], group: dict[str, Any]) -> bool:
        """Refresh when there is no basis yet or the counter (before increment) is a multiple of T."""
        return "projector" not in st or int(st["step"]) % int(group["update_proj_gap"]) == 0

    def _basis(self, p: torch.Tensor, st: dict[str, Any]) -> torch.Tensor:
        """The current ``(min(m, n), r)`` basis of ``p``."""
        return st["projector"]

    def _refresh(self, p: torch.Tensor, st: dict[str, Any], group: dict[str, Any]) -> bool:
        """New projector into ``st``; False when this parameter's update must be skipped."""
        counter = int(st["step"])
        if group.get("random_after") is not None and counter >= int(group["random_after"]):
            seed = mix_seed(int(group["random_seed"]), self._param_index(p), counter)
            st["projector"] = random_basis(min(p.shape), self._rank(p, group), seed, p.device).to(p.dtype)
            return True  # GoLore: the draw needs no gradient, so a non-finite one is the loop's business
        basis, status = refresh_basis(
            p.grad, self._rank(p, group), st.get("projector"), group["projector"],
            canonical_signs=group["canonical_signs"], fp64=group["projector_fp64"],
            name=f"{tuple(p.shape)} at step {int(st['step'])}",
        )
        self.nonfinite_skips += status == "nonfinite_grad"
        self.refresh_failures += status == "failed"
        if status == "nonfinite_grad" or basis is None:
            return False  # no usable projector for a finite step: skip, retry the refresh next step
        st["projector"] = basis.to(p.dtype)  # like the packages: the projector has the parameter's dtype
        return True

    def _projected_step(self, group: dict[str, Any]) -> None:
        items: list[tuple[torch.Tensor, dict[str, Any], torch.Tensor]] = []
        for p in group["params"]:
            if p.grad is None:
                continue  # skipped: the counter does not advance (as in the packages)
            st = self.state[p]
            if "step" not in st:
                st["step"] = torch.zeros((), dtype=torch.float32)
            if self._needs_refresh(st, group) and not self._refresh(p, st, group):
                continue
            compact = project(p.grad, self._basis(p, st))
            if "exp_avg" not in st:
                st["exp_avg"] = torch.zeros_like(compact)
                st["exp_avg_sq"] = torch.zeros_like(compact)
            items.append((p, st, compact))
        if not items:
            return
        beta1, beta2 = group["betas"]
        exp_avgs = [st["exp_avg"] for _, st, _ in items]
        exp_avg_sqs = [st["exp_avg_sq"] for _, st, _ in items]
        compacts = [c for _, _, c in items]
        torch._foreach_add_([st["step"] for _, st, _ in items], 1)
        torch._foreach_lerp_(exp_avgs, compacts, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, compacts, compacts, 1 - beta2)
        counts = [int(st["step"]) for _, st, _ in items]
        normalized, step_sizes = self._normalized(exp_avgs, exp_avg_sqs, counts, group)
        decay = 1 - group["lr"] * group["weight_decay"]
        for (p, st, compact), n_k, size in zip(items, normalized, step_sizes):
            if decay != 1 and group["adam_form"] == "torch":
                p.mul_(decay)  # torch.optim.AdamW decays before the step
            self._apply_update(p, st, compact, n_k, size, group)
            if decay != 1 and group["adam_form"] == "folded":
                p.mul_(decay)  # the packages decay after the step

    @staticmethod
    def _normalized(exp_avgs: list[torch.Tensor], exp_avg_sqs: list[torch.Tensor], steps: list[int],
                    group: dict[str, Any]) -> tuple[list[torch.Tensor], list[float]]:
        """Compact Adam direction N and the step size that multiplies it, in the group's Adam form."""
        lr, eps, (beta1, beta2) = group["lr"], group["eps"], group["betas"]
        denom = torch._foreach_sqrt(exp_avg_sqs)
        bc1 = [1 - beta1**k for k in steps]
        bc2_sqrt = [math.sqrt(1 - beta2**k) for k in steps]
        if group["adam_form"] == "torch":  # N = m̂/(√v̂+ε) itself, step size lr (module docstring)
            torch._foreach_div_(denom, bc2_sqrt)
            torch._foreach_add_(denom, eps)
            torch._foreach_mul_(denom, bc1)  # m̂/(√v̂+ε) = m/((√v̂+ε)·(1-β₁ᵏ))
            return torch._foreach_div(exp_avgs, denom), [lr] * len(steps)
        sizes = [lr * b2 / b1 for b1, b2 in zip(bc1, bc2_sqrt)]  # folded: the packages' η_k
        torch._foreach_add_(denom, eps)
        return torch._foreach_div(exp_avgs, denom), sizes

    def _apply_update(self, p: torch.Tensor, st: dict[str, Any], compact: torch.Tensor,
                      direction: torch.Tensor, step_size: float, group: dict[str, Any]) -> None:
        """W ← W − step_size·scale·B(N), as one in-place GEMM (no m×n temporary)."""
        basis, alpha = self._basis(p, st), -step_size * group["scale"]
        if projection_side(p.shape) == "right":
            p.addmm_(direction, basis.t(), alpha=alpha)
        else:
            p.addmm_(basis, direction, alpha=alpha)
