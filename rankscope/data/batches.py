"""Deterministic, resumable, rank-sharded batches of token sequences.

Order is a pure function of (seed, global position): the sequence at global position q is
``perm_e[q mod n]`` with ``perm_e`` a seeded permutation for epoch ``e = q // n``. An update consumes
``micro_batch × grad_accum × world`` sequences, split so that the global micro-batch ``g = micro·world + rank``
is the same set of sequences whatever the world size; one process with ``grad_accum·world`` micro-batches
therefore sees exactly the batches of ``world`` DDP processes. The data position is ``step × global_batch``,
so resuming needs nothing but the step.

Two layouts (``data.packing``): ``pack`` concatenates documents separated by EOS and cuts windows of
``seq_len + 1`` tokens; ``pad`` puts one document per sequence, truncated or padded, with pad labels -100
(the paper's C4 recipe).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rankscope.config import DataConfig, RunConfig
from rankscope.errors import UserError

IGNORE = -100


#: Seed of the streamed training shuffle buffer (data.source=hf) for runs whose two seeds are equal.
STREAM_SHUFFLE_SEED = 42


def cache_dir() -> Path:
    root = os.environ.get("RANKSCOPE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "rankscope")
    return Path(root)


@dataclass
class SequenceSet:
    """All sequences of one split: ``inputs[i]`` and ``labels[i]`` (already shifted by one)."""

    tokens: np.ndarray | None  # packed stream (pack mode)
    padded: np.ndarray | None  # [N, T+1] padded docs (pad mode), -1 marks padding
    seq_len: int

    def __len__(self) -> int:
        if self.tokens is not None:
            return max((len(self.tokens) - 1) // self.seq_len, 0)
        return len(self.padded)

    def get(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.seq_len
        if self.tokens is not None:
            rows = np.stack([self.tokens[i * t : i * t + t + 1] for i in indices]).astype(np.int64)
            rows = torch.from_numpy(rows)
            return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()
        rows = torch.from_numpy(self.padded[indices].astype(np.int64))
        inputs = rows[:, :-1].clamp_min(0).contiguous()  # pad positions read token 0; their labels are ignored
        labels = rows[:, 1:].contiguous()
        labels[labels < 0] = IGNORE
        return inputs, labels


def _token_cache_key(data: DataConfig, split: str, tok_fingerprint: str) -> str:
    parts = [data.source, data.dataset, data.dataset_config, data.text_column, split, tok_fingerprint,
             data.train_split if split == "train" else data.val_split]
    if data.source == "embedded":
        from rankscope.data.corpus import manifest

        parts.append(manifest().get("sha256", ""))
        if data.holdout_source:  # only when set, so caches of all-source runs keep their keys
            parts.append(f"holdout={data.holdout_source}")
    else:
        for f in data.train_files if split == "train" else data.val_files:
            st = Path(f).stat() if Path(f).exists() else None
            parts.append(f"{Path(f).resolve()}:{st.st_size if st else 0}:{st.st_mtime_ns if st else 0}")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:20]


def _tokenize_documents(data: DataConfig, split: str, tokenizer) -> list[np.ndarray]:
    from rankscope.data.sources import iter_texts

    texts = list(iter_texts(data, split))
    if not texts:
        raise UserError(f"the {split} split of data source {data.source!r} has no documents")
    out = []
    for start in range(0, len(texts), 256):
        for ids in tokenizer.encode_batch(texts[start : start + 256]):
            out.append(np.asarray(list(ids) + [tokenizer.eos_id], dtype=np.int32))
    return out


def load_sequences(data: DataConfig, split: str, tokenizer) -> SequenceSet:
    """Tokenize a finite split once (cached on disk by corpus, tokenizer and settings) and lay it out."""
    key = _token_cache_key(data, split, tokenizer.fingerprint())
    path = cache_dir() / "tokens" / f"{key}.npz"
    if path.exists():
        with np.load(path) as z:
            docs = np.split(z["flat"], z["offsets"][1:-1])
    else:
        docs = _tokenize_documents(data, split, tokenizer)
        offsets = np.cumsum([0] + [len(d) for d in docs])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + f".{os.getpid()}.tmp.npz")
        np.savez(tmp, flat=np.concatenate(docs), offsets=offsets)
        tmp.replace(path)
    t = data.seq_len
    if data.packing == "pack":
        seqs = SequenceSet(np.concatenate(docs), None, t)
    else:
        padded = np.full((len(docs), t + 1), -1, dtype=np.int32)
        for i, d in enumerate(docs):
            d = d[: t + 1]
            padded[i, : len(d)] = d
        seqs = SequenceSet(None, padded, t)
    if len(seqs) == 0:
        raise UserError(f"the {split} split has fewer than {t + 1} tokens: too small for seq_len={t}")
    return seqs


def _epoch_perm(seed: int, epoch: int, n: int) -> np.ndarray:
    # A stable hash (Python's hash() of a str is salted per process, which would break resume).
    digest = hashlib.sha256(f"data:{seed}:{epoch}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & 0x7FFFFFFFFFFFFFFF)
    return torch.randperm(n, generator=g).numpy()


class TrainBatches:
    """Micro-batches for (step, micro) on this rank; position = step × global batch."""

    def __init__(self, seqs: SequenceSet, seed: int, micro_batch: int, grad_accum: int, world: int, rank: int):
        self.seqs, self.seed = seqs, seed
        self.micro_batch, self.grad_accum, self.world, self.rank = micro_batch, grad_accum, world, rank
        self._perms: dict[int, np.ndarray] = {}

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.grad_accum * self.world

    def position(self, step: int) -> int:
        return step * self.global_batch

    def _indices(self, start: int, count: int) -> np.ndarray:
        n = len(self.seqs)
        out = np.empty(count, dtype=np.int64)
        for j in range(count):
            q = start + j
            epoch = q // n
            if epoch not in self._perms:
                self._perms = {epoch: _epoch_perm(self.seed, epoch, n)}  # keep one epoch in memory
            out[j] = self._perms[epoch][q % n]
        return out

    def get(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = micro * self.world + self.rank
        start = self.position(step) + g * self.micro_batch
        return self.seqs.get(self._indices(start, self.micro_batch))


class StreamingTrainBatches:
    """Sequences packed on the fly from a streamed dataset (e.g. C4); resuming replays the stream.

    Each rank reads the whole stream and keeps its share, so positions are identical to the finite case.
    """

    def __init__(self, data: DataConfig, tokenizer, micro_batch: int, grad_accum: int, world: int, rank: int,
                 shuffle_seed: int = STREAM_SHUFFLE_SEED):
        self.data, self.tokenizer, self.shuffle_seed = data, tokenizer, shuffle_seed
        self.micro_batch, self.grad_accum, self.world, self.rank = micro_batch, grad_accum, world, rank
        self._stream: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._next_pos = 0

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.grad_accum * self.world

    def position(self, step: int) -> int:
        return step * self.global_batch

    def _sequences(self, split: str = "train") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from rankscope.data.sources import iter_texts

        t, buf = self.data.seq_len, []
        for text in iter_texts(self.data, split, shuffle_seed=self.shuffle_seed):
            ids = self.tokenizer.encode(text) + [self.tokenizer.eos_id]
            if self.data.packing == "pad":
                row = np.full(t + 1, -1, dtype=np.int64)
                row[: min(len(ids), t + 1)] = ids[: t + 1]
                yield SequenceSet(None, row[None].astype(np.int32), t).get(np.array([0]))
                continue
            buf.extend(ids)
            while len(buf) >= t + 1:
                row = torch.tensor(buf[: t + 1])
                del buf[:t]
                yield row[None, :-1], row[None, 1:]

    def get(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = micro * self.world + self.rank
        start = self.position(step) + g * self.micro_batch
        if self._stream is None or start < self._next_pos:
            self._stream, self._next_pos = self._sequences(), 0
        while self._next_pos < start:  # skip other ranks' share and, after a resume, consumed data
            next(self._stream)
            self._next_pos += 1
        rows = [next(self._stream) for _ in range(self.micro_batch)]
        self._next_pos += self.micro_batch
        return torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])


def stream_shuffle_seed(t) -> int:
    """The streaming shuffle's seed: the fixed one for a run whose seeds are equal (unchanged order), else
    one drawn from the data seed (a sibling reads the stream in another order)."""
    if not t.sibling_draws:
        return STREAM_SHUFFLE_SEED
    from rankscope.optim.projectors import mix_seed

    return mix_seed(STREAM_SHUFFLE_SEED, t.order_seed) % 2**32  # datasets wants a 32-bit seed


def train_batches(cfg: RunConfig, tokenizer, world: int = 1, rank: int = 0):
    t = cfg.train
    if cfg.data.source == "hf" and cfg.data.streaming:
        return StreamingTrainBatches(cfg.data, tokenizer, t.micro_batch_size, t.grad_accum, world, rank,
                                     stream_shuffle_seed(t))
    seqs = load_sequences(cfg.data, "train", tokenizer)
    return TrainBatches(seqs, t.order_seed, t.micro_batch_size, t.grad_accum, world, rank)


def eval_batch(cfg: RunConfig | DataConfig, n_tokens: int, split: str | None = None, seed: int = 1234,
               micro_batch: int = 16, flag: str = "--eval-tokens"):
    """A fixed, seeded budget of ``n_tokens`` held-out tokens: identical for every method and checkpoint.

    ``cfg`` is a run's config or just its data settings (external runs have no RunConfig). A budget larger
    than the split is a warning naming ``flag`` (the option that set it); then every token is used.
    """
    from rankscope.data.tokenizer import load_tokenizer
    from rankscope.diagnostics.context import EvalBatch

    cfg = RunConfig(data=cfg) if isinstance(cfg, DataConfig) else cfg
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    split = split or "validation"
    if cfg.data.source == "hf" and cfg.data.streaming:
        inputs, labels = _streamed_eval(cfg.data, tokenizer, n_tokens)
    else:
        seqs = load_sequences(cfg.data, split, tokenizer)
        order = _epoch_perm(seed, 0, len(seqs))
        chosen, counted = [], 0
        for i in order:
            chosen.append(i)
            _, lab = seqs.get(np.array([i]))
            counted += int((lab != IGNORE).sum())
            if counted >= n_tokens:
                break
        inputs, labels = seqs.get(np.array(chosen))
        if counted < n_tokens:
            from rankscope.training.run_warnings import warn

            d = cfg.data
            what = (", ".join(d.typed_paths.get("val_files") or d.val_files) if d.source == "files"
                    else f"the {d.source} {split!r} split")
            warn(f"{flag} {n_tokens} asks for more validation tokens than {what} holds ({counted}); all {counted} "
                 f"are used. Pass {flag} {counted} or less to silence this.")
    return EvalBatch(inputs, labels, micro_batch)


def _streamed_eval(data: DataConfig, tokenizer, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    stream = StreamingTrainBatches(data, tokenizer, 1, 1, 1, 0)
    rows, counted = [], 0
    for inp, lab in stream._sequences("validation"):
        rows.append((inp, lab))
        counted += int((lab != IGNORE).sum())
        if counted >= n_tokens:
            break
    return torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])
