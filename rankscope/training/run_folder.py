"""Creating, validating and describing run folders (what may be resumed, and what must not be touched)."""

from __future__ import annotations

import json
import platform
import subprocess
import time
from pathlib import Path

import torch

from rankscope.config import RunConfig
from rankscope.errors import UserError
from rankscope.training import checkpoint as ckpt


def _diff_fields(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff_fields(a, b, f"{prefix}{key}.")
        elif a != b and not (isinstance(a, list) and isinstance(b, tuple) and list(b) == a):
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def prepare_run_folder(cfg: RunConfig, resume: bool, is_main: bool) -> int:
    """Return the step to start from (0 for a new run). Refuses to overwrite or to resume a different config.

    Rank 0 decides and the other ranks follow, so no rank can see a folder another rank just created.
    """
    from rankscope.training.dist import broadcast_object

    outcome: tuple[int, str] = (0, "")
    if is_main:
        try:
            outcome = (_check_and_create(cfg, resume), "")
        except UserError as exc:
            outcome = (0, str(exc))
    step, error = broadcast_object(outcome)
    if error:
        raise UserError(error)
    return step


def _check_and_create(cfg: RunConfig, resume: bool) -> int:
    run_dir = cfg.run_dir
    config_path = run_dir / "config.json"
    if config_path.is_file():
        if not resume:
            raise UserError(
                f"run folder {run_dir} already exists. Pass --resume to continue it, or choose another --name "
                f"(nothing was changed)."
            )
        old = ckpt.read_run_config(run_dir)
        if old.fingerprint() != cfg.fingerprint():
            diffs = _diff_fields(old.to_dict(), cfg.to_dict())
            raise UserError(
                f"cannot resume {run_dir}: its config.json describes a different run "
                f"({'; '.join(diffs[:6]) or 'config hash differs'}). Use the original settings or a new --name."
            )
        steps = ckpt.list_checkpoints(run_dir)
        if not steps:
            return 0
        state = ckpt.read_train_state(run_dir, steps[-1])
        if state.get("config_hash") != cfg.fingerprint():
            raise UserError(
                f"checkpoint {ckpt.step_dir(run_dir, steps[-1])} was written by another config "
                f"(hash {state.get('config_hash')} vs {cfg.fingerprint()}); refusing to resume from it."
            )
        return steps[-1]
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt.write_json_atomic(config_path, cfg.to_dict())
    return 0


def _git_revision() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def write_meta(cfg: RunConfig, init_fingerprint: str, world: int) -> None:
    from rankscope import __version__

    meta = {
        "method": cfg.method, "model": cfg.model, "seed": cfg.train.seed, "world_size": world,
        "package_version": __version__, "git_revision": _git_revision(), "torch_version": torch.__version__,
        "python": platform.python_version(), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "init_fingerprint": init_fingerprint, "config_hash": cfg.fingerprint(),
        "data_label": "embedded corpus (SOTU + Brown + Austen), not C4" if cfg.data.source == "embedded"
        else (cfg.data.dataset or ",".join(cfg.data.train_files)),
        "effective_method_config": json.loads(json.dumps(cfg.method_config().__dict__, default=str)),
    }
    ckpt.write_json_atomic(cfg.run_dir / "meta.json", meta)
