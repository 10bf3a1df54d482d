"""The single training loop for every method, alone or under torchrun.

    rankscope train --method full_rank --model tiny --steps 300 --name demo_full
    torchrun --nproc_per_node 2 -m rankscope train --model smoke --steps 20 --name ddp

The loop never asks which method it runs: layer swaps, optimizers, schedules and periodic work (projector
refresh, merge-and-reset) are the method's hooks (rankscope/methods/base.py).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rankscope.allocator import retain_freed_memory
from rankscope.config import RunConfig
from rankscope.errors import UserError, WorkFailed
from rankscope.methods.base import Method
from rankscope.models.llama import LlamaLM, lm_loss, lm_loss_sums
from rankscope.training import checkpoint as ckpt
from rankscope.training import dist
from rankscope.training.logging import MetricsLog
from rankscope.training.peak_memory import peak_mib
from rankscope.training.run_folder import open_run_folder, write_meta
from rankscope.training.run_warnings import warn_before_training
from rankscope.training.state import LoopState, NonFiniteLoss, advice, restore_state, save_state
from rankscope.training.stop import StopOnSignal, signal_name

__all__ = ["NonFiniteLoss", "TrainResult", "build_model", "train", "validate"]


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    val_loss: float | None
    val_ppl: float | None
    stopped_by: str = ""  # a signal's name when the run stopped early on it (checkpoint written at ``step``)


def init_fingerprint(model: nn.Module) -> str:
    """Hash of the initial dense weights: runs with equal fingerprints share initialisation (IMIB)."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().float().flatten()[:64].numpy().tobytes())
    return h.hexdigest()[:16]


#: Salt of the method-randomness stream of a run whose data seed differs from its init seed.
METHOD_STREAM_SALT = 0x5EED_DA7A


def build_model(cfg: RunConfig, method: Method) -> tuple[nn.Module, str]:
    """Base LLaMA from ``init_seed`` (identical for every method and data seed), then the method's transform.

    The transform's randomness (factor inits, sparse supports, ReLoRA's and SPAM's seeds, drawn from the
    global RNG) follows the stream that seeded the weights when the two seeds are equal (as before they
    were split), and is reseeded from ``data_seed`` otherwise (``TrainConfig.sibling_draws``).
    """
    from rankscope.optim.projectors import mix_seed

    torch.manual_seed(cfg.train.weights_seed)
    base = LlamaLM(cfg.model_config())
    fingerprint = init_fingerprint(base)
    if cfg.train.sibling_draws:
        torch.manual_seed(mix_seed(METHOD_STREAM_SALT, cfg.train.order_seed))
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


def train(cfg: RunConfig, resume: bool = False, progress: bool = True, stop_after: int | None = None,
          allow_change: tuple[str, ...] = (), stop_signals: tuple[int, ...] = ()) -> TrainResult:
    """Train one run to ``cfg.train.steps`` updates, writing the run folder; resumes exactly if asked.

    Config, tokenizer and data are checked before anything is written, so a refused start leaves no folder
    (or, on resume, an unchanged one). ``allow_change`` names optimisation settings a resume may change
    (run_folder.CHANGEABLE). ``stop_after`` ends the process's work after that update (as a pre-empted job
    would); the run is then completed by calling again with ``resume=True``. SIGTERM and ``stop_signals``
    end the run after the current update with a checkpoint (``TrainResult.stopped_by``; training/stop.py).
    """
    with StopOnSignal(stop_signals) as stopper:  # from here on a scheduler's SIGTERM waits for an update boundary
        return _train(cfg, resume, progress, stop_after, allow_change, stopper)


