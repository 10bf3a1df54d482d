"""ReLoRA (Lialin et al., ICLR 2024): LoRA on a frozen W, merged and restarted every T_reset updates
(methods.md §2.6, defects Q1 and Q9).

Design choices:
* Merges happen in ``on_step_end`` after update k when k mod T_reset == 1 and k > 1, i.e. right after the
  update that ran at LR 0 (the jagged schedule restarts there): W ← W + s·BA in fp32, A redrawn, B ← 0.
* Randomness of merges (A redraw, ``prune_random`` masks) comes from CPU generators seeded by
  (method seed, merge index). The method seed is drawn from the loop-seeded global RNG in ``prepare``
  and saved in ``state_dict``, so every DDP rank draws the same A and masks (replicas stay identical)
  and a resumed run repeats them exactly, independent of per-rank global RNG state.
* Optimizer-state reset at a merge touches exp_avg / exp_avg_sq of A and B only, never ``step``.
  ``reset``: prune_random(p) | prune_magnitude(p) | zero | keep. ``reset_flag_ignored=True`` (Q9) is the
  release's fixed prune_random(0.99); asking for anything else with it is a contradiction and an error.
* N (total updates) must be a multiple of T_reset so the last cycle is whole; a run no longer than one
  cycle (N ≤ T_reset, e.g. a 2-step smoke run) has no merge and is also accepted.
* smoke/tiny: rank 8/64, T_reset 100, re-warm 10, alpha chosen to keep s = alpha/r = 0.25 (60m value).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim import Optimizer

from rankscope.methods.base import Method, MethodConfig, Schedule
from rankscope.methods.layers import ReLoRALinear, seeded_generator, swap_targets
from rankscope.methods.registry import register
from rankscope.methods.schedules import envelope

RESETS = ("prune_random", "prune_magnitude", "zero", "keep")
REWARM_TARGETS = ("rewarm_end", "release")
MOMENTS = ("exp_avg", "exp_avg_sq")


def jagged_cosine(t: int, sched: Schedule, reset_every: int, rewarm: int,
                  target: str = "rewarm_end") -> float:
    """LR factor for the update after t completed updates (methods.md §2.6).

    t < W₀: t/W₀. In a re-warm (t ≥ R, t mod R < w): linear ramp to the envelope at the end of the
    re-warm (``rewarm_end``) or at the cycle start ⌊t/R⌋R/(N−W₀) (``release``). Else the cosine envelope.
    With a ``wsd`` schedule the envelope is warmup-stable-decay instead of cosine: restarts go on through
    the stable phase and the cooldown alike, each re-warm ramping to the (decaying) envelope.
    """
    w0, n, lo, r = sched.warmup_steps, sched.total_steps, sched.min_lr_ratio, reset_every

    def env(p: float) -> float:
        p = min(max(p, 0.0), 1.0)
        return lo + (1.0 - lo) * 0.5 * (1.0 + math.cos(math.pi * p))

    if t < w0:
        return t / w0
    if sched.kind == "wsd":  # restarts ride the WSD envelope; the cooldown decays the envelope (docs/study.md)
        if t >= r and t % r < rewarm:
            start = (t // r) * r
            return (t % r) / rewarm * envelope(start + rewarm if target == "rewarm_end" else start, sched)
        return envelope(t, sched)
    span = max(1, n - w0)
    if t >= r and t % r < rewarm:
        start = (t // r) * r
        p = (start + rewarm - w0) / span if target == "rewarm_end" else start / span
        return (t % r) / rewarm * env(p)
    return env((t - w0) / span)


def prune_(t: torch.Tensor, mode: str, p: float, generator: torch.Generator) -> None:
    """Zero moment entries in place: each with probability p (random) or the ⌊p·numel⌋ smallest |·|."""
    if mode == "zero":
        t.zero_()
    elif mode == "prune_random":
        keep = torch.rand(t.shape, generator=generator) >= p
        t.mul_(keep.to(device=t.device, dtype=t.dtype))
    elif mode == "prune_magnitude":
        k = math.floor(p * t.numel())
        if k > 0:
            idx = torch.topk(t.abs().flatten(), k, largest=False, sorted=False).indices
            t.view(-1)[idx] = 0
    elif mode != "keep":
        raise ValueError(f"unknown reset {mode!r}; choose one of {RESETS}")


@register("relora")
class ReLoRA(Method):
    supports_fsdp = False  # needs whole matrices (projector / merge / custom sparse autograd)
    @dataclass(frozen=True)
    class Config(MethodConfig):
        rank: int = 128  # r of A (r×n) and B (m×r)
        alpha: float = 32.0  # lora alpha: scale s = alpha / rank
        dropout: float = 0.1  # on the adapter input, training only
        reset_every: int = 1000  # T_reset: merge after updates T+1, 2T+1, ...
        rewarm: int = 100  # re-warm length w after each merge
        rewarm_target: str = "rewarm_end"  # rewarm_end | release (ramp to the envelope at the cycle start)
        reset: str = "prune_random"  # A/B moments at a merge: prune_random|prune_magnitude|zero|keep
        reset_prune: float = 0.99  # p of the prune_* resets
        zero_init_A: bool = False  # Q1: the release zeroes A too (no factor gradient until the first merge)
        reset_flag_ignored: bool = False  # Q9: the release always prunes at random with p 0.99
        lr: float = 1e-3
        grad_clip: float | None = 1.0

        def __post_init__(self) -> None:
            if self.rank < 1:
                raise ValueError(f"rank must be >= 1, got {self.rank}")
            if self.reset not in RESETS:
                raise ValueError(f"reset must be one of {RESETS}, got {self.reset!r}")
            if self.rewarm_target not in REWARM_TARGETS:
                raise ValueError(f"rewarm_target must be one of {REWARM_TARGETS}, got {self.rewarm_target!r}")
            if self.reset_every < 2:
                raise ValueError(f"reset_every must be >= 2 (merges follow updates k ≡ 1 mod T), got "
                                 f"{self.reset_every}")
            if not 0 < self.rewarm < self.reset_every:
                raise ValueError(f"rewarm must satisfy 1 <= rewarm < reset_every={self.reset_every}, "
                                 f"got {self.rewarm}")
            if not 0.0 <= self.reset_prune <= 1.0:
                raise ValueError(f"reset_prune must be in [0, 1], got {self.reset_prune}")
            if self.reset in ("zero", "keep") and self.reset_prune != 0.99:
                raise ValueError(f"reset_prune={self.reset_prune} only applies to prune_* resets, "
                                 f"not reset={self.reset!r}")
            if self.reset_flag_ignored and (self.reset, self.reset_prune) != ("prune_random", 0.99):
                raise ValueError("reset_flag_ignored=True is the release's fixed prune_random(0.99); it "
                                 f"contradicts reset={self.reset!r}, reset_prune={self.reset_prune}")

    Config.PRESET_DEFAULTS = {
        "smoke": {"rank": 8, "alpha": 2.0, "reset_every": 100, "rewarm": 10, "lr": 4e-3},  # lr: smoke sweep
        "tiny": {"rank": 64, "alpha": 16.0, "reset_every": 100, "rewarm": 10},
        "60m": {"rank": 128, "reset_every": 1000, "rewarm": 100, "lr": 1e-3, "grad_clip": 1.0},
        "130m": {"rank": 256, "reset_every": 5000, "rewarm": 100, "lr": 1e-3, "grad_clip": 1.0},
        "350m": {"rank": 256, "reset_every": 5000, "rewarm": 200, "lr": 5e-4, "grad_clip": None},
        "1b": {"rank": 512, "reset_every": 5000, "rewarm": 200, "lr": 5e-4, "grad_clip": None},  # guessed
    }
    Config.FAITHFUL = {"zero_init_A": True, "reset_flag_ignored": True, "reset": "prune_random",
                       "reset_prune": 0.99, "rewarm_target": "release"}

    def __init__(self, config: MethodConfig, schedule: Schedule) -> None:
        super().__init__(config, schedule)
        n, r = schedule.total_steps, config.reset_every
        if n > r and n % r and schedule.kind != "wsd":  # a WSD cooldown may end mid-cycle (adapters unmerged)
            lo, hi = (n // r) * r, (n // r + 1) * r
            raise ValueError(
                f"ReLoRA needs total steps N to be a multiple of reset_every={r} (got N={n}): use N={lo} or "
                f"{hi}, or a reset_every dividing {n} (divisors: {_divisors(n)})"
            )
        self.merges = 0
        self.seed = 0

    def prepare(self, model: nn.Module) -> nn.Module:
        cfg: ReLoRA.Config = self.config  # type: ignore[assignment]
        gen = seeded_generator()
        self.seed = int(torch.randint(0, 2**62, (1,), generator=gen).item())

        def build(_: str, linear: nn.Linear) -> nn.Module:
            return ReLoRALinear(linear.weight, cfg.rank, cfg.alpha, cfg.dropout, cfg.zero_init_A, gen)

        swap_targets(model, build)
        return model

    def lr_factor(self, step: int) -> float:
        cfg: ReLoRA.Config = self.config  # type: ignore[assignment]
        return jagged_cosine(step, self.schedule, cfg.reset_every, cfg.rewarm, cfg.rewarm_target)

    def _generator(self, salt: int) -> torch.Generator:
        return torch.Generator().manual_seed((self.seed + 1_000_003 * self.merges + salt) % 2**63)

    @torch.no_grad()
    def on_step_end(self, step: int, model: nn.Module, optimizer: Optimizer) -> dict[str, float]:
        cfg: ReLoRA.Config = self.config  # type: ignore[assignment]
        if step > 1 and step % cfg.reset_every == 1:
            layers = [m for m in model.modules() if isinstance(m, ReLoRALinear)]
            gen_init, gen_prune = self._generator(0), self._generator(1)
            for layer in layers:
                layer.merge_and_reinit(gen_init)
            for layer in layers:
                for p in (layer.lora_A, layer.lora_B):
                    state = optimizer.state.get(p, {})
                    for key in MOMENTS:  # never "step": bias correction keeps running
                        if key in state:
                            prune_(state[key], cfg.reset, cfg.reset_prune, gen_prune)
            self.merges += 1
        return {"relora_merges": float(self.merges)}

    @classmethod
    def theory_counts(cls, model_cfg, config: MethodConfig) -> dict[str, int]:
        """params = dense + Σ r(m+n); trainable = extras + Σ r(m+n); state 2·trainable (methods.md §2.7)."""
        from rankscope.models.llama import dense_param_count, extra_param_count, target_shapes

        lora = sum(config.rank * (m + n) for _, m, n in target_shapes(model_cfg))
        trainable = extra_param_count(model_cfg) + lora
        return {"params": dense_param_count(model_cfg) + lora, "trainable": trainable,
                "state": 2 * trainable, "buffers": 0}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"merges": torch.tensor(self.merges, dtype=torch.int64),
                "seed": torch.tensor(self.seed, dtype=torch.int64)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.merges = int(state["merges"])
        self.seed = int(state["seed"])


def _divisors(n: int) -> list[int]:
    return [d for d in range(2, n + 1) if n % d == 0][:12]
