"""Test environment: offline hub, private caches, and small shared fixtures."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

_CACHE = Path(tempfile.gettempdir()) / "rankscope-test-cache"
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HOME", str(_CACHE / "hf_home"))
# Tokenized corpora are cached across tests (and test sessions) keyed by corpus + tokenizer hash.
os.environ.setdefault("RANKSCOPE_CACHE", str(_CACHE / "rankscope"))


def smoke_config(tmp_path: Path, name: str = "run", method: str = "full_rank", steps: int = 6, **train_kw):
    """A seconds-scale RunConfig on the smoke preset and embedded corpus."""
    from rankscope.config import DataConfig, RunConfig, TrainConfig

    train = dict(steps=steps, micro_batch_size=2, eval_every=0, eval_tokens=1024, save_every=0, log_every=1,
                 warmup_steps=1)
    train.update(train_kw)
    return RunConfig(name=name, out_dir=str(tmp_path), model="smoke", method=method,
                     data=DataConfig(seq_len=64), train=TrainConfig(**train))


@pytest.fixture
def make_smoke_config(tmp_path):
    def factory(name: str = "run", method: str = "full_rank", steps: int = 6, **train_kw):
        return smoke_config(tmp_path, name, method, steps, **train_kw)

    return factory


@pytest.fixture
def one_thread():
    """Tiny matrices gain nothing from threads, and on a shared 2-core box 2 threads stall (performance.md §8)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def folder_snapshot():
    """``folder_snapshot(path)`` -> {relative path: size:sha256}; see tests/helpers_fs.py."""
    from helpers_fs import snapshot

    return snapshot