def _train(cfg, resume, progress, stop_after, allow_change, stopper: StopOnSignal) -> TrainResult:
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
    guide = checked_guide(cfg, method, info)  # None without --guide: the loop below is then today's
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise UserError(f"tokenizer {cfg.data.tokenizer!r} has {tokenizer.vocab_size} tokens but model "
                        f"{cfg.model!r} has vocab_size {model_cfg.vocab_size}; pass --vocab-size {tokenizer.vocab_size}")
    batches = train_batches(cfg, tokenizer, info.world, info.rank)
    warn_before_training(cfg, batches)  # past one epoch; a method option that defeats the method
    val = eval_batch(cfg, t.eval_tokens)
    model, fingerprint = build_model(cfg, method)
    if t.precision == "bf16-pure":
        model = model.to(torch.bfloat16)
    model.to(info.device)
    if t.dist == "fsdp" and info.distributed:
        from rankscope.training.fsdp import build_optimizer, shard_model

        shard_model(model)
        optimizer = build_optimizer(method, model)  # projected methods: whole-matrix ownership
    else:
        optimizer = method.build_optimizer(model)
    folder = open_run_folder(cfg, resume, info.is_main, tuple(allow_change))
    try:
        try:
            return _run(cfg, folder, info, method, model, optimizer, batches, val, fingerprint, progress, stop_after,
                        stopper, guide)
        except OSError as exc:  # a full disk while writing the log or meta.json: the same paragraph as a checkpoint's
            if not ckpt.is_disk_full(exc):
                raise
            what = str(exc.filename or "a file of the run")
            raise WorkFailed(ckpt.write_failure(cfg.run_dir, what, exc, partial_removed=False)) from None
    except BaseException:
        folder.discard_if_unstarted()
        raise
    finally:
        folder.close()


def _run(cfg, folder, info, method, model, optimizer, batches, val, fingerprint, progress, stop_after, stopper,
         guide=None):
    """Restore (if resuming), then the update loop; ``folder`` is open and locked."""
    t, run_dir, start_step = cfg.train, cfg.run_dir, folder.start_step
    if guide is not None:
        guide.setup(model, optimizer, info)
    if start_step:
        loop = restore_state(run_dir, start_step, model, optimizer, method, info, cfg, guide)
    else:
        loop = LoopState(torch.zeros((), dtype=torch.float64, device=info.device))
    if start_step >= t.steps:  # already finished: a no-op resume leaves the folder as it is
        dist.teardown()
        return _finished(run_dir, start_step)
    # The restore worked: only now does this process change the folder.
    folder.record_changes(info.is_main)
    if info.is_main:
        ckpt.remove_stale_temp(run_dir)
        write_meta(cfg, fingerprint, info.world)
    log = MetricsLog(run_dir, enabled=info.is_main, start_step=start_step)
    train_model = model
    if info.distributed and t.dist == "ddp":
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    if t.compile:
        train_model = torch.compile(train_model)

    trainable = [p for p in model.parameters() if p.requires_grad]
    tokens_per_step = batches.global_batch * cfg.data.seq_len
    bad = torch.zeros((), dtype=torch.bool, device=info.device)
    window_start, val_loss, done = time.perf_counter(), None, start_step
    bar = _progress_bar(t.steps, start_step, progress and info.is_main)
    model.train()
    for step in range(start_step, t.steps):
        factor = method.lr_factor(step)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        micro_pass = functools.partial(_micro_pass, step, train_model, batches, t, info)
        guided = guide is not None and guide.active(step)
        step_loss = guide.accumulate(step, micro_pass) if guided else micro_pass()
        ok = True
        if t.max_bad_steps:  # skip non-finite updates: one sync per step, only when asked for
            ok = dist.all_reduce_sum((~torch.isfinite(step_loss)).float()).item() == 0
            loop.skipped += not ok
            if loop.skipped > t.max_bad_steps:
                raise NonFiniteLoss(f"{loop.skipped} updates of run {run_dir} had a non-finite loss (the last at "
                                    f"update {step + 1}; train.max_bad_steps={t.max_bad_steps}). {advice(run_dir)}")
        if ok:
            if method.config.grad_clip:
                torch.nn.utils.clip_grad_norm_(trainable, method.config.grad_clip)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        folder.started = True
        extra_logs = method.on_step_end(done, model, optimizer) if ok else {}
        if ok and guided:
            extra_logs = {**(extra_logs or {}), **guide.after_step(done, optimizer)}
        if ok:
            bad |= ~torch.isfinite(step_loss)
            loop.window_sum += step_loss.double()
            loop.window_steps += 1
        if done == start_step + 1 and info.is_main:
            _write_memory(run_dir, model, optimizer, method, cfg, print_table=progress)
        stop = stopper.agreed(info)  # every rank stops after the same update (one scalar all-reduce)
        log_now = _due(done, t.log_every, t.steps)
        eval_now = _due(done, t.eval_every, t.steps)
        save_now = _due(done, t.save_every, t.steps, t.save_steps) or bool(stop)
        if (log_now or eval_now or save_now) and bool(dist.all_reduce_sum(bad.float()).item() > 0):
            raise NonFiniteLoss(f"non-finite training loss at or before update {done} of run {run_dir}; stopped, "
                                f"and no checkpoint was written after it. {advice(run_dir)}")
        if log_now:
            total = float(dist.all_reduce_sum(loop.window_sum.clone()).item())
            mean_loss = total / (loop.window_steps * info.world) if loop.window_steps else None
            tok_s = loop.window_steps * tokens_per_step / max(time.perf_counter() - window_start, 1e-9)
            skipped = {"skipped_steps": loop.skipped} if t.max_bad_steps else {}
            log.write("train", done, loss=mean_loss, lr=optimizer.param_groups[0]["lr"], tokens=done * tokens_per_step,
                      tok_per_s=tok_s, peak_mib=peak_mib(info.device), **skipped,
                      **{k: float(v) for k, v in (extra_logs or {}).items()})
            bar.set_postfix(loss=f"{mean_loss:.3f}" if mean_loss is not None else "n/a", tok_s=f"{tok_s:,.0f}")
            loop.window_sum.zero_()
            loop.window_steps, window_start = 0, time.perf_counter()
        if eval_now:
            val_loss = validate(model, val, info, t.precision, t.eval_loss, shard=t.dist != "fsdp")
            log.write("eval", done, val_loss=val_loss, val_ppl=math.exp(min(val_loss, 700)), tokens=done * tokens_per_step)
        if save_now:
            save_state(run_dir, done, model, optimizer, method, info, cfg, tokens_per_step, loop, val, guide)
        bar.update(1)
        if (stop and done < t.steps) or (stop_after is not None and done >= stop_after):
            break
    bar.close()
    log.close()
    dist.teardown()
    return TrainResult(run_dir, done, val_loss, math.exp(min(val_loss, 700)) if val_loss is not None else None,
                       stopped_by=signal_name(stop) if stop and done < t.steps else "")


