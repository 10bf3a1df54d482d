"""The single training loop for every method, alone or under torchrun.

    rankscope train --method full_rank --model tiny --steps 300 --name demo_full
    torchrun --nproc_per_node 2 -m rankscope train --model smoke --steps 20 --name ddp

The loop never asks which method it runs: layer swaps, optimizers, schedules and periodic work (projector
refresh, merge-and-reset) are the method's hooks (rankscope/methods/base.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rankscope.allocator import retain_freed_memory
from rankscope.config import RunConfig
from rankscope.errors import UserError
from rankscope.methods.base import Method
from rankscope.models.llama import LlamaLM, lm_loss, lm_loss_sums
from rankscope.training import checkpoint as ckpt
from rankscope.training import dist
from rankscope.training.logging import MetricsLog
from rankscope.training.run_folder import prepare_run_folder, write_meta


class NonFiniteLoss(UserError):
    """Training produced NaN/inf; the run stopped and its last good checkpoint is intact."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    val_loss: float | None
    val_ppl: float | None


def init_fingerprint(model: nn.Module) -> str:
    """Hash of the initial dense weights: runs with equal fingerprints share initialisation (IMIB)."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().float().flatten()[:64].numpy().tobytes())
    return h.hexdigest()[:16]


def build_model(cfg: RunConfig, method: Method) -> tuple[nn.Module, str]:
    """Seeded base LLaMA (identical for every method with the same seed), then the method's transform."""
    torch.manual_seed(cfg.train.seed)
    base = LlamaLM(cfg.model_config())
    fingerprint = init_fingerprint(base)
    return method.prepare(base), fingerprint


@torch.inference_mode()
def validate(model: nn.Module, batch, info: dist.DistInfo, precision: str, reduction: str, shard: bool = True) -> float:
    """Validation loss over the fixed held-out budget (token-weighted by default).

    Replicated models split the micro-batches over ranks; FSDP forwards are collective, so there
    (``shard=False``) every rank runs every micro-batch and nothing is reduced.
    """
    shard = shard and info.distributed
    was_training = model.training
    model.eval()
    nll = torch.zeros((), dtype=torch.float64, device=info.device)
    count = torch.zeros((), dtype=torch.float64, device=info.device)
    batch_means = torch.zeros((), dtype=torch.float64, device=info.device)
    n_batches = torch.zeros((), dtype=torch.float64, device=info.device)
    for i, (ids, labels) in enumerate(batch.chunks()):
        if shard and i % info.world != info.rank:
            continue
        with dist.autocast_context(precision, info.device):
            logits = model(ids.to(info.device))
        s, n = lm_loss_sums(logits, labels.to(info.device))
        nll += s.double()
        count += n.double()
        batch_means += s.double() / n.clamp_min(1).double()
        n_batches += 1
    if shard:
        for t in (nll, count, batch_means, n_batches):
            dist.all_reduce_sum(t)
    model.train(was_training)
    if reduction == "token_mean":
        return float(nll / count.clamp_min(1))
    if reduction == "batch_mean":
        return float(batch_means / n_batches.clamp_min(1))
    return float(batch_means / (n_batches + 1))  # release quirk Q6: Σ batch means ÷ (N+1)


def _due(step: int, every: int, total: int, extra: tuple[int, ...] = ()) -> bool:
    return step == total or step in extra or (every > 0 and step % every == 0)


