"""Opening a run folder for training: one writer (the lock), what may be resumed, and nothing left behind
when a start is refused.

A refused start changes nothing: a folder this process created is removed again, an existing one is left
byte-identical. Settings that change the trajectory must match config.json on resume, except the
optimisation settings in :data:`CHANGEABLE` when the user names them (``--allow-change lr,grad_clip``);
such a change rewrites config.json and is recorded in meta.json's ``config_changes``.
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rankscope.config import RunConfig
from rankscope.errors import UserError
from rankscope.training import checkpoint as ckpt
from rankscope.training.lock import RunLock

#: Settings a resume may change when named in ``allow_change`` (leaf names under train.* / method_options.*).
CHANGEABLE = ("lr", "grad_clip", "weight_decay")


def _diff_fields(old: dict, new: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff_fields(a, b, f"{prefix}{key}.")
        elif a != b and not (isinstance(a, list) and isinstance(b, tuple) and list(b) == a):
            out.append((f"{prefix}{key}", a, b))
    return out


def _describe(diffs) -> str:
    return "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diffs[:6])


@dataclass
class RunFolder:
    """The opened run: where to start, the approved config changes, and the lock (rank 0 only)."""

    cfg: RunConfig
    start_step: int
    changes: list[str] = field(default_factory=list)
    lock: RunLock | None = None
    created: list[Path] = field(default_factory=list)  # folders this process made (removed if refused)
    new: bool = False  # this process wrote config.json
    started: bool = False  # at least one update ran

    def record_changes(self, is_main: bool) -> None:
        """After a successful restore: config.json takes the new settings, meta.json records the change."""
        if not (self.changes and is_main):
            return
        run_dir = self.cfg.run_dir
        old_hash = ckpt.read_run_config(run_dir).fingerprint()
        ckpt.write_json_atomic(run_dir / "config.json", self.cfg.to_dict())
        meta_path = run_dir / "meta.json"
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):  # missing or damaged: start a new one rather than lose the change
            meta = {}
        meta = meta if isinstance(meta, dict) else {}
        meta.setdefault("config_changes", []).append({
            "step": self.start_step, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "changes": self.changes,
            "from_hash": old_hash, "to_hash": self.cfg.fingerprint()})
        meta["config_hash"] = self.cfg.fingerprint()
        ckpt.write_json_atomic(meta_path, meta)

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def discard_if_unstarted(self) -> None:
        """A new run that failed before its first update leaves nothing behind (rank 0 holds the lock)."""
        if not (self.new and not self.started and self.lock is not None):
            return
        import shutil

        for name in ("config.json", "meta.json", "memory.json", "metrics.jsonl", "tb"):
            path = self.cfg.run_dir / name
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        self.abandon()

    def abandon(self) -> None:
        """Undo a refused start: release the lock and remove the (empty) folders this process created."""
        self.close()
        for path in reversed(self.created):
            try:
                path.rmdir()
            except OSError:
                break  # not empty: someone else uses it now


def open_run_folder(cfg: RunConfig, resume: bool, is_main: bool, allow_change: tuple[str, ...] = ()) -> RunFolder:
    """Lock and check the run folder (rank 0 decides, the other ranks follow); raises UserError if refused."""
    from rankscope.training.dist import broadcast_object

    bad = sorted(set(allow_change) - set(CHANGEABLE))
    if bad:
        raise UserError(f"--allow-change {','.join(bad)}: only these settings may change on resume: "
                        f"{', '.join(CHANGEABLE)}")
    if allow_change and not resume:
        raise UserError("--allow-change applies to a resumed run; add --resume")
    folder, error = RunFolder(cfg, 0), ""
    if is_main:
        try:
            folder = _open_main(cfg, resume, set(allow_change))
        except UserError as exc:
            error = str(exc)
    step, changes, error = broadcast_object((folder.start_step, folder.changes, error))
    if error:
        raise UserError(error)
    if not is_main:
        folder = RunFolder(cfg, step, changes)
    return folder


def _open_main(cfg: RunConfig, resume: bool, allow: set[str]) -> RunFolder:
    run_dir = cfg.run_dir
    created = [p for p in (run_dir, *run_dir.parents) if not p.exists()][::-1]
    folder = RunFolder(cfg, 0, created=created)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        folder.lock = RunLock(run_dir).acquire()
        folder.start_step, folder.changes = _check(cfg, resume, allow)
    except OSError as exc:
        folder.abandon()
        raise UserError(f"cannot create or lock the run folder {run_dir}: {exc.strerror or exc} ({exc.filename}); "
                        f"choose a writable --out-dir") from None
    except BaseException:
        folder.abandon()
        raise
    if not (run_dir / "config.json").is_file():
        ckpt.write_json_atomic(run_dir / "config.json", cfg.to_dict())
        folder.new = True
    return folder


def _check(cfg: RunConfig, resume: bool, allow: set[str]) -> tuple[int, list[str]]:
    """(step to start from, approved changes) for a locked folder; refuses overwrites and foreign configs."""
    run_dir = cfg.run_dir
    if not (run_dir / "config.json").is_file():
        return 0, []
    if not resume:
        raise UserError(
            f"run folder {run_dir} already exists. Pass --resume to continue it (a run without checkpoints "
            f"restarts from step 0), or choose another --name (nothing was changed)."
        )
    old = ckpt.read_run_config(run_dir)
    diffs = _diff_fields(old.trajectory_dict(), cfg.trajectory_dict())
    refused = [d for d in diffs if d[0].rsplit(".", 1)[-1] not in allow]
    if refused:
        hint = [k for k, _, _ in refused if k.rsplit(".", 1)[-1] in CHANGEABLE]
        raise UserError(
            f"cannot resume {run_dir}: its config.json describes a different run ({_describe(refused)}). Use the "
            f"original settings or a new --name"
            + (f", or add --allow-change {','.join(sorted({k.rsplit('.', 1)[-1] for k in hint}))} to change "
               f"them from the last checkpoint on (recorded in meta.json)." if hint else ".")
        )
    _check_same_files(run_dir, old, cfg)
    steps = ckpt.list_checkpoints(run_dir)
    if steps:
        state = ckpt.read_train_state(run_dir, steps[-1])
        known = {old.fingerprint(), *_past_hashes(run_dir)}
        if state["config_hash"] not in known:
            raise UserError(
                f"checkpoint {ckpt.step_dir(run_dir, steps[-1])} was written by another config (hash "
                f"{state['config_hash']}, config.json has {old.fingerprint()}); refusing to resume from it. "
                f"Delete that checkpoint folder to resume from an earlier one, or start a new --name."
            )
    return (steps[-1] if steps else 0), [f"{k}: {a!r} -> {b!r}" for k, a, b in diffs]


def _check_same_files(run_dir: Path, old: RunConfig, cfg: RunConfig) -> None:
    """The same typed data paths (equal fingerprints) resolved from another directory name other files: refuse."""
    for name in ("train_files", "val_files"):
        was, now = list(getattr(old.data, name)), list(getattr(cfg.data, name))
        if was != now:
            raise UserError(f"cannot resume {run_dir}: its config.json reads data.{name} from {was}, this command "
                            f"from {now} (the same paths typed in another directory). Run the command from the "
                            f"directory the run was started in, or pass the paths config.json holds.")


def _past_hashes(run_dir: Path) -> list[str]:
    """Config hashes this run had before recorded ``--allow-change`` resumes (their checkpoints stay valid)."""
    try:
        meta = json.loads((run_dir / "meta.json").read_text())
        return [c["from_hash"] for c in meta.get("config_changes", [])]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []


def _git_revision() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def write_meta(cfg: RunConfig, init_fingerprint: str, world: int) -> None:
    """meta.json of a new run (kept as it is when a run restarts from step 0)."""
    from rankscope import __version__

    if (cfg.run_dir / "meta.json").is_file():
        return
    meta = {
        "method": cfg.method, "model": cfg.model, "seed": cfg.train.weights_seed,
        "init_seed": cfg.train.weights_seed, "data_seed": cfg.train.order_seed, "world_size": world,
        "package_version": __version__, "git_revision": _git_revision(), "torch_version": torch.__version__,
        "python": platform.python_version(), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "init_fingerprint": init_fingerprint, "config_hash": cfg.fingerprint(),
        "data_label": "embedded corpus (SOTU + Brown + Austen), not C4" if cfg.data.source == "embedded"
        else (cfg.data.dataset or ",".join(cfg.data.typed_paths.get("train_files") or cfg.data.train_files)),
        "effective_method_config": json.loads(json.dumps(cfg.method_config().__dict__, default=str)),
    }
    ckpt.write_json_atomic(cfg.run_dir / "meta.json", meta)
