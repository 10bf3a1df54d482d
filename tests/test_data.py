"""Batches: deterministic order, rank sharding, pack vs pad layouts, local file sources."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rankscope.config import DataConfig, RunConfig, TrainConfig
from rankscope.data.batches import (
    IGNORE,
    SequenceSet,
    TrainBatches,
    eval_batch,
    load_sequences,
    train_batches,
)
from rankscope.data.tokenizer import load_tokenizer
from rankscope.errors import UserError


def _seqs(n_tokens=10_000, t=8):
    return SequenceSet(np.arange(n_tokens, dtype=np.int32), None, t)


def test_packed_labels_are_inputs_shifted_by_one():
    inputs, labels = _seqs().get(np.array([3, 5]))
    assert torch.equal(inputs[:, 1:], labels[:, :-1])
    assert inputs[0, 0].item() == 24 and labels[0, -1].item() == 32


def test_order_is_deterministic_and_seed_dependent():
    a = TrainBatches(_seqs(), seed=0, micro_batch=4, grad_accum=2, world=1, rank=0)
    b = TrainBatches(_seqs(), seed=0, micro_batch=4, grad_accum=2, world=1, rank=0)
    c = TrainBatches(_seqs(), seed=1, micro_batch=4, grad_accum=2, world=1, rank=0)
    assert torch.equal(a.get(7, 1)[0], b.get(7, 1)[0])
    assert not torch.equal(a.get(7, 1)[0], c.get(7, 1)[0])


def test_ranks_partition_the_global_batch_like_accumulation():
    """World 2 × accum 1 sees exactly the micro-batches of world 1 × accum 2, step by step."""
    single = TrainBatches(_seqs(), 0, 4, 2, 1, 0)
    ranks = [TrainBatches(_seqs(), 0, 4, 1, 2, r) for r in range(2)]
    for step in range(5):
        for micro in range(2):
            torch.testing.assert_close(single.get(step, micro)[0], ranks[micro].get(step, 0)[0])


def test_epochs_reshuffle_and_cover_everything():
    seqs = _seqs(n_tokens=8 * 16 + 1)  # exactly 16 sequences
    batches = TrainBatches(seqs, 0, 4, 1, 1, 0)
    first = torch.cat([batches.get(s, 0)[0][:, 0] for s in range(4)])
    second = torch.cat([batches.get(s, 0)[0][:, 0] for s in range(4, 8)])
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(0, 128, 8))
    assert first.tolist() != second.tolist()


def test_pad_mode_masks_pads():
    padded = np.full((2, 9), -1, dtype=np.int32)
    padded[0, :4] = [5, 6, 7, 0]
    padded[1, :] = np.arange(9)
    inputs, labels = SequenceSet(None, padded, 8).get(np.array([0, 1]))
    assert labels[0].tolist() == [6, 7, 0] + [IGNORE] * 5
    assert (inputs >= 0).all() and labels[1].tolist() == list(range(1, 9))


def _cfg(tmp_path, **data):
    return RunConfig(out_dir=str(tmp_path), model="smoke", data=DataConfig(seq_len=32, **data),
                     train=TrainConfig(micro_batch_size=2))


def test_local_sources(tmp_path):
    text = "\n\n".join(f"Paragraph {i} talks about rivers and the sea." for i in range(200))
    (tmp_path / "a.txt").write_text(text)
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"body": t}) for t in text.split("\n\n")))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": text.split("\n\n")}), tmp_path / "a.parquet")
    tok = load_tokenizer()
    for name, extra in (("a.txt", {}), ("a.jsonl", {"text_column": "body"}), ("a.parquet", {})):
        cfg = _cfg(tmp_path, source="files", train_files=(str(tmp_path / name),), val_files=(str(tmp_path / name),), **extra)
        batches = train_batches(cfg, tok)
        ids, labels = batches.get(0, 0)
        assert ids.shape == (2, 32) and "rivers" in tok.decode(ids[0].tolist() + labels[0, -1:].tolist())
        assert eval_batch(cfg, 64).n_tokens >= 64


def test_pad_mode_on_embedded_corpus_counts_only_real_tokens(tmp_path, capsys):
    cfg = _cfg(tmp_path, packing="pad")
    seqs = load_sequences(cfg.data, "validation", load_tokenizer())
    assert len(seqs) == 56  # one sequence per validation document
    batch = eval_batch(cfg, 10_000)  # 56 documents × 32 positions cannot reach the budget
    assert batch.n_tokens == 56 * 32 == int((batch.labels != IGNORE).sum())
    assert f"warning: --eval-tokens 10000 asks for more validation tokens than the embedded 'validation' split " \
           f"holds ({56 * 32})" in capsys.readouterr().err


def test_too_small_split_is_a_clear_error(tmp_path):
    (tmp_path / "tiny.txt").write_text("hi")
    cfg = _cfg(tmp_path, source="files", train_files=(str(tmp_path / "tiny.txt"),))
    with pytest.raises(UserError, match="fewer than 33 tokens"):
        train_batches(cfg, load_tokenizer())
