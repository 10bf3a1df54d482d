"""Fine-tuning probe: does a checkpoint adapt and forget like its equal-perplexity peers?

Protocol (identical for every checkpoint, so models differ only in their weights):

1. Task: a shipped probe task (default ``genre``: held-out Brown chunks, informative vs imaginative, train and
   test parts split by file). Texts are truncated to ``max_tokens``; ``max_train``/``max_test`` take seeded
   subsets.
2. Before: the zero-shot reference is the frozen linear probe (logistic regression on mean-pooled final hidden
   states, downstream/probe.py) on the same items; in-domain NLL is scored on paragraphs of the run's own
   validation text (``forget_bytes`` UTF-8 bytes, seeded).
3. Fine-tune: a linear head (seeded init) on the mean-pooled final hidden state; cross-entropy; AdamW at a
   constant ``lr`` for ``steps`` updates of ``batch_size`` items in a seeded order that depends only on
   (seed, step). The model trains in training mode, so a method's own training-time randomness (ReLoRA's
   adapter dropout) stays part of its model, drawn from the global RNG seeded by (seed, step) per update. ``mode="full"`` trains every weight; ``mode="lora"`` freezes the checkpoint and trains
   adapters on the 7 projections of every block (downstream/lora.py).
4. After: test accuracy of the fine-tuned classifier, its gain over the frozen probe (paired bootstrap over
   test items), and forgetting = in-domain NLL after - before (nats per token; paired bootstrap over
   paragraphs). With ``lr=0`` nothing moves and forgetting is exactly 0.

Resumable: the trainable weights, optimizer state and step are saved every ``save_every`` updates
(``<run>/results/cache/finetune_state/``); a rerun continues from there bit-exactly. Finished results are
cached per checkpoint like analyze (key: settings + the checkpoint file's size and mtime).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from rankscope.diagnostics.table import Row, rows_to_frame
from rankscope.errors import UserError

GROUP = "finetune"
METRICS = ("ft_acc", "ft_zero_shot_acc", "ft_gain", "ft_nll_before", "ft_nll_after", "ft_forgetting")


@dataclass(frozen=True)
class FinetuneSettings:
    task: str = "genre"  # a shipped probe task (items with text, label, part)
    mode: str = "full"  # full | lora
    steps: int = 32  # optimizer updates
    lr: float = 1e-4  # constant AdamW learning rate (head and trained weights)
    batch_size: int = 8
    max_tokens: int = 128  # texts truncated to this many tokens
    max_train: int = 0  # items of the task's train part (0: all), seeded subset
    max_test: int = 0  # items of the task's test part (0: all), seeded subset
    weight_decay: float = 0.0
    lora_rank: int = 8
    lora_alpha: float = 16.0
    forget_bytes: int = 20_000  # in-domain validation text for forgetting (UTF-8 bytes)
    seed: int = 0
    bootstrap_iters: int = 1000
    save_every: int = 0  # resumable state every N updates (0: a quarter of the steps)

    def __post_init__(self) -> None:
        if self.mode not in ("full", "lora"):
            raise UserError(f"finetune.mode={self.mode!r} is not valid; choose full or lora")
        for name in ("steps", "max_train", "max_test", "forget_bytes", "save_every", "bootstrap_iters"):
            if getattr(self, name) < 0:
                raise UserError(f"finetune.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "max_tokens", "lora_rank"):
            if getattr(self, name) < 1:
                raise UserError(f"finetune.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr >= 0:
            raise UserError(f"finetune.lr must be >= 0, got {self.lr}")


class Classifier(nn.Module):
    """Linear head on the mean-pooled final hidden state (after the final norm), pads excluded."""

    def __init__(self, lm: nn.Module, n_classes: int, seed: int) -> None:
        super().__init__()
        self.lm = lm
        self.head = nn.Linear(lm.config.d_model, n_classes)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(self.head.weight.shape, generator=gen) * 0.02)
            self.head.bias.zero_()
        self.head.to(next(lm.parameters()).device)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.lm.hidden_states(ids)[-1].float()
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return self.head(pooled)


def _pad(seqs: Sequence[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros(len(seqs), width)
    for r, s in enumerate(seqs):
        ids[r, : len(s)], mask[r, : len(s)] = torch.tensor(s), 1.0
    return ids.to(device), mask.to(device)


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> np.ndarray:
    """Items of one update: positions step·B .. step·B + B - 1 of seeded per-epoch permutations."""
    out = []
    for q in range(step * batch_size, (step + 1) * batch_size):
        perm = np.random.default_rng([seed, q // n]).permutation(n)
        out.append(perm[q % n])
    return np.asarray(out)


@contextlib.contextmanager
def update_rng(seed: int, step: int, device: torch.device):
    """The global torch RNG seeded by (probe seed, update) for one update, the caller's state restored after.

    A model's training-mode randomness (ReLoRA's adapter dropout, p=0.1) draws from the global RNG, which
    torch seeds differently in every process; unseeded, two probes of one checkpoint differed in the 5th
    digit (issue 23). Seeding per update, not once, keeps a resumed probe equal to an uninterrupted one.
    """
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(np.random.SeedSequence([seed, step]).generate_state(1, dtype=np.uint64)[0] >> 1))
        yield


@torch.no_grad()
def _predict(clf: Classifier, enc: Sequence[list[int]], pad: int, batch: int = 32) -> np.ndarray:
    device = next(clf.parameters()).device
    out = []
    for s in range(0, len(enc), batch):
        ids, mask = _pad(enc[s : s + batch], pad, device)
        out.append(clf(ids, mask).argmax(-1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=int)


def _task_items(s: FinetuneSettings) -> tuple[list[dict], list[dict]]:
    from rankscope.downstream import tasks as T
    from rankscope.downstream.scoring import subsample

    if T.task_info(s.task)["kind"] != "probe":
        raise UserError(f"finetune.task={s.task!r} is not a classification task; use one of "
                        f"{', '.join(T.task_names('probe'))}")
    items = T.load_items(s.task)
    parts = {p: [it for it in items if it["part"] == p] for p in ("train", "test")}
    caps = {"train": s.max_train, "test": s.max_test}
    return tuple([parts[p][i] for i in subsample(len(parts[p]), caps[p] or None, s.seed)] for p in ("train", "test"))


def _forget_texts(data, s: FinetuneSettings) -> list[str]:
    from rankscope.downstream.heldout import HeldoutText
    from rankscope.downstream.text import paragraphs

    docs = HeldoutText("val").sample(data, max_bytes=0, seed=s.seed)
    out, total = [], 0
    for doc in docs:
        for para in paragraphs(doc):
            out.append(para)
            total += len(para.encode("utf-8"))
            if s.forget_bytes and total >= s.forget_bytes:
                return out
    return out


def _state_save(path: Path, clf: Classifier, opt: torch.optim.Optimizer, step: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    trainable = {n: p.detach().cpu() for n, p in clf.named_parameters() if p.requires_grad}
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save({"trainable": trainable, "opt": opt.state_dict(), "step": torch.tensor(step)}, tmp)
    tmp.replace(path)


def _state_load(path: Path, clf: Classifier, opt: torch.optim.Optimizer) -> int:
    state = torch.load(path, map_location="cpu", weights_only=True)
    params = dict(clf.named_parameters())
    with torch.no_grad():
        for n, t in state["trainable"].items():
            params[n].copy_(t)
    opt.load_state_dict(state["opt"])
    return int(state["step"])


def finetune_model(model: nn.Module, tokenizer, data, s: FinetuneSettings, *, state_path: Path | None = None,
                   stop_after: int | None = None) -> dict | None:
    """Run the protocol on ``model`` (modified in place); per-item arrays, or None if stopped early."""
    from rankscope.downstream.ppl import score_texts
    from rankscope.downstream.probe import mean_pooled_features, probe_accuracy

    train, test = _task_items(s)
    enc = {p: [ids[: s.max_tokens] or [tokenizer.eos_id] for ids in tokenizer.encode_batch([it["text"] for it in items])]
           for p, items in (("train", train), ("test", test))}
    y = {p: np.array([it["label"] for it in items]) for p, items in (("train", train), ("test", test))}
    if len(np.unique(y["train"])) < 2 or not len(y["test"]):
        raise UserError(f"finetune task {s.task!r}: the train part needs both labels and the test part items "
                        f"(max_train={s.max_train}, max_test={s.max_test})")
    texts = [it["text"] for it in train + test]
    feats = mean_pooled_features(model, tokenizer, texts, max_seq_len=s.max_tokens)
    is_train = np.arange(len(texts)) < len(train)
    zero_shot = probe_accuracy(feats, np.concatenate([y["train"], y["test"]]), is_train)
    forget = _forget_texts(data, s)
    before = score_texts(model, tokenizer, forget)

    clf = Classifier(model, int(max(y["train"].max(), y["test"].max())) + 1, s.seed)
    if s.mode == "lora":
        from rankscope.downstream.lora import add_lora

        params = add_lora(model, s.lora_rank, s.lora_alpha, s.seed) + list(clf.head.parameters())
    else:
        params = [p for p in clf.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    start = _state_load(state_path, clf, opt) if state_path is not None and state_path.is_file() else 0
    every = s.save_every or max(1, s.steps // 4)
    device = next(model.parameters()).device
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
    target = torch.as_tensor(y["train"], device=device)
    model.train()
    for step in range(start, s.steps):
        idx = batch_indices(step, len(train), s.batch_size, s.seed)
        ids, mask = _pad([enc["train"][i] for i in idx], pad, device)
        with update_rng(s.seed, step, device):  # e.g. ReLoRA's adapter dropout: seeded by (seed, step)
            loss = F.cross_entropy(clf(ids, mask), target[torch.as_tensor(idx, device=device)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
        opt.step()
        done = step + 1
        stopping = stop_after is not None and done >= stop_after and done < s.steps
        if state_path is not None and done < s.steps and (done % every == 0 or stopping):
            _state_save(state_path, clf, opt, done)
        if stopping:
            return None
    model.eval()
    correct = (_predict(clf, enc["test"], pad) == y["test"]).astype(float)
    after = score_texts(model, tokenizer, forget)
    counts = np.unique(y["test"], return_counts=True)[1]  # the floor both accuracies are read against
    return {"correct": correct, "zero_shot": zero_shot, "before": before, "after": after,
            "n_train": len(train), "n_test": len(test), "majority": float(counts.max() / len(y["test"])),
            "chance": 1.0 / len(np.unique(np.concatenate([y["train"], y["test"]])))}


def _ci(draws: np.ndarray) -> tuple[float, float]:
    if not len(draws):
        return math.nan, math.nan
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return float(lo), float(hi)


def summarise(res: dict, s: FinetuneSettings) -> dict[str, tuple[float, float, float]]:
    """{metric: (value, CI low, CI high)}; gain and forgetting use paired bootstraps."""
    rng = np.random.default_rng(s.seed)
    c, z = res["correct"], res["zero_shot"]
    b, a = res["before"], res["after"]
    tokens = max(b.tokens.sum(), 1)
    out = {"ft_acc": (c.mean(),), "ft_zero_shot_acc": (z.mean(),), "ft_gain": (c.mean() - z.mean(),),
           "ft_nll_before": (b.nll.sum() / tokens,), "ft_nll_after": (a.nll.sum() / tokens,),
           "ft_forgetting": ((a.nll.sum() - b.nll.sum()) / tokens,)}
    it, nd = s.bootstrap_iters, len(b.nll)
    if it and len(c) > 1:
        idx = rng.integers(0, len(c), size=(it, len(c)))
        for key, draws in (("ft_acc", c[idx].mean(1)), ("ft_zero_shot_acc", z[idx].mean(1)),
                           ("ft_gain", c[idx].mean(1) - z[idx].mean(1))):
            out[key] += _ci(draws)
    if it and nd > 1:
        idx = rng.integers(0, nd, size=(it, nd))
        tok = np.maximum(b.tokens[idx].sum(1), 1)
        for key, draws in (("ft_nll_before", b.nll[idx].sum(1) / tok), ("ft_nll_after", a.nll[idx].sum(1) / tok),
                           ("ft_forgetting", (a.nll[idx].sum(1) - b.nll[idx].sum(1)) / tok)):
            out[key] += _ci(draws)
    return {k: (float(v[0]), *(v[1:] if len(v) == 3 else (math.nan, math.nan))) for k, v in out.items()}


def _key(run, step: int, s: FinetuneSettings) -> dict:
    from rankscope.diagnostics.cache import task_key

    return task_key(GROUP, mode=s.mode, n_tokens=None, seed=s.seed, settings=asdict(s), runs=[(run.path, (step,), [run.checkpoint_dir(step)])])


def adaptation_note(gain_ci_low: float | None) -> str:
    """Whether the probe adapted this model: its fine-tuned accuracy beats the frozen probe (interval > 0).

    A probe that adapts no model measures no fine-tuning pressure; the report then gives no finding.
    """
    if gain_ci_low is not None and math.isfinite(gain_ci_low) and gain_ci_low > 0:
        return "; adapted: gain interval above 0"
    return "; did not adapt: the gain interval reaches 0 or below (no fine-tuning finding from this model)"


def finetune_runs(run_dirs: Sequence[str | Path], steps="final", settings: FinetuneSettings | None = None, *,
                  out: str | Path | None = None, device: str = "cpu", use_cache: bool = True,
                  stop_after: int | None = None) -> pd.DataFrame:
    """The probe on checkpoints of each run; rows to ``<run>/results/finetune.parquet`` (and ``out``)."""
    from rankscope.diagnostics.cache import RowCache
    from rankscope.downstream.evaluate import _steps
    from rankscope.downstream.ppl import merge_table
    from rankscope.runs import open_runs

    s = settings or FinetuneSettings()
    frames = []
    for run in open_runs(run_dirs):
        tokenizer = run.tokenizer()
        cache = RowCache(run.results_dir / "cache", enabled=use_cache)
        rows: list[Row] = []
        for step in _steps(run, steps):
            key = _key(run, step, s)
            cached = cache.get(key)
            if cached is not None:
                rows += cached
                continue
            digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
            state_path = run.results_dir / "cache" / "finetune_state" / f"{digest}.pt"
            model = run.load_model(step, device=device)
            res = finetune_model(model, tokenizer, run.data, s, state_path=state_path, stop_after=stop_after)
            if res is None:
                return rows_to_frame(rows)
            info = {**asdict(s), "n_train": res["n_train"], "n_test": res["n_test"],
                    "majority": res["majority"], "chance": res["chance"],
                    "n_forget_paragraphs": len(res["before"].nll), "n_forget_tokens": int(res["before"].tokens.sum())}
            # no wall-clock values in the table: identical studies give identical rows and settings hashes
            new = [Row(run=run.name, method=run.method, step=step, metric=m, value=v, ci_low=lo, ci_high=hi,
                       scope="finetune", name=s.task, space="native", mode=s.mode, scale=run.scale,
                       seed=run.seed, init_seed=run.seed, data_seed=run.seed if run.data_seed is None else run.data_seed,
                       settings=info, note=f"fine-tuning probe ({s.mode}, {s.steps} steps)"
                       + (adaptation_note(lo) if m == "ft_gain" else ""))
                   for m, (v, lo, hi) in summarise(res, s).items()]
            cache.put(key, new)
            state_path.unlink(missing_ok=True)
            rows += new
            del model
        frame = rows_to_frame(rows)
        merge_table(frame, run.results_dir / "finetune")
        frames.append(frame)
    combined = pd.concat(frames, ignore_index=True) if frames else rows_to_frame([])
    if out is not None:
        merge_table(combined, Path(out).with_suffix(""))
    return combined
