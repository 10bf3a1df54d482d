"""GaLore (Zhao et al., ICML 2024): dense model, AdamW moments in a refreshed top-r gradient subspace.

Optimizer-only method (methods.md §2.2): ``prepare`` leaves the model alone; the 7 projections of every block
go in a projected group of :class:`~rankscope.optim.galore.GaLoreAdamW`, the extras (embedding, lm_head,
norm gains) in a plain AdamW group with the same peak LR. The projector refresh happens inside the
optimizer step (it needs the current gradient), so there is no ``on_step_end`` work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn
from torch.optim import Optimizer

from rankscope.methods.base import Method, MethodConfig
from rankscope.methods.registry import register
from rankscope.models.llama import TARGET_NAMES
from rankscope.optim.galore import ADAM_FORMS, GaLoreAdamW
from rankscope.optim.projectors import PROJECTORS


def target_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The 7 projections of every block, chosen by type *and* exact name; raises on zero matches.

    Why not the release's "name contains attn or mlp": an exact list cannot silently pick up a new layer.
    """
    found = [
        (name, mod) for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear) and name.rsplit(".", 1)[-1] in TARGET_NAMES
    ]
    if not found:
        raise ValueError(f"no nn.Linear named one of {TARGET_NAMES} in {type(model).__name__}")
    return found


def projected_layout(model: nn.Module, lr: float, options: dict[str, Any]) -> list[dict]:
    """GaLore's group layout (also APOLLO's): the targets in a projected group carrying ``options``, every
    other trainable parameter in a plain AdamW group with the same peak LR."""
    targets = [m.weight for _, m in target_linears(model) if m.weight.requires_grad]
    ids = {id(p) for p in targets}
    extras = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    groups = [{"params": targets, "lr": lr, "base_lr": lr, **options}]
    if extras:
        groups.append({"params": extras, "lr": lr, "base_lr": lr})
    return groups


@register("galore")
class GaLore(Method):
    supports_fsdp = True  # under FSDP2 each matrix is owned whole by one rank (optim/whole_matrix.py)
    @dataclass(frozen=True)
    class Config(MethodConfig):
        lr: float = 0.01  # peak LR of targets *and* extras (effective target LR = lr·scale)
        rank: int = 128  # projection rank r (clamped to min(m, n) per matrix)
        update_proj_gap: int = 200  # T: refresh the projector every T updates of a matrix
        scale: float = 0.25  # α: back-projection scale
        projector: str = "gram_eigh"  # svd (release) | svd_tall | gram_eigh | randomized
        canonical_signs: bool = True  # largest-|entry| of each basis vector positive (release: False)
        projector_fp64: bool = False  # decompose in float64 (for ill-conditioned gradients)
        adam_form: str = "torch"  # torch (eps 1e-8) | folded (the packages' transformers AdamW, eps 1e-6)

        def __post_init__(self) -> None:
            if self.adam_form not in ADAM_FORMS:
                raise ValueError(f"adam_form={self.adam_form!r}; choose one of: {', '.join(ADAM_FORMS)}")
            if self.projector not in PROJECTORS:
                raise ValueError(f"projector={self.projector!r}; choose one of: {', '.join(PROJECTORS)}")
            if self.rank < 1 or self.update_proj_gap < 1:
                raise ValueError("rank and update_proj_gap must be >= 1")

    # methods.md §2.8 (ranks per size); performance.md §9 for the CPU sizes (rank/width as at 60m, gap 50).
    Config.PRESET_DEFAULTS = {
        "smoke": {"rank": 8, "update_proj_gap": 50},
        "tiny": {"rank": 64, "update_proj_gap": 50, "lr": 2.5e-3},  # lr: best of the demo sweep (docs/study.md)
        "60m": {"rank": 128},
        "130m": {"rank": 256},
        "350m": {"rank": 256},
        "1b": {"rank": 512},  # paper table; the official 1B script uses 1024 [not paper-verified]
    }
    Config.FAITHFUL = {"adam_form": "folded", "adam_eps": 1e-6, "projector": "svd", "canonical_signs": False}

    optimizer_class: ClassVar[type[GaLoreAdamW]] = GaLoreAdamW

    def projected_group_options(self) -> dict[str, Any]:
        """Group keys that make a group projected (subclasses add their own)."""
        c = self.config
        return {"rank": c.rank, "update_proj_gap": c.update_proj_gap, "scale": c.scale,
                "projector": c.projector, "canonical_signs": c.canonical_signs, "projector_fp64": c.projector_fp64}

    def param_groups(self, model: nn.Module) -> list[dict]:
        return projected_layout(model, self.config.lr, self.projected_group_options())

    def build_optimizer(self, model: nn.Module) -> Optimizer:
        c = self.config
        return self.optimizer_class(self.param_groups(model), lr=c.lr, betas=(c.beta1, c.beta2),
                                    eps=c.adam_eps, weight_decay=c.weight_decay, adam_form=c.adam_form)

    @classmethod
    def theory_counts(cls, model_cfg, config: MethodConfig) -> dict[str, int]:
        """methods.md §2.7: 2 moments per extra; per target 2r·max(m,n) moments + r·min(m,n) projector."""
        from rankscope.models.llama import dense_param_count, extra_param_count, target_shapes

        n = dense_param_count(model_cfg)
        moments, projectors, per_target = 2 * extra_param_count(model_cfg), 0, cls.extra_state_per_target
        shapes = target_shapes(model_cfg)
        for _, m, k in shapes:
            r = min(config.rank, m, k)
            moments += 2 * r * max(m, k)
            projectors += r * min(m, k)
        state = moments + projectors + per_target * len(shapes)
        return {"params": n, "trainable": n, "state": state, "buffers": 0, "projectors": projectors}

    #: Extra optimizer-state elements per target matrix beyond GaLore's (Fira: its ζ).
    extra_state_per_target: ClassVar[int] = 0
