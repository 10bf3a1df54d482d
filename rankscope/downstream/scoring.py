"""Native log-likelihood multiple-choice scoring with lm-evaluation-harness semantics (data.md §4).

Why native: the offline tasks must be scorable without lm-eval, and with the *same* numbers, so a result does
not depend on which path produced it. The rules copied from lm-eval 0.4 (re-implemented, not imported):

* a request is (context, continuation); trailing spaces of the context move to the continuation;
* continuation tokens = tokens of ``context + continuation`` beyond the tokens of ``context`` alone;
* an empty context (minimal pairs) is replaced by one prefix token: EOS by default, because training packs
  documents separated by EOS, so EOS is what the model has seen before the start of a text. If the
  continuation's first token already is that prefix, it serves as the context instead (lm-eval's rule);
* the input is ``(context + continuation)[-(L + 1):][:-1]`` (left truncation at the model's max_seq_len L),
  and the score is the summed log-prob of the continuation tokens; no BOS is added otherwise;
* ``acc`` = argmax of the summed log-probs; ``acc_norm`` = argmax of the sum divided by the choice's length in
  characters (the choice without the target delimiter); ties go to the first choice (``np.argmax``).

Sequences are sorted by length (longest first) and packed into batches under a token budget; right padding
never leaks into earlier positions of a causal model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

BOOTSTRAP_ITERS = 1000


def encode_pair(tokenizer, context: str, continuation: str, prefix_id: int) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation) exactly as lm-eval's causal ``loglikelihood`` builds them."""
    if context == "":
        cont = tokenizer.encode(continuation)
        return ([prefix_id], cont) if cont[:1] != [prefix_id] else (cont[:1], cont[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    return ctx, whole[len(ctx):]


def _max_len(model: nn.Module, max_seq_len: int | None) -> int:
    if max_seq_len:
        return max_seq_len
    cfg = getattr(model, "config", None)
    return int(getattr(cfg, "max_seq_len", 0) or getattr(cfg, "max_position_embeddings", 0) or 256)


def _forward_selected(model: nn.Module, ids: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Log-probs (fp32) at the selected positions only: the lm_head runs on those rows, not on every token."""
    if hasattr(model, "hidden_states") and hasattr(model, "lm_head"):
        hidden = model.hidden_states(ids)[-1]
        logits = model.lm_head(hidden[rows, cols])
    else:
        logits = model(ids)[rows, cols]
    return F.log_softmax(logits.float(), dim=-1)


@torch.no_grad()
def loglikelihoods(model: nn.Module, tokenizer, requests: Sequence[tuple[str, str]], *,
                   max_seq_len: int | None = None, batch_tokens: int = 16384,
                   prefix_id: int | None = None) -> list[tuple[float, bool]]:
    """(summed log-prob, is_greedy) of each (context, continuation), lm-eval semantics (module docstring)."""
    limit = _max_len(model, max_seq_len)
    prefix = tokenizer.eos_id if prefix_id is None else prefix_id
    seqs = []
    for context, continuation in requests:
        ctx, cont = encode_pair(tokenizer, context, continuation, prefix)
        if not cont:
            raise ValueError(f"continuation {continuation!r} encodes to no tokens")
        if len(cont) > limit:
            raise ValueError(f"continuation of {len(cont)} tokens exceeds max_seq_len={limit}")
        seqs.append(((ctx + cont)[-(limit + 1):][:-1], cont))
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))
    device = next(model.parameters()).device
    pad = getattr(tokenizer, "pad_id", None)
    pad = prefix if pad is None else pad
    out: list[tuple[float, bool]] = [(0.0, False)] * len(seqs)
    was_training = model.training
    model.eval()
    try:
        start = 0
        while start < len(order):
            width = len(seqs[order[start]][0])
            batch = order[start : start + max(1, batch_tokens // width)]
            start += len(batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            rows, cols, targets, owners = [], [], [], []
            for r, i in enumerate(batch):
                inp, cont = seqs[i]
                ids[r, : len(inp)] = torch.tensor(inp)
                first = len(inp) - len(cont)  # logits at t predict token t + 1
                rows += [r] * len(cont)
                cols += range(first, len(inp))
                targets += cont
                owners += [i] * len(cont)
            logp = _forward_selected(model, ids.to(device), torch.tensor(rows, device=device),
                                     torch.tensor(cols, device=device))
            tgt = torch.tensor(targets, device=device)
            token_lp = logp.gather(1, tgt[:, None])[:, 0].double().cpu().numpy()
            greedy = (logp.argmax(-1) == tgt).cpu().numpy()
            owners_arr = np.asarray(owners)
            for i in batch:
                mask = owners_arr == i
                out[i] = (float(token_lp[mask].sum()), bool(greedy[mask].all()))
    finally:
        model.train(was_training)
    return out


@dataclass
class ChoiceResult:
    """Per-item correctness of one multiple-choice task (arrays of 0/1, one entry per item)."""

    acc: np.ndarray
    acc_norm: np.ndarray
    loglik: list[list[float]]
    margin: np.ndarray | None = None  # per item: log-lik of the right choice − the best wrong one (acc's rule)
    margin_norm: np.ndarray | None = None  # the same on log-lik per character (acc_norm's rule)


def score_choices(model: nn.Module, tokenizer, items: Sequence[dict], target_delimiter: str = " ",
                  **kwargs) -> ChoiceResult:
    """Score items {context, choices, label}; each choice is requested as ``target_delimiter + choice``."""
    requests = [(it["context"], target_delimiter + c) for it in items for c in it["choices"]]
    scores = loglikelihoods(model, tokenizer, requests, **kwargs)
    acc, acc_norm, lls, margin, margin_norm, k = [], [], [], [], [], 0
    for it in items:
        n = len(it["choices"])
        ll = np.array([s for s, _ in scores[k : k + n]])
        k += n
        lengths = np.array([float(len(c)) for c in it["choices"]])
        acc.append(float(np.argmax(ll) == it["label"]))
        acc_norm.append(float(np.argmax(ll / lengths) == it["label"]))
        lls.append(ll.tolist())
        margin.append(_margin(ll, int(it["label"])))
        margin_norm.append(_margin(ll / lengths, int(it["label"])))
    return ChoiceResult(np.array(acc), np.array(acc_norm), lls, np.array(margin), np.array(margin_norm))


def _margin(scores: np.ndarray, label: int) -> float:
    """Score of the right choice minus the best wrong one (> 0: right, unless a tie went to an earlier choice)."""
    wrong = np.delete(scores, label)
    return float(scores[label] - wrong.max()) if len(wrong) else float("nan")


def mean_stderr(x: np.ndarray) -> float:
    """Sample standard deviation / sqrt(n): lm-eval's ``mean_stderr`` for acc."""
    return float(np.std(x, ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")


def bootstrap_ci(x: np.ndarray, iters: int = BOOTSTRAP_ITERS, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (items resampled with replacement, seeded)."""
    x = np.asarray(x, dtype=float)
    if len(x) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(iters, len(x)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def subsample(n: int, max_items: int | None, seed: int) -> np.ndarray:
    """Sorted item indices: all of them, or a seeded sample of ``max_items`` (the recorded cap)."""
    if max_items is None or max_items >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_items, replace=False))
