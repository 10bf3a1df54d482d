"""The one run abstraction every command reads through: steps, a step's model, config, tokenizer, labels.

Two implementations: :class:`~rankscope.runs.native.RankscopeRun` (a folder ``rankscope train`` wrote) and
:class:`~rankscope.runs.external.ExternalRun` (Hugging Face checkpoints written by other code). Commands
never ask which one they hold; they use the attributes and methods below.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rankscope.config import DataConfig
from rankscope.errors import UserError
from rankscope.models.llama import LlamaLM, ModelConfig


@dataclass
class Run:
    """Labels + checkpoints of one training run; subclasses say how a step's model is loaded."""

    path: Path  # the folder (or spec file) the user named: identifies the run in caches
    name: str  # run label in every table
    method: str  # method label (a registered method for rankscope runs; the user's label for external ones)
    scale: str  # model size label: rankscope runs are compared within one scale
    seed: int  # training seed label (rankscope runs: the init seed)
    steps: list[int]  # checkpoint steps, ascending
    data: DataConfig  # where held-out text comes from, and the tokenizer (data.tokenizer)
    kind: str = "rankscope"  # rankscope | external (shown in messages and the study's run table)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    data_seed: int | None = None  # rankscope runs: the data seed (None: equal to seed)

    # --- what subclasses provide -------------------------------------------------------------------------
    def model_config(self) -> ModelConfig:
        raise NotImplementedError

    @property
    def has_dense_form(self) -> bool:
        """Whether the model is one plain LLaMA (merged weights); False for CoLA (analysed natively)."""
        raise NotImplementedError

    def checkpoint_dir(self, step: int) -> Path:
        raise NotImplementedError

    def _load(self, step: int, device: str | torch.device) -> LlamaLM:
        raise NotImplementedError

    def init_fingerprint(self) -> str | None:
        """Hash of the initial weights when the trainer recorded one (cross-run interpolation needs it)."""
        return None

    def run_config(self):
        """The RunConfig a rankscope run was trained with (None for external runs)."""
        return None

    # --- shared behaviour --------------------------------------------------------------------------------
    def resolve_step(self, step: int | None) -> int:
        if not self.steps:
            raise UserError(f"run {self.path} has no complete checkpoint")
        if step is None:
            return self.steps[-1]
        if step not in self.steps:
            raise UserError(f"run {self.path} has no checkpoint at step {step}; available: {self.steps}")
        return step

    def load_model(self, step: int | None = None, device: str | torch.device = "cpu") -> LlamaLM:
        """The step's model (default: the last) in eval mode: the method's own layers for rankscope runs,
        a merged dense LLaMA (or CoLA's layers) for external ones."""
        return self._load(self.resolve_step(step), device).eval()

    def tokenizer(self):
        from rankscope.data.tokenizer import load_tokenizer

        return load_tokenizer(self.data.tokenizer)

    @property
    def results_dir(self) -> Path:
        """Where per-run result tables go: ``<run>/results`` (beside a spec file for runs given as one)."""
        p = Path(self.path)
        return p / "results" if not p.is_file() else p.with_name(f"{p.stem}_results")

    def label(self) -> str:
        return f"{self.name} ({self.kind} run {self.path})"