def _micro_pass(step, train_model, batches, t, info, extra=None) -> torch.Tensor:
    """Forward and backward over every micro-batch of update ``step``, gradients accumulated in ``.grad``;
    returns the summed LM loss. ``extra(ids, labels)``: a guide's loss term, added before backward."""
    step_loss = torch.zeros((), device=info.device)
    for micro in range(t.grad_accum):
        ids, labels = batches.get(step, micro)
        sync = micro == t.grad_accum - 1 or not isinstance(train_model, nn.parallel.DistributedDataParallel)
        with (train_model.no_sync() if not sync else contextlib.nullcontext()), dist.autocast_context(t.precision, info.device):
            loss = lm_loss(train_model(ids.to(info.device, non_blocking=True)), labels.to(info.device)) / t.grad_accum
            total = loss if extra is None else loss + extra(ids, labels) / t.grad_accum
        total.backward()
        step_loss += loss.detach().float()
    return step_loss


def checked_guide(cfg: RunConfig, method: Method, info: dist.DistInfo):
    """The run's guide after its refusals (FSDP; a method it cannot act on), or None without one."""
    from rankscope.guides.options import build_guide

    guide = build_guide(cfg)
    if guide is None:
        return None
    if cfg.train.dist == "fsdp" and info.distributed:
        raise UserError(f"guide {cfg.guide!r} cannot run under --dist fsdp: it perturbs or reads whole parameters "
                        f"between passes, which sharded parameters do not hold; use --dist ddp (or drop --guide)")
    guide.check(method)
    return guide


def _finished(run_dir: Path, step: int) -> TrainResult:
    from rankscope.training.logging import read_metrics

    evals = [r["val_loss"] for r in read_metrics(run_dir) if r.get("kind") == "eval" and r.get("step") == step]
    val = evals[-1] if evals else None
    return TrainResult(run_dir, step, val, math.exp(min(val, 700)) if val is not None else None)


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="train", unit="step", dynamic_ncols=True)


def _write_memory(run_dir, model, optimizer, method, cfg, print_table: bool) -> None:
    try:
        from rankscope.methods.memory import format_memory_table, memory_summary, memory_table
    except ImportError:
        return
    rows = memory_table(model, optimizer, type(method), method.config, cfg.model_config())
    ckpt.write_json_atomic(run_dir / "memory.json", {"rows": rows, "summary": memory_summary(rows)})
    if print_table:
        print(format_memory_table(rows))
