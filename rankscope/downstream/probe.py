"""Linear probe on frozen features: what a representation encodes, read by the simplest classifier.

Features are the mean over non-pad positions of the final hidden state (after the final norm,
``model.hidden_states(ids)[-1]``); texts are truncated to the model's context (first ``max_seq_len`` tokens).
The classifier is an L2 logistic regression on standardised features, fitted on the task's fixed train part
and scored on its test part, so two models differ only in their features.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def mean_pooled_features(model: nn.Module, tokenizer, texts: Sequence[str], *, max_seq_len: int | None = None,
                         batch_size: int = 16) -> np.ndarray:
    """[N, d] mean-pooled final hidden states (fp32), pads excluded."""
    limit = max_seq_len or int(getattr(getattr(model, "config", None), "max_seq_len", 256))
    encoded = [ids[:limit] or [tokenizer.eos_id] for ids in tokenizer.encode_batch(list(texts))]
    device = next(model.parameters()).device
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    feats: list[np.ndarray | None] = [None] * len(encoded)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = len(encoded[batch[0]])
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros(len(batch), width, 1)
            for r, i in enumerate(batch):
                ids[r, : len(encoded[i])] = torch.tensor(encoded[i])
                mask[r, : len(encoded[i])] = 1.0
            hidden = model.hidden_states(ids.to(device))[-1].float().cpu()
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            for r, i in enumerate(batch):
                feats[i] = pooled[r].numpy()
    finally:
        model.train(was_training)
    return np.stack(feats)


def probe_accuracy(features: np.ndarray, labels: np.ndarray, is_train: np.ndarray, c: float = 1.0) -> np.ndarray:
    """Per-test-item correctness (0/1) of a logistic regression fitted on the train rows."""
    from rankscope.downstream.linear import LogisticRegression, standardize

    x_train, x_test = standardize(features[is_train], features[~is_train])
    clf = LogisticRegression(c=c).fit(x_train, labels[is_train])
    return (clf.predict(x_test) == labels[~is_train]).astype(float)


def score_probe(model: nn.Module, tokenizer, items: Sequence[dict], **kwargs) -> np.ndarray:
    """Correctness on the test part of probe items {text, label, part}."""
    feats = mean_pooled_features(model, tokenizer, [it["text"] for it in items], **kwargs)
    labels = np.array([it["label"] for it in items])
    is_train = np.array([it["part"] == "train" for it in items])
    if is_train.all() or not is_train.any():
        raise ValueError("probe items need both a train and a test part")
    return probe_accuracy(feats, labels, is_train)
