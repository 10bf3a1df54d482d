"""The Method protocol: everything a training method may customise, and nothing else.

A method is one file under ``rankscope/methods/`` that subclasses :class:`Method`, declares a frozen
``Config`` dataclass (derived from :class:`MethodConfig`) and registers itself with ``@register``.
The training loop only ever calls the hooks below, so it has no method-specific branches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar

import torch
from torch import nn
from torch.optim import Optimizer


@dataclass(frozen=True)
class Schedule:
    """What a method needs to know about the run's length (for LR schedules and reset cycles)."""

    total_steps: int
    warmup_steps: int
    min_lr_ratio: float = 0.1
    kind: str = "cosine"  # cosine | wsd (rankscope/methods/schedules.py)
    decay_steps: int = 0  # wsd: length of the final decay (0: stable to the end)
    decay_shape: str = "linear"  # wsd: linear | cosine | 1-sqrt

    def __post_init__(self) -> None:
        from rankscope.methods.schedules import check_schedule

        check_schedule(self.kind, self.decay_shape)


def cosine_with_warmup(step: int, sched: Schedule) -> float:
    """λ(t) = t/W for t < W, else min + (1-min)·½(1+cos(π(t-W)/(N-W))). Update k uses λ(k-1)."""
    w, n, lo = sched.warmup_steps, sched.total_steps, sched.min_lr_ratio
    if step < w:
        return step / w
    if n <= w:
        return 1.0
    progress = min(max((step - w) / (n - w), 0.0), 1.0)
    return lo + (1.0 - lo) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class MethodConfig:
    """Hyperparameters shared by every method; each method's Config extends this.

    ``PRESET_DEFAULTS`` maps a model preset name to the study's values for that size (methods.md §2.8);
    ``FAITHFUL`` holds the released-code values that ``faithful_release`` switches on (methods.md §3).
    """

    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 0.0  # decoupled weight decay
    grad_clip: float | None = None  # global L2 clip over trainable params (None: off)
    adam_eps: float = 1e-8
    beta1: float = 0.9
    beta2: float = 0.999

    PRESET_DEFAULTS: ClassVar[dict[str, dict[str, Any]]] = {}
    FAITHFUL: ClassVar[dict[str, Any]] = {}

    @classmethod
    def for_preset(cls, preset: str, faithful_release: bool = False, **overrides: Any) -> MethodConfig:
        """Study defaults for ``preset``, then the release quirks if asked, then user overrides."""
        values: dict[str, Any] = dict(cls.PRESET_DEFAULTS.get(preset, {}))
        if faithful_release:
            values.update(cls.FAITHFUL)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(
                f"unknown option(s) {unknown} for method config {cls.__qualname__}; "
                f"valid options: {', '.join(sorted(known))}"
            )
        values.update(overrides)
        return replace(cls(), **values)


class Method:
    """Base class of a training method. Subclasses override only what they change."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    #: True when swapped layers have ``dense_weight()`` (False for CoLA: SiLU between its factors).
    has_dense_form: ClassVar[bool] = True
    #: False when the optimizer or layers need whole (unsharded) matrices, e.g. GaLore's projector.
    supports_fsdp: ClassVar[bool] = True

    def __init__(self, config: MethodConfig, schedule: Schedule) -> None:
        self.config = config
        self.schedule = schedule

    # --- model -------------------------------------------------------------------------------
    def prepare(self, model: nn.Module) -> nn.Module:
        """Swap target layers before training (and before any DDP wrap). Default: unchanged."""
        return model

    # --- optimisation ------------------------------------------------------------------------
    def param_groups(self, model: nn.Module) -> list[dict]:
        """Trainable parameters as optimizer groups; each group gets ``base_lr`` = peak LR."""
        params = [p for p in model.parameters() if p.requires_grad]
        return [{"params": params, "lr": self.config.lr, "base_lr": self.config.lr}]

    def build_optimizer(self, model: nn.Module) -> Optimizer:
        """torch AdamW (fused where the device supports it, else foreach)."""
        return make_adamw(self.param_groups(model), self.config)

    def lr_factor(self, step: int) -> float:
        """LR multiplier for the update that follows ``step`` completed updates (cosine or WSD)."""
        from rankscope.methods.schedules import lr_factor

        return lr_factor(step, self.schedule)

    def on_step_end(self, step: int, model: nn.Module, optimizer: Optimizer) -> dict[str, float]:
        """Periodic method work after update number ``step`` (1-based). Returns values to log."""
        return {}

    # --- accounting --------------------------------------------------------------------------
    @classmethod
    def theory_counts(cls, model_cfg, config: MethodConfig) -> dict[str, int]:
        """Closed-form element counts (methods.md §2.7): params, trainable, optimizer state.

        Default: dense AdamW on every parameter (2 moments per trainable element).
        """
        from rankscope.models.llama import dense_param_count

        n = dense_param_count(model_cfg)
        return {"params": n, "trainable": n, "state": 2 * n, "buffers": 0}

    # --- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Method-own state (counters etc.) as tensors only, for exact resume."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass


def make_adamw(groups: list[dict], cfg: MethodConfig) -> Optimizer:
    """torch.optim.AdamW with the fastest implementation the parameters' device supports."""
    params = [p for g in groups for p in g["params"]]
    device_type = params[0].device.type if params else "cpu"
    kwargs = dict(betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
    # Fused AdamW exists for CPU and CUDA in torch>=2.4; foreach is the fallback elsewhere.
    fused_ok = device_type in ("cpu", "cuda") and all(p.dtype.is_floating_point for p in params)
    return torch.optim.AdamW(groups, **kwargs, **({"fused": True} if fused_ok else {"foreach": True}))
