"""A run folder written by ``rankscope train`` (layout in rankscope/training/checkpoint.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from rankscope.models.llama import LlamaLM, ModelConfig
from rankscope.runs.base import Run


@dataclass
class RankscopeRun(Run):
    @classmethod
    def open(cls, path: str | Path) -> RankscopeRun:
        from rankscope.training.checkpoint import list_checkpoints, read_run_config

        path = Path(path)
        cfg = read_run_config(path)
        run = cls(path, cfg.name, cfg.method, cfg.model, cfg.train.weights_seed, list_checkpoints(path), cfg.data,
                  data_seed=cfg.train.order_seed)
        run.extra["config"] = cfg
        return run

    def run_config(self):
        return self.extra["config"]

    def model_config(self) -> ModelConfig:
        return self.run_config().model_config()

    @cached_property
    def has_dense_form(self) -> bool:  # type: ignore[override]
        return self.run_config().method_class().has_dense_form

    def checkpoint_dir(self, step: int) -> Path:
        from rankscope.training.checkpoint import step_dir

        return step_dir(self.path, step)

    def _load(self, step: int, device: str | torch.device) -> LlamaLM:
        from rankscope.training.checkpoint import load_model

        model, _ = load_model(self.path, step, device=device)
        return model

    def init_fingerprint(self) -> str | None:
        try:
            return json.loads((Path(self.path) / "meta.json").read_text()).get("init_fingerprint")
        except (OSError, ValueError):
            return None
