"""n-gram baselines equal a direct count (plain Python dictionaries) on a small text."""

import math
from collections import Counter

import numpy as np
import pytest

from rankscope.data.ngram_baselines import LAMBDA_GRID, compute_baselines


def _direct(train_segs, val_segs, vocab, lam):
    flat = [t for s in train_segs for t in s]
    uni_c = Counter(flat)
    n = len(flat)

    def p_uni(b):
        return (uni_c[b] + 0.5) / (n + 0.5 * vocab)

    pair_c, ctx_c = Counter(), Counter()
    for s in train_segs:
        for a, b in zip(s[:-1], s[1:]):
            pair_c[a, b] += 1
            ctx_c[a] += 1
    uni_nll, bi_nll, count = 0.0, 0.0, 0
    for s in val_segs:
        for i, b in enumerate(s):
            uni_nll -= math.log(p_uni(b))
            if i == 0:
                bi_nll -= math.log(p_uni(b))
            else:
                a = s[i - 1]
                p = lam * pair_c[a, b] / ctx_c[a] + (1 - lam) * p_uni(b) if ctx_c[a] else p_uni(b)
                bi_nll -= math.log(p)
            count += 1
    return uni_nll / count, bi_nll / count


def test_baselines_equal_direct_count_on_small_text():
    words = "the cat sat on the mat and the dog sat on the cat while a bird sang on the mat".split()
    vocab_words = sorted(set(words)) + ["unseen"]
    ids = {w: i for i, w in enumerate(vocab_words)}
    train = [np.array([ids[w] for w in words * 3])]
    val_words = "the dog sat on the mat a cat sang unseen the".split()
    val = [np.array([ids[w] for w in val_words[:6]]), np.array([ids[w] for w in val_words[6:]])]
    got = compute_baselines(train, val, len(vocab_words))
    uni, bi = _direct([list(train[0])], [list(v) for v in val], len(vocab_words), got.bigram_lambda)
    assert got.unigram_nll == pytest.approx(uni, rel=1e-12)
    assert got.bigram_nll == pytest.approx(bi, rel=1e-12)
    assert got.unigram_ppl == pytest.approx(math.exp(uni)) and got.val_tokens == len(val_words)
    # λ is the grid value best on the held-out tail of the training stream (its bigrams), by direct count
    flat = list(train[0])
    cut = int(len(flat) * 0.9)
    fit, tail = [flat[:cut]], [flat[cut:]]
    n_tail = len(tail[0])

    def tail_pairs_nll(lam):  # mean over the tail's bigrams: remove the first token's unigram term
        first = -math.log((Counter(flat[:cut])[tail[0][0]] + 0.5) / (cut + 0.5 * len(vocab_words)))
        return (_direct(fit, tail, len(vocab_words), lam)[1] * n_tail - first) / (n_tail - 1)

    assert got.bigram_lambda == min(LAMBDA_GRID, key=tail_pairs_nll)


def test_unigram_add_half_on_uniform_stream():
    train = [np.arange(10).repeat(5)]
    got = compute_baselines(train, [np.arange(10)], vocab_size=20)
    # every seen token: (5 + ½) / (50 + 10) = 11/120
    assert got.unigram_ppl == pytest.approx(120 / 11)
