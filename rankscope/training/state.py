"""What a checkpoint holds beyond the weights, and the checks before one is written.

A checkpoint is written only if its weights are finite *and* their loss on a held-out micro-batch is finite,
so "the last good checkpoint" is one a run can continue from. Besides model, optimizer, method and RNG
state, ``train_state.json`` keeps the loss-averaging window (per rank) and the count of skipped updates, so
the losses logged after a resume equal an uninterrupted run's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rankscope.errors import UserError
from rankscope.models.llama import lm_loss
from rankscope.training import checkpoint as ckpt
from rankscope.training import dist

#: Optimizer group entries that come from the config, not the trajectory: re-applied after a changed resume.
CONFIG_GROUP_KEYS = ("base_lr", "weight_decay")


class NonFiniteLoss(UserError):
    """Training produced NaN/inf; the run stopped and its last good checkpoint is intact."""


@dataclass
class LoopState:
    """Counters the loop carries between steps and across a resume."""

    window_sum: torch.Tensor  # this rank's Σ step losses since the last train log (float64)
    window_steps: int = 0
    skipped: int = 0  # updates skipped for a non-finite loss (train.max_bad_steps)


def advice(run_dir) -> str:
    """How to continue after a non-finite loss: the followable version of "lower the learning rate"."""
    steps = ckpt.list_checkpoints(run_dir)
    where = (f"The last good checkpoint is step {steps[-1]} (finite weights and held-out loss)." if steps else
             "No checkpoint was written yet, so a resume restarts from step 0.")
    return (f"{where} To continue with safer settings, repeat the command with --resume, the new values and "
            f"--allow-change, e.g. `--resume --lr 1e-4 --allow-change lr` or `--resume --set grad_clip=1.0 "
            f"--allow-change grad_clip` (the change is recorded in meta.json).")


@torch.inference_mode()
def heldout_loss(model: nn.Module, val, info: dist.DistInfo, precision: str) -> float:
    """Loss of the current weights on the first held-out micro-batch (every rank runs it: FSDP-safe)."""
    first = next(iter(val.chunks()), None)
    if first is None:  # no held-out data at all: the weights check alone decides
        return 0.0
    ids, labels = first
    was_training = model.training
    model.eval()
    with dist.autocast_context(precision, info.device):
        loss = lm_loss(model(ids.to(info.device)), labels.to(info.device)).float()
    model.train(was_training)
    bad = (~torch.isfinite(loss)).float()
    return float(loss) if dist.all_reduce_sum(bad).item() == 0 else float("nan")


def _gather(obj, info: dist.DistInfo) -> list:
    if not info.distributed:
        return [obj]
    gathered: list = [None] * info.world
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


#: Key prefix of a guide's tensors inside method.safetensors (rankscope/guides/base.py).
GUIDE_PREFIX = "guide/"


def save_state(run_dir, step: int, model, optimizer, method, info, cfg, tokens_per_step: int, loop: LoopState,
               val, guide=None) -> None:
    """Checkpoint ``step`` (collective: every rank calls it); refuses weights whose held-out loss is not finite."""
    # Each rank checks its own shard (FSDP parameters are DTensors; .to_local() is the shard).
    local = [p.to_local() if hasattr(p, "to_local") else p for p in model.parameters()]
    finite = torch.stack([torch.isfinite(p).all() for p in local]).all().float()
    weights_ok = dist.all_reduce_sum(finite).item() == info.world
    loss = heldout_loss(model, val, info, cfg.train.precision) if weights_ok else float("nan")
    if loss != loss:
        raise NonFiniteLoss(f"after update {step} of run {run_dir} the weights give a non-finite loss on held-out "
                            f"data; checkpoint {step} was not written. {advice(run_dir)}")
    if cfg.train.dist == "fsdp" and info.distributed:
        from rankscope.training.fsdp import full_states

        model_state, opt_state = full_states(model, optimizer)
    else:
        model_state, opt_state = model.state_dict(), optimizer.state_dict()
    rngs = _gather(ckpt.rng_state(), info)
    sums = _gather(float(loop.window_sum), info)
    if info.is_main:
        ckpt.save_checkpoint(
            run_dir, step, model_state=model_state, optimizer_state=opt_state,
            method_state={**method.state_dict(),
                          **{GUIDE_PREFIX + k: v for k, v in (guide.state_dict() if guide else {}).items()}},
            rng_states=rngs,
            train_state={"step": step, "tokens_seen": step * tokens_per_step,
                         "data_position": step * tokens_per_step // cfg.data.seq_len,
                         "config_hash": cfg.fingerprint(), "package_version": _version(), "world_size": info.world,
                         "heldout_loss": loss, "loss_window": {"sums": sums, "steps": loop.window_steps},
                         "skipped_steps": loop.skipped},
        )
    if info.distributed:
        torch.distributed.barrier()


def restore_state(run_dir, step: int, model, optimizer, method, info, cfg, guide=None) -> LoopState:
    """Load checkpoint ``step`` into the freshly built objects; damaged or mismatched files are user errors."""
    loaded = ckpt.load_checkpoint(run_dir, step, info.rank)
    fresh = [{k: g[k] for k in CONFIG_GROUP_KEYS if k in g} for g in optimizer.param_groups]
    where = ckpt.step_dir(run_dir, step)
    try:
        if cfg.train.dist == "fsdp" and info.distributed:
            from rankscope.training.fsdp import load_full_states

            load_full_states(model, optimizer, loaded["model"], loaded.get("optimizer"))
        else:
            model.load_state_dict(loaded["model"], strict=True)
            if "optimizer" in loaded:
                optimizer.load_state_dict(loaded["optimizer"])
        own = {k: v for k, v in loaded["method"].items() if not k.startswith(GUIDE_PREFIX)}
        method.load_state_dict(own)
        if guide is not None:
            guide.load_state_dict({k[len(GUIDE_PREFIX):]: v.to(info.device) for k, v in loaded["method"].items()
                                   if k.startswith(GUIDE_PREFIX)})
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:
        raise UserError(f"checkpoint {where} does not fit this run's model, optimizer or method state "
                        f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); the checkpoint is "
                        f"damaged: delete {where} so that --resume continues from the previous one.") from None
    state = loaded["train_state"]
    if state["config_hash"] != cfg.fingerprint():  # an --allow-change resume: the new settings win
        for group, values in zip(optimizer.param_groups, fresh):
            group.update(values)
    if loaded["rng"] is not None:
        ckpt.set_rng_state(loaded["rng"])
    window = state.get("loss_window", {"sums": [], "steps": 0})
    sums = window["sums"]
    if len(sums) == info.world:
        mine = sums[info.rank]
    else:  # world size changed: rank 0 carries the window's total, rescaled to the new world
        mine = sum(sums) * info.world / len(sums) if sums and info.is_main else 0.0
    loop = LoopState(torch.tensor(mine, dtype=torch.float64, device=info.device), window["steps"])
    loop.skipped = int(state.get("skipped_steps", 0))
    return loop


def _version() -> str:
    from rankscope import __version__

    return __version__
