"""Perplexity and bits per byte of checkpoints on any held-out text, with a bootstrap over documents.

Each document is scored as the model saw text in training: ``[EOS] + tokens`` (EOS is the document
separator the batcher packs), cut into windows of ``max_seq_len`` predicted tokens that each start afresh
(the windows of packed training do too). Every text token is predicted exactly once; the closing EOS is not
scored, so the total is -log P(text | start of document).

* ``nll``  = total NLL / total tokens (nats per token, token-weighted over documents); ``ppl = exp(nll)``.
* ``bpb``  = total NLL / ln 2 / total UTF-8 bytes: the same quantity per byte of text, so models with
  different tokenizers compare on the same documents (heldout.py picks them by a byte budget).
* Intervals: 95 % percentile bootstrap over documents (ratio of resampled sums), seeded.

Rows (``scope="text"``, ``name=<text label>``): ``heldout_nll``, ``heldout_ppl``, ``heldout_bpb``; they go to
``<run_dir>/results/heldout.parquet`` and, with ``out``, are merged into a combined table (e.g. the
downstream table the predictor and the report read).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from rankscope.diagnostics.table import Row, read_table, rows_to_frame, write_table
from rankscope.downstream.heldout import DEFAULT_CHUNK_BYTES, DEFAULT_MAX_BYTES, HeldoutText, parse_texts

METRICS = ("heldout_nll", "heldout_ppl", "heldout_bpb")
BOOTSTRAP_ITERS = 1000


@dataclass
class DocScores:
    """Per-document summed NLL (nats), predicted tokens and UTF-8 bytes."""

    nll: np.ndarray
    tokens: np.ndarray
    bytes: np.ndarray

    def totals(self, idx: np.ndarray | None = None) -> dict[str, float]:
        n, t, b = (self.nll, self.tokens, self.bytes) if idx is None else (self.nll[idx], self.tokens[idx],
                                                                             self.bytes[idx])
        nll = float(n.sum() / max(t.sum(), 1))
        return {"heldout_nll": nll, "heldout_ppl": math.exp(min(nll, 700.0)),
                "heldout_bpb": float(n.sum() / math.log(2) / max(b.sum(), 1))}


def _windows(ids: list[int], eos: int, limit: int) -> list[list[int]]:
    """Windows of at most ``limit + 1`` tokens over ``[EOS] + ids``, overlapping by one (input/target shift)."""
    seq = [eos, *ids]
    return [seq[s : s + limit + 1] for s in range(0, len(seq) - 1, limit)]


@torch.no_grad()
def score_texts(model: nn.Module, tokenizer, texts: Sequence[str], *, max_seq_len: int | None = None,
                batch_tokens: int = 4096) -> DocScores:
    """Summed NLL of each text under ``model`` (fp32 log-softmax), as in the module docstring."""
    limit = max_seq_len or int(getattr(getattr(model, "config", None), "max_seq_len", 256))
    encoded = tokenizer.encode_batch(list(texts)) if len(texts) else []
    windows, owner = [], []
    for d, ids in enumerate(encoded):
        for w in _windows(list(ids), tokenizer.eos_id, limit):
            windows.append(w)
            owner.append(d)
    nll = np.zeros(len(texts))
    order = sorted(range(len(windows)), key=lambda i: -len(windows[i]))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        start = 0
        while start < len(order):
            width = len(windows[order[start]]) - 1
            batch = order[start : start + max(1, batch_tokens // width)]
            start += len(batch)
            ids = torch.zeros(len(batch), width, dtype=torch.long)
            tgt = torch.full((len(batch), width), -100, dtype=torch.long)
            for r, i in enumerate(batch):
                w = torch.tensor(windows[i])
                ids[r, : len(w) - 1], tgt[r, : len(w) - 1] = w[:-1], w[1:]
            logits = model(ids.to(device)).float()
            tgt = tgt.to(device)
            lp = F.log_softmax(logits, dim=-1).gather(2, tgt.clamp_min(0)[..., None])[..., 0]
            per_window = -(lp * (tgt != -100)).double().sum(1).cpu().numpy()
            for r, i in enumerate(batch):
                nll[owner[i]] += per_window[r]
    finally:
        model.train(was_training)
    tokens = np.array([len(ids) for ids in encoded], dtype=float)
    nbytes = np.array([len(t.encode("utf-8")) for t in texts], dtype=float)
    return DocScores(nll, tokens, nbytes)


def bootstrap(scores: DocScores, iters: int = BOOTSTRAP_ITERS, seed: int = 0) -> dict[str, tuple[float, float]]:
    """95 % percentile intervals of each metric, resampling documents with replacement."""
    n = len(scores.nll)
    if n < 2 or iters < 1:
        return {m: (math.nan, math.nan) for m in METRICS}
    idx = np.random.default_rng(seed).integers(0, n, size=(iters, n))
    n_sum, t_sum, b_sum = scores.nll[idx].sum(1), scores.tokens[idx].sum(1), scores.bytes[idx].sum(1)
    nll = n_sum / np.maximum(t_sum, 1)
    draws = {"heldout_nll": nll, "heldout_ppl": np.exp(np.minimum(nll, 700.0)),
             "heldout_bpb": n_sum / math.log(2) / np.maximum(b_sum, 1)}
    return {m: tuple(np.percentile(v, [2.5, 97.5]).tolist()) for m, v in draws.items()}


def doc_stderr(scores: DocScores) -> float:
    """Standard error of the token-weighted mean NLL across documents (delta method for a ratio)."""
    n = len(scores.nll)
    if n < 2:
        return math.nan
    mean = scores.nll.sum() / max(scores.tokens.sum(), 1)
    resid = scores.nll - mean * scores.tokens
    return float(np.sqrt(n / (n - 1) * np.sum(resid**2)) / max(scores.tokens.sum(), 1))


def score_rows(scores: DocScores, text: HeldoutText, *, run: str, method: str, step: int, scale: str = "",
               seed: int | None = None, settings: dict | None = None, iters: int = BOOTSTRAP_ITERS,
               boot_seed: int = 0) -> list[Row]:
    point, ci = scores.totals(), bootstrap(scores, iters, boot_seed)
    info = {**(settings or {}), "text": text.spec, "split": text.split, "column": text.column,
            "n_docs": len(scores.nll), "n_tokens": int(scores.tokens.sum()), "n_bytes": int(scores.bytes.sum()),
            "bootstrap_iters": iters}
    se = doc_stderr(scores)
    return [Row(run=run, method=method, step=step, metric=m, value=point[m], ci_low=ci[m][0], ci_high=ci[m][1],
                stderr=se if m == "heldout_nll" else None, scope="text", name=text.name, space="native",
                scale=scale, seed=seed, n_tokens=int(scores.tokens.sum()), settings=info,
                note=f"held-out text {text.spec}") for m in METRICS]


def gap_rows(reference: DocScores, shifted: DocScores, text: HeldoutText, *, run: str, method: str, step: int,
             scale: str = "", seed: int | None = None, settings: dict | None = None, iters: int = BOOTSTRAP_ITERS,
             boot_seed: int = 0, reference_name: str = "val") -> list[Row]:
    """``shift_gap_nll`` = NLL(text) - NLL(reference): how much worse the model does off its own domain.

    The two texts are different documents, so the interval resamples each one independently.
    """
    value = shifted.totals()["heldout_nll"] - reference.totals()["heldout_nll"]
    lo = hi = math.nan
    if iters and len(reference.nll) > 1 and len(shifted.nll) > 1:
        rng = np.random.default_rng(boot_seed)

        def draws(sc: DocScores) -> np.ndarray:
            idx = rng.integers(0, len(sc.nll), size=(iters, len(sc.nll)))
            return sc.nll[idx].sum(1) / np.maximum(sc.tokens[idx].sum(1), 1)

        lo, hi = np.percentile(draws(shifted) - draws(reference), [2.5, 97.5]).tolist()
    info = {**(settings or {}), "text": text.spec, "reference": reference_name, "bootstrap_iters": iters}
    return [Row(run=run, method=method, step=step, metric="shift_gap_nll", value=float(value), ci_low=lo, ci_high=hi,
                scope="text", name=text.name, space="native", scale=scale, seed=seed, settings=info,
                note=f"NLL on {text.spec} minus NLL on {reference_name}")]


def merge_table(frame: pd.DataFrame, stem: Path) -> pd.DataFrame:
    """Write ``frame`` into the table at ``stem``, replacing rows with the same (run, step, metric, scope, name)."""
    keys = ["run", "step", "metric", "scope", "name"]
    for suffix in (".parquet", ".csv"):
        path = stem.with_suffix(suffix)
        if path.is_file():
            old = read_table(path)
            if len(old):
                mark = old[keys].astype(str).agg("|".join, axis=1)
                new = set(frame[keys].astype(str).agg("|".join, axis=1)) if len(frame) else set()
                frame = pd.concat([old[~mark.isin(new)], frame], ignore_index=True)
            break
    write_table(frame, stem)
    return frame


def ppl_runs(run_dirs: Sequence[str | Path], texts: Sequence[str | dict | HeldoutText], steps="final", *,
             max_bytes: int = DEFAULT_MAX_BYTES, max_docs: int = 0, seed: int = 0,
             chunk_bytes: int = DEFAULT_CHUNK_BYTES,
             bootstrap_iters: int = BOOTSTRAP_ITERS, out: str | Path | None = None,
             device: str = "cpu") -> pd.DataFrame:
    """Score checkpoints of each run on each held-out text; write per-run and (optionally) combined tables."""
    from rankscope.downstream.evaluate import _steps
    from rankscope.runs import open_runs

    parsed = parse_texts(texts)
    frames = []
    for run in open_runs(run_dirs):
        tokenizer = run.tokenizer()
        docs = {t.name: t.sample(run.data, max_bytes, max_docs, seed, chunk_bytes) for t in parsed}
        settings = {"max_bytes": max_bytes, "max_docs": max_docs, "chunk_bytes": chunk_bytes, "seed": seed,
                    "tokenizer": run.data.tokenizer}
        rows: list[Row] = []
        for step in _steps(run, steps):
            model = run.load_model(step, device=device)
            scored: dict[str, DocScores] = {}
            ident = {"run": run.name, "method": run.method, "step": step, "scale": run.scale, "seed": run.seed,
                     "iters": bootstrap_iters, "boot_seed": seed}
            for text in parsed:
                scored[text.name] = score_texts(model, tokenizer, docs[text.name])
                rows += score_rows(scored[text.name], text, **ident, settings=settings)  # no wall-clock values
            if "val" in scored:  # in-domain reference present: the shift gap of every other text
                rows += [r for t in parsed if t.name != "val"
                         for r in gap_rows(scored["val"], scored[t.name], t, **ident, settings=settings)]
            del model
        frame = rows_to_frame(rows)
        merge_table(frame, run.results_dir / "heldout")
        frames.append(frame)
    combined = pd.concat(frames, ignore_index=True) if frames else rows_to_frame([])
    if out is not None:
        merge_table(combined, Path(out).with_suffix(""))
    return combined