def train(cfg: RunConfig, resume: bool = False, progress: bool = True, stop_after: int | None = None) -> TrainResult:
    """Train one run to ``cfg.train.steps`` updates, writing the run folder; resumes exactly if asked.

    ``stop_after`` ends the process's work after that update (as a pre-empted job would); the run is then
    completed by calling again with ``resume=True``.
    """
    from rankscope.data.batches import eval_batch, train_batches
    from rankscope.data.tokenizer import load_tokenizer

    t = cfg.train
    info = dist.setup(t.device)
    if info.device.type == "cpu" and t.retain_cpu_memory:
        retain_freed_memory()
    model_cfg = cfg.model_config()
    method = cfg.build_method()
    if t.dist == "fsdp" and info.distributed and not method.supports_fsdp:
        raise UserError(f"method {cfg.method!r} needs whole matrices in its optimizer or layers and cannot run "
                        f"under --dist fsdp; use --dist ddp")
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise UserError(f"tokenizer {cfg.data.tokenizer!r} has {tokenizer.vocab_size} tokens but model "
                        f"{cfg.model!r} has vocab_size {model_cfg.vocab_size}; pass --vocab-size {tokenizer.vocab_size}")
    run_dir = cfg.run_dir
    start_step = prepare_run_folder(cfg, resume, info.is_main)
    model, fingerprint = build_model(cfg, method)
    if t.precision == "bf16-pure":
        model = model.to(torch.bfloat16)
    model.to(info.device)
    if t.dist == "fsdp" and info.distributed:
        from rankscope.training.fsdp import shard_model

        shard_model(model)
    optimizer = method.build_optimizer(model)
    log = MetricsLog(run_dir, enabled=info.is_main)
    if start_step:
        _restore(run_dir, start_step, model, optimizer, method, info, t.dist == "fsdp")
        log.truncate_after(start_step)
    elif info.is_main:
        write_meta(cfg, fingerprint, info.world)
    train_model = model
    if info.distributed and t.dist == "ddp":
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    if t.compile:
        train_model = torch.compile(train_model)

    batches = train_batches(cfg, tokenizer, info.world, info.rank)
    val = eval_batch(cfg, t.eval_tokens)
    trainable = [p for p in model.parameters() if p.requires_grad]
    tokens_per_step = batches.global_batch * cfg.data.seq_len
    bad = torch.zeros((), dtype=torch.bool, device=info.device)
    window_loss = torch.zeros((), dtype=torch.float64, device=info.device)
    window_steps, window_start = 0, time.perf_counter()
    val_loss = None
    bar = _progress_bar(t.steps, start_step, progress and info.is_main)
    model.train()
    for step in range(start_step, t.steps):
        factor = method.lr_factor(step)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        step_loss = torch.zeros((), device=info.device)
        for micro in range(t.grad_accum):
            ids, labels = batches.get(step, micro)
            sync = micro == t.grad_accum - 1 or not isinstance(train_model, nn.parallel.DistributedDataParallel)
            with (train_model.no_sync() if not sync else contextlib.nullcontext()), dist.autocast_context(t.precision, info.device):
                loss = lm_loss(train_model(ids.to(info.device, non_blocking=True)), labels.to(info.device)) / t.grad_accum
            loss.backward()
            step_loss += loss.detach().float()
        if method.config.grad_clip:
            torch.nn.utils.clip_grad_norm_(trainable, method.config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        extra_logs = method.on_step_end(done, model, optimizer)
        bad |= ~torch.isfinite(step_loss)
        window_loss += step_loss.double()
        window_steps += 1
        if done == start_step + 1 and info.is_main:
            _write_memory(run_dir, model, optimizer, method, cfg, print_table=progress)
        log_now = _due(done, t.log_every, t.steps)
        eval_now = _due(done, t.eval_every, t.steps)
        save_now = _due(done, t.save_every, t.steps, t.save_steps)
        if log_now or eval_now or save_now:
            if bool(dist.all_reduce_sum(bad.float()).item() > 0):
                raise NonFiniteLoss(
                    f"non-finite training loss at or before step {done} of run {run_dir}; stopped without saving. "
                    f"The last good checkpoint is kept (resume with --resume, e.g. with a lower --lr or a --grad-clip "
                    f"setting via --set grad_clip=1.0)."
                )
        if log_now:
            mean_loss = float(dist.all_reduce_sum(window_loss.clone()).item()) / (window_steps * info.world)
            elapsed = time.perf_counter() - window_start
            tok_s = window_steps * tokens_per_step / max(elapsed, 1e-9)
            log.write("train", done, loss=mean_loss, lr=optimizer.param_groups[0]["lr"], tokens=done * tokens_per_step,
                      tok_per_s=tok_s, **{k: float(v) for k, v in (extra_logs or {}).items()})
            bar.set_postfix(loss=f"{mean_loss:.3f}", tok_s=f"{tok_s:,.0f}")
            window_loss.zero_()
            window_steps, window_start = 0, time.perf_counter()
        if eval_now:
            val_loss = validate(model, val, info, t.precision, t.eval_loss, shard=t.dist != "fsdp")
            log.write("eval", done, val_loss=val_loss, val_ppl=math.exp(min(val_loss, 700)), tokens=done * tokens_per_step)
        if save_now:
            _save(run_dir, done, model, optimizer, method, info, tokens_per_step, cfg, t.dist == "fsdp")
        bar.update(1)
        if stop_after is not None and done >= stop_after:
            break
    bar.close()
    log.close()
    dist.teardown()
    return TrainResult(run_dir, done if t.steps > start_step else start_step, val_loss, math.exp(min(val_loss, 700)) if val_loss is not None else None)


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="train", unit="step", dynamic_ncols=True)


