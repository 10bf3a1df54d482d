"""Exact n-gram reference perplexities of the study's validation split, with the study's own tokenizer.

A reader cannot judge "val ppl 900" without the floor: a model that has not beaten the unigram perplexity has
learned token frequencies and nothing else (shared/spec/parity.md §5). Both baselines are exact counts over
token streams (no sampling), trained on the training split:

* unigram, add-½: p(b) = (c(b) + ½) / (N + ½V);
* interpolated bigram: p(b | a) = λ·c(a, b)/c(a) + (1 − λ)·p_uni(b) (p_uni alone when c(a) = 0).

λ is chosen on a split that is never the one reported: the last ``tune_fraction`` of the training stream is
held out, λ is the grid value with the lowest held-out NLL under counts of the rest, then the counts of the
whole training split are used with that λ on validation. Streams are the tokens the model is scored on: the
packed stream (documents joined by EOS) or, with padding, each document's tokens. Streaming sources (C4) count
the first ``max_tokens`` tokens of each split.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

LAMBDA_GRID = tuple(round(0.05 * i, 2) for i in range(0, 20)) + (0.97, 0.99)


@dataclass(frozen=True)
class Baselines:
    unigram_ppl: float
    bigram_ppl: float
    unigram_nll: float
    bigram_nll: float
    bigram_lambda: float
    train_tokens: int
    val_tokens: int
    vocab_size: int

    def to_dict(self) -> dict:
        return asdict(self)


def _unigram_probs(train: list[np.ndarray], vocab: int) -> np.ndarray:
    counts = np.zeros(vocab, dtype=np.float64)
    for seg in train:
        counts += np.bincount(seg, minlength=vocab)[:vocab]
    return (counts + 0.5) / (counts.sum() + 0.5 * vocab)


def _pairs(segs: list[np.ndarray], vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """(previous token, pair key a·V + b) of every within-segment bigram."""
    prev = [s[:-1].astype(np.int64) for s in segs if len(s) > 1]
    nxt = [s[1:].astype(np.int64) for s in segs if len(s) > 1]
    if not prev:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    a, b = np.concatenate(prev), np.concatenate(nxt)
    return a, a * vocab + b


class _BigramCounts:
    def __init__(self, train: list[np.ndarray], vocab: int) -> None:
        a, keys = _pairs(train, vocab)
        self.keys, self.counts = np.unique(keys, return_counts=True)
        self.context = np.bincount(a, minlength=vocab).astype(np.float64)
        self.vocab = vocab

    def conditional(self, segs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For every bigram of ``segs``: c(a,b)/c(a) (0 if c(a)=0), whether c(a)>0, and the next token b."""
        a, keys = _pairs(segs, self.vocab)
        idx = np.searchsorted(self.keys, keys).clip(max=max(len(self.keys) - 1, 0))
        found = (self.keys[idx] == keys) if len(self.keys) else np.zeros(len(keys), bool)
        pair = np.where(found, self.counts[idx] if len(self.keys) else 0, 0).astype(np.float64)
        ctx = self.context[a]
        seen = ctx > 0
        return np.where(seen, pair / np.maximum(ctx, 1), 0.0), seen, keys % self.vocab


def _bigram_nll(counts: _BigramCounts, uni: np.ndarray, segs: list[np.ndarray], lams: tuple[float, ...]) -> list[float]:
    """Mean bigram NLL of ``segs`` for each λ (the counts are looked up once)."""
    cond, seen, b = counts.conditional(segs)
    pu = uni[b]
    return [float(-np.log(np.where(seen, lam * cond + (1 - lam) * pu, pu)).mean()) for lam in lams]


def _first_token_nll(uni: np.ndarray, segs: list[np.ndarray]) -> np.ndarray:
    return np.array([-math.log(uni[s[0]]) for s in segs if len(s)])


def compute_baselines(train: list[np.ndarray], val: list[np.ndarray], vocab_size: int,
                      tune_fraction: float = 0.1) -> Baselines:
    """Unigram and interpolated-bigram NLL/ppl of ``val`` (token segments), counted on ``train``.

    Every validation token is scored: the first token of a segment by the unigram in both models (it has no
    context inside the segment), the others by their bigram.
    """
    if not train or not val:
        raise ValueError("n-gram baselines need a non-empty training and validation stream")
    flat_train = np.concatenate(train)
    cut = int(len(flat_train) * (1 - tune_fraction))
    fit, tune = [flat_train[:cut]], [flat_train[cut:]]
    uni_fit, counts_fit = _unigram_probs(fit, vocab_size), _BigramCounts(fit, vocab_size)
    tuned = _bigram_nll(counts_fit, uni_fit, tune, LAMBDA_GRID)
    lam = LAMBDA_GRID[tuned.index(min(tuned))]  # the first of equal minima, as min() over the grid
    uni, counts = _unigram_probs(train, vocab_size), _BigramCounts(train, vocab_size)
    flat_val = np.concatenate(val)
    n = len(flat_val)
    uni_nll = float(-np.log(uni[flat_val]).mean())
    firsts = _first_token_nll(uni, val)
    n_pairs = n - len(firsts)
    bi_pairs = _bigram_nll(counts, uni, val, (lam,))[0] if n_pairs else 0.0
    bi_nll = float((bi_pairs * n_pairs + firsts.sum()) / n)
    return Baselines(math.exp(uni_nll), math.exp(bi_nll), uni_nll, bi_nll, lam, int(len(flat_train)), int(n),
                     vocab_size)


def split_stream(data, split: str, tokenizer, max_tokens: int = 20_000_000) -> list[np.ndarray]:
    """The token segments of one split as the model sees them (packed stream, or one per padded document)."""
    if data.source == "hf" and data.streaming:
        from rankscope.data.sources import iter_texts

        segs, total = [], 0
        for text in iter_texts(data, split):
            ids = np.asarray(list(tokenizer.encode(text)) + [tokenizer.eos_id], dtype=np.int64)
            segs.append(ids[: data.seq_len + 1] if data.packing == "pad" else ids)
            total += len(segs[-1])
            if total >= max_tokens:
                break
        return segs if data.packing == "pad" else [np.concatenate(segs)]
    from rankscope.data.batches import load_sequences

    seqs = load_sequences(data, split, tokenizer)
    if seqs.tokens is not None:
        return [np.asarray(seqs.tokens, dtype=np.int64)]
    return [row[row >= 0].astype(np.int64) for row in seqs.padded]


def study_baselines(cfg) -> Baselines:
    """Baselines for a RunConfig's data and tokenizer (every run of a study shares them)."""
    from rankscope.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(cfg.data.tokenizer)
    vocab = max(tokenizer.vocab_size, 1)
    return compute_baselines(split_stream(cfg.data, "train", tokenizer),
                             split_stream(cfg.data, "validation", tokenizer), vocab)
