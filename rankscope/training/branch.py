"""Cooldown branches: an ordinary run folder that continues a WSD parent's stable-phase checkpoint with a decay.

    from rankscope.training.branch import create_branch
    cfg = create_branch("runs/galore_s0", step=40, cooldown=10)    # runs/galore_s0_b40 (budget 50)
    train(cfg, resume=True)                                          # trains updates 41..50 with the decay

The branch folder starts as a copy of the parent's ``step_<s>`` checkpoint (hard links where possible), its
metrics up to s (or of its latest checkpoint before s, whence the branch re-trains the constant-rate
updates up to s, identical to the parent's), and a ``config.json`` that is the parent's config with ``steps = s + cooldown``,
``schedule = wsd``, ``decay_steps = cooldown`` and the parent's absolute warmup. Its ``meta.json`` is the
parent's plus ``branch: {parent, parent_dir, step, cooldown}``. Training it is a plain resume, so it is
resumable, bit-exact, and every command (analyze, eval, export-hf) treats it as any run folder. A branch is
created once; a second call returns the existing folder's config (after checking it matches).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

from rankscope.config import RunConfig
from rankscope.errors import UserError
from rankscope.training import checkpoint as ckpt

BRANCH_COPY = ("memory.json",)


def branch_name(parent: str, step: int) -> str:
    return f"{parent}_b{step}"


def branch_config(parent: RunConfig, step: int, cooldown: int, name: str = "", out_dir: str = "",
                  decay_shape: str = "", save_steps: tuple[int, ...] = ()) -> RunConfig:
    """The branch's RunConfig: the parent's trajectory up to ``step``, then ``cooldown`` decaying updates."""
    t = parent.train
    if t.schedule != "wsd":
        raise UserError(f"cannot branch run {parent.name!r}: it uses schedule={t.schedule!r}; cooldown branches "
                        f"need a warmup-stable-decay parent (train.schedule=wsd)")
    if step < max(t.warmup, 1):
        raise UserError(f"cannot branch run {parent.name!r} at step {step}: a cooldown starts after the warmup "
                        f"(step >= {max(t.warmup, 1)}); the copied checkpoint comes from the stable phase")
    if cooldown < 1:
        raise UserError(f"cooldown branch of {parent.name!r} at step {step}: cooldown must be >= 1 update, "
                        f"got {cooldown}")
    total = step + cooldown
    train = replace(t, steps=total, warmup_steps=t.warmup, schedule="wsd", decay_steps=cooldown,
                    decay_shape=decay_shape or t.decay_shape, save_every=0,
                    save_steps=tuple(s for s in save_steps if step < s < total),
                    eval_every=t.eval_every if t.eval_every and t.eval_every < cooldown else 0)
    return replace(parent, name=name or branch_name(parent.name, step), out_dir=out_dir or parent.out_dir,
                   train=train)


def create_branch(parent_dir: str | Path, step: int, cooldown: int, name: str = "", out_dir: str = "",
                  decay_shape: str = "", save_steps: tuple[int, ...] = ()) -> RunConfig:
    """Lay out the branch folder (atomically) and return its config; train it with ``train(cfg, resume=True)``."""
    parent_dir = Path(parent_dir)
    parent = ckpt.read_run_config(parent_dir)
    cfg = branch_config(parent, step, cooldown, name, out_dir or str(parent_dir.parent), decay_shape, save_steps)
    run_dir = cfg.run_dir
    if (run_dir / "config.json").is_file():
        old = ckpt.read_run_config(run_dir)
        if old.fingerprint() != cfg.fingerprint():
            raise UserError(f"branch folder {run_dir} exists but describes another branch (config hash "
                            f"{old.fingerprint()}, expected {cfg.fingerprint()}); delete it or choose another name")
        return replace(cfg, train=replace(cfg.train, save_steps=old.train.save_steps, eval_every=old.train.eval_every))
    stable_end = parent.train.steps - parent.train.decay
    usable = [c for c in ckpt.list_checkpoints(parent_dir) if c <= min(step, stable_end)]
    if not usable:
        raise UserError(f"parent run {parent_dir} has no checkpoint at or before step {step} in its stable phase "
                        f"(it has {ckpt.list_checkpoints(parent_dir) or 'none'}); add {step} to its save_steps")
    start = usable[-1]  # the branch re-trains start..step at the constant rate (the parent's trajectory)
    src = ckpt.step_dir(parent_dir, start)
    tmp = run_dir.parent / f".tmp_branch_{run_dir.name}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    dest = ckpt.step_dir(tmp, start)
    dest.parent.mkdir(parents=True)
    shutil.copytree(src, dest, copy_function=_link_or_copy)
    state_path = dest / "train_state.json"
    (state_path).unlink()  # a hard link: rewrite a fresh file, never the parent's
    state = ckpt.read_train_state(parent_dir, start)
    state.update(config_hash=cfg.fingerprint(), branched_from=str(parent_dir.resolve()))
    state_path.write_text(json.dumps(state, indent=2, sort_keys=True))
    for name_ in BRANCH_COPY:
        if (parent_dir / name_).is_file():
            shutil.copy2(parent_dir / name_, tmp / name_)
    _copy_metrics(parent_dir / "metrics.jsonl", tmp / "metrics.jsonl", start)
    meta = json.loads((parent_dir / "meta.json").read_text()) if (parent_dir / "meta.json").is_file() else {}
    meta.update(config_hash=cfg.fingerprint(), branch={
        "parent": parent.name, "parent_dir": str(parent_dir.resolve()), "step": step, "cooldown": cooldown,
        "budget": step + cooldown, "copied_checkpoint": start, "decay_shape": cfg.train.decay_shape})
    ckpt.write_json_atomic(tmp / "meta.json", meta)
    ckpt.write_json_atomic(tmp / "config.json", cfg.to_dict())
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp.replace(run_dir)
    return cfg


def branch_info(run_dir: str | Path) -> dict | None:
    """``meta.json``'s ``branch`` record (parent, step, cooldown, budget), or None for a run that is no branch."""
    try:
        return json.loads((Path(run_dir) / "meta.json").read_text()).get("branch")
    except (OSError, ValueError, AttributeError):
        return None


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _copy_metrics(src: Path, dst: Path, step: int) -> None:
    """The parent's metric lines up to the branch step, so the branch's curve starts at the beginning."""
    if not src.is_file():
        return
    keep = []
    for line in src.read_text().splitlines():
        try:
            if int(json.loads(line).get("step", 0)) <= step:
                keep.append(line)
        except (ValueError, TypeError, AttributeError):
            continue
    dst.write_text("".join(f"{line}\n" for line in keep))