def _save(run_dir, step, model, optimizer, method, info, tokens_per_step, cfg, fsdp: bool) -> None:
    # Each rank checks its own shard (FSDP parameters are DTensors; .to_local() is the shard).
    local = [p.to_local() if hasattr(p, "to_local") else p for p in model.parameters()]
    finite = torch.stack([torch.isfinite(p).all() for p in local]).all().float()
    if dist.all_reduce_sum(finite).item() < info.world:
        raise NonFiniteLoss(f"non-finite weights at step {step} of run {run_dir}; not saved. The last good "
                            f"checkpoint is kept (resume with --resume and a lower --lr or gradient clipping).")
    if fsdp:
        from rankscope.training.fsdp import full_states

        model_state, opt_state = full_states(model, optimizer)
    else:
        model_state, opt_state = model.state_dict(), optimizer.state_dict()
    rngs = _gather_rng(info)
    if info.is_main:
        ckpt.save_checkpoint(
            run_dir, step, model_state=model_state, optimizer_state=opt_state, method_state=method.state_dict(),
            rng_states=rngs,
            train_state={"step": step, "tokens_seen": step * tokens_per_step, "data_position": step * tokens_per_step // cfg.data.seq_len,
                         "config_hash": cfg.fingerprint(), "package_version": _version(), "world_size": info.world},
        )
    if info.distributed:
        torch.distributed.barrier()


def _gather_rng(info) -> list[dict[str, torch.Tensor]]:
    state = ckpt.rng_state()
    if not info.distributed:
        return [state]
    gathered: list = [None] * info.world
    torch.distributed.all_gather_object(gathered, state)
    return gathered


def _restore(run_dir, step, model, optimizer, method, info, fsdp: bool) -> None:
    loaded = ckpt.load_checkpoint(run_dir, step, info.rank)
    if fsdp:
        from rankscope.training.fsdp import load_full_states

        load_full_states(model, optimizer, loaded["model"], loaded.get("optimizer"))
    else:
        model.load_state_dict(loaded["model"], strict=True)
        if "optimizer" in loaded:
            optimizer.load_state_dict(loaded["optimizer"])
    method.load_state_dict(loaded["method"])
    if loaded["rng"] is not None:
        ckpt.set_rng_state(loaded["rng"])


def _write_memory(run_dir, model, optimizer, method, cfg, print_table: bool) -> None:
    try:
        from rankscope.methods.memory import format_memory_table, memory_summary, memory_table
    except ImportError:
        return
    rows = memory_table(model, optimizer, type(method), method.config, cfg.model_config())
    ckpt.write_json_atomic(run_dir / "memory.json", {"rows": rows, "summary": memory_summary(rows)})
    if print_table:
        print(format_memory_table(rows))


def _version() -> str:
    from rankscope import __version__

    return __version__
