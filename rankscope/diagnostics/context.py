"""What a diagnostic gets to look at: run handles, the fixed evaluation batch, and loss helpers.

Every model handed out here is a fresh fp32 copy in eval mode, so diagnostics can never corrupt a run or
each other. Dense weights come from ``rankscope.methods.dense.materialize`` (merged W for ReLoRA/SLTrain);
CoLA has no dense form and is analysed on its native factors (``space="native"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rankscope.diagnostics.table import Row
from rankscope.models.llama import LlamaLM, lm_loss_sums


@dataclass(frozen=True)
class EvalBatch:
    """A fixed token budget from the held-out split: identical for every method, checkpoint and point."""

    input_ids: torch.Tensor  # [B, T] int64
    labels: torch.Tensor  # [B, T] int64, -100 where not counted (pads)
    micro_batch: int = 16  # sequences per forward pass

    @cached_property
    def n_tokens(self) -> int:
        return int((self.labels != -100).sum())

    def chunks(self):
        for i in range(0, self.input_ids.shape[0], self.micro_batch):
            yield self.input_ids[i : i + self.micro_batch], self.labels[i : i + self.micro_batch]


@torch.inference_mode()
def mean_loss(model: nn.Module, batch: EvalBatch, device: torch.device | str = "cpu") -> float:
    """Token-weighted mean NLL over the batch (Σ NLL ÷ non-pad tokens), fp32."""
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    for ids, labels in batch.chunks():
        nll, n = lm_loss_sums(model(ids.to(device)), labels.to(device))
        total += nll.double()
        count += int(n)
    return float(total) / max(count, 1)


def per_chunk_losses(model: nn.Module, batch: EvalBatch, device: torch.device | str = "cpu") -> list[tuple[float, int]]:
    """(Σ NLL, tokens) per micro-batch: lets callers report a standard error across batches."""
    out = []
    with torch.inference_mode():
        for ids, labels in batch.chunks():
            nll, n = lm_loss_sums(model(ids.to(device)), labels.to(device))
            out.append((float(nll), int(n)))
    return out


@dataclass
class RunHandle:
    """One run (rankscope's or external, see rankscope.runs). Loads checkpoints lazily and caches the dense
    state of the latest request."""

    path: Path
    name: str
    method: str
    scale: str
    seed: int  # the init seed
    steps: list[int]
    run: Any = field(default=None, repr=False)  # the rankscope.runs.Run behind the handle
    data_seed: int | None = None  # None: equal to seed (one seed set both)
    init_fingerprint: str = ""  # meta.json's hash of the initial weights ("" when not recorded)
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False)
    # Small results worth keeping for the whole analyze call (per-sequence losses of a checkpoint on a
    # token budget: every IMIB pair and consecutive-checkpoint line ends at one of them).
    memo: dict[Any, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, path: Any, options: Any = None) -> RunHandle:
        """A handle on a run folder, an external checkpoint series, or an already opened ``Run``."""
        from rankscope.runs import open_run

        run = open_run(path, options)
        return cls(run.path, run.name, run.method, run.scale, run.seed, list(run.steps), run,
                   getattr(run, "data_seed", None), run.init_fingerprint() or "")

    @property
    def init_seed(self) -> int:
        return self.seed

    @property
    def order_seed(self) -> int:
        return self.seed if self.data_seed is None else self.data_seed

    def is_sibling_of(self, other: RunHandle) -> bool:
        """Same method and scale from the same start (init seed), another data order."""
        return (self.method == other.method and self.scale == other.scale and self.init_seed == other.init_seed
                and self.order_seed != other.order_seed)

    def is_paired_with(self, other: RunHandle) -> bool:
        """Another method of the same scale with the same init and data seeds (a paired comparison)."""
        return (self.method != other.method and self.scale == other.scale and self.init_seed == other.init_seed
                and self.order_seed == other.order_seed)

    @cached_property
    def has_dense_form(self) -> bool:
        if self.run is None:  # a handle over in-memory models (no Run behind it): the method decides
            from rankscope.methods.registry import get_method

            return get_method(self.method).has_dense_form
        return self.run.has_dense_form

    def checkpoint_dir(self, step: int) -> Path:
        return self.run.checkpoint_dir(step)

    def native_model(self, step: int) -> LlamaLM:
        """The method's own model (swapped layers), fp32, eval mode: a fresh copy each call."""
        return self.run.load_model(step).float().eval()

    def dense_state(self, step: int) -> dict[str, torch.Tensor] | None:
        """Plain-LLaMA fp32 state dict (merged weights), or None for methods without a dense form."""
        if not self.has_dense_form:
            return None
        key = ("dense", step)
        if key not in self._cache:
            from rankscope.methods.dense import materialize

            self._cache.clear()  # keep at most one checkpoint in memory
            state = materialize(self.native_model(step))
            self._cache[key] = {k: v.float() for k, v in state.items()}
        return self._cache[key]

    def dense_model(self, step: int) -> LlamaLM:
        """A plain LlamaLM with the merged weights (fresh copy). Raises NoDenseForm for CoLA."""
        from rankscope.methods.dense import NoDenseForm

        state = self.dense_state(step)
        if state is None:
            raise NoDenseForm(f"run {self.name!r} ({self.method}) has no dense form")
        model = LlamaLM(self.run.model_config())
        model.load_state_dict(state, strict=True)
        return model.float().eval()

    def analysis_model(self, step: int) -> tuple[LlamaLM, str]:
        """Dense model when one exists (``space="dense"``), otherwise the native model (``"native"``)."""
        if self.has_dense_form:
            return self.dense_model(step), "dense"
        return self.native_model(step), "native"


@dataclass
class AnalysisContext:
    run: RunHandle
    step: int
    batch: EvalBatch
    mode: str = "default"  # default | faithful
    device: str = "cpu"
    step_b: int | None = None  # consecutive: the later checkpoint
    reference: RunHandle | None = None  # reference: the full-rank run
    other: RunHandle | None = None  # pairwise: the second run
    seed: int = 0  # diagnostic seed (directions), independent of the training seed
    other_step: int | None = None  # step of the reference/other checkpoint when it is not ``step`` (parity)

    @property
    def null(self) -> str:
        """ "sibling" when the second run of this task is another run of the same method, else ""."""
        other = self.other if self.other is not None else self.reference
        if other is None or other is self.run or getattr(other, "name", None) == self.run.name:
            return ""
        return "sibling" if getattr(other, "method", None) == self.run.method else ""

    @property
    def paired_step(self) -> int:
        """The reference's or other run's checkpoint: the same step, unless pairing models at parity."""
        return self.step if self.other_step is None else self.other_step

    def row(self, metric: str, value: float, **kw: Any) -> Row:
        """A Row with run/method/step/scale/seed/mode filled in from the context."""
        base = dict(
            run=self.run.name, method=self.run.method, step=self.step, scale=self.run.scale,
            seed=self.run.seed, init_seed=getattr(self.run, "init_seed", self.run.seed),
            data_seed=getattr(self.run, "order_seed", self.run.seed), null=self.null,
            mode=self.mode, n_tokens=self.batch.n_tokens,
            step_b=self.step_b if self.other_step is None else self.other_step,
        )
        base.update(kw)
        return Row(metric=metric, value=float(value), **base)
