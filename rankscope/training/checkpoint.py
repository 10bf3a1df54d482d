"""Run folders: self-describing, tensors-only, written atomically.

```
runs/<name>/config.json        the resolved RunConfig
runs/<name>/meta.json          method, package version, git revision, world size, init fingerprint, config hash
runs/<name>/metrics.jsonl      one JSON object per log/eval event (plus TensorBoard events in tb/)
runs/<name>/memory.json        parameter / gradient / optimizer-state accounting vs theory
runs/<name>/checkpoints/step_000100/
    model.safetensors          the method's native weights (swapped layers included)
    optimizer.safetensors      every tensor of optimizer.state_dict() (moments, projectors, counters)
    optimizer.json             the non-tensor rest (param groups, scalar entries)
    method.safetensors         method-own state (ReLoRA merge count ...)
    rng_rank<R>.safetensors    CPU (and CUDA) RNG states of every rank
    train_state.json           step, tokens seen, data position, config hash, package version
```
A checkpoint is first written to a hidden temp folder and then renamed, so a crash never leaves a partial
``step_*`` folder (the resuming process removes a dead writer's temp folders); a failed write (full disk:
an OSError, or safetensors' own SafetensorError) removes its temp folder, leaves the previous checkpoints as
they were and raises :class:`WorkFailed` (exit 1) naming the run, the step, the free space and the last
intact checkpoint. Nothing here unpickles
(safetensors + JSON only).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from rankscope.config import RunConfig, load_config_file
from rankscope.errors import UserError, WorkFailed
from rankscope.safetensors_io import file_mode

STEP_PREFIX = "step_"
TMP_PREFIX, OLD_PREFIX = ".tmp_", ".old_"  # + step folder name + _<pid>: a checkpoint being written / replaced


def step_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"{STEP_PREFIX}{step:06d}"


def list_checkpoints(run_dir: str | Path) -> list[int]:
    """Steps of the complete checkpoints of a run, ascending (temp folders are ignored)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    steps = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith(STEP_PREFIX) and (p / "train_state.json").is_file():
            try:
                steps.append(int(p.name[len(STEP_PREFIX):]))
            except ValueError:
                continue
    return sorted(steps)


def read_run_config(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a rankscope run folder: {path} is missing")
    cfg = RunConfig.from_dict(load_config_file(path), source=str(path))
    cfg.data.read_from(str(path))  # a missing data file is then reported against this config.json
    return cfg


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    tmp.replace(path)


# --- optimizer state <-> tensors + JSON ------------------------------------------------------------

def flatten_optimizer_state(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    for idx, entry in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(entry)
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g and isinstance(g["betas"], list):
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


# --- saving ----------------------------------------------------------------------------------------

def rng_state() -> dict[str, torch.Tensor]:
    state = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            state[f"torch_cuda_{i}"] = s
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch_cpu"])
    cuda = [state[k] for k in sorted(k for k in state if k.startswith("torch_cuda_"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(
    run_dir: Path,
    step: int,
    *,
    model_state: dict[str, torch.Tensor] | None,
    optimizer_state: dict | None,
    method_state: dict[str, torch.Tensor],
    rng_states: list[dict[str, torch.Tensor]],
    train_state: dict[str, Any],
) -> Path:
    """Write one checkpoint atomically (rank 0 passes the states; RNG of every rank is gathered)."""
    final = step_dir(run_dir, step)
    tmp = final.parent / f"{TMP_PREFIX}{final.name}_{os.getpid()}"
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        _write_files(tmp, model_state, optimizer_state, method_state, rng_states, train_state)
    except (OSError, SafetensorError) as exc:  # safetensors reports I/O errors with its own type
        shutil.rmtree(tmp, ignore_errors=True)
        raise WorkFailed(write_failure(run_dir, f"checkpoint step {step} ({final})", exc)) from None
    if final.exists():  # re-saving a step: swap, then delete the old copy
        old = final.parent / f"{OLD_PREFIX}{final.name}_{os.getpid()}"
        final.replace(old)
        tmp.replace(final)
        shutil.rmtree(old)
    else:
        tmp.replace(final)
    return final


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC / EDQUOT, whether raised as an OSError or inside safetensors' own SafetensorError text."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    text = str(exc)
    return any(s in text for s in ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122"))


def _free_space(path: Path) -> str:
    for p in (path, *path.parents):
        if p.exists():
            try:
                return f"{shutil.disk_usage(p).free / 2**20:.1f} MiB free there"
            except OSError:
                break
    return "free space unknown"


def write_failure(run_dir: Path, what: str, exc: BaseException, partial_removed: bool = True) -> str:
    """One paragraph for a failed write in a run: the run, what was not written, why (with the free space),
    the last intact checkpoint, and how to continue."""
    run_dir = Path(run_dir)
    earlier = list_checkpoints(run_dir)
    if isinstance(exc, OSError):
        detail = exc.strerror or str(exc)
    else:
        detail = str(exc).split("I/O error: ")[-1]
    full = is_disk_full(exc)
    why = f"the disk is full ({detail}; {_free_space(run_dir)})" if full else f"the write failed ({detail})"
    intact = (f"the last intact checkpoint is step {earlier[-1]} ({step_dir(run_dir, earlier[-1])})" if earlier
              else "no checkpoint was written before it, so a resume starts from step 0")
    fix = "Free space on that disk" if full else "Fix the cause (e.g. the folder's permissions)"
    removed = "The partial copy was removed and " if partial_removed else "Training stopped; "
    return (f"run {run_dir}: could not write {what}: {why}. {removed}{intact}. {fix}, then repeat the same "
            f"`rankscope train` command with --resume to continue exactly from there.")


def _write_files(tmp: Path, model_state, optimizer_state, method_state, rng_states, train_state) -> None:
    meta = {"format": "rankscope-checkpoint-1"}
    if model_state is not None:
        save_file({k: v.detach().contiguous().cpu() for k, v in model_state.items()}, tmp / "model.safetensors", meta)
    if optimizer_state is not None:
        tensors, rest = flatten_optimizer_state(optimizer_state)
        save_file(tensors, tmp / "optimizer.safetensors", meta)
        (tmp / "optimizer.json").write_text(json.dumps(rest, default=str))
    save_file({k: v.contiguous().cpu() for k, v in method_state.items()}, tmp / "method.safetensors", meta)
    for r, state in enumerate(rng_states):
        save_file(state, tmp / f"rng_rank{r}.safetensors", meta)
    (tmp / "train_state.json").write_text(json.dumps(train_state, indent=2, sort_keys=True))
    for path in tmp.glob("*.safetensors"):  # safetensors writes 0600 files; give them the mode of the JSON
        os.chmod(path, file_mode())


def remove_stale_temp(run_dir: Path) -> list[str]:
    """Clean up after a killed writer (call while holding the run's lock: every temp folder is then stale).

    A ``.old_`` copy whose step folder is missing (killed between the two renames of a re-save) is put back;
    every other temp folder is deleted. Returns the names removed or restored.
    """
    root = Path(run_dir) / "checkpoints"
    # Half-written JSON files of write_json_atomic / the log truncation in the run folder itself.
    done = [p.name for p in Path(run_dir).glob(".*.tmp") if p.is_file()]
    for name in [*done, "metrics.jsonl.tmp"]:
        (Path(run_dir) / name).unlink(missing_ok=True)
    if not root.is_dir():
        return done
    for p in sorted(root.iterdir()):
        if not p.is_dir() or not p.name.startswith((TMP_PREFIX, OLD_PREFIX)):
            continue
        original = root / p.name[len(OLD_PREFIX):].rsplit("_", 1)[0]
        if p.name.startswith(OLD_PREFIX) and not original.exists():
            p.replace(original)
        else:
            shutil.rmtree(p)
        done.append(p.name)
    return done


# --- loading ---------------------------------------------------------------------------------------

def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"checkpoint file {path} is missing: the checkpoint is incomplete; delete its folder "
                        f"and resume from an earlier step")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"checkpoint file {path} is corrupt ({exc}); delete {path.parent} and resume from an "
                        f"earlier checkpoint") from None


def _damaged(path: Path, problem: str) -> UserError:
    return UserError(
        f"checkpoint metadata {path} {problem}. The checkpoint is damaged: restore the file from a backup, or "
        f"delete {path.parent} so that --resume continues from the previous checkpoint."
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _damaged(path, f"is unreadable ({exc})") from None


def read_train_state(run_dir: Path, step: int) -> dict[str, Any]:
    """train_state.json, checked: a JSON object whose ``step`` is this folder's and whose hash is a string."""
    path = step_dir(run_dir, step) / "train_state.json"
    state = _read_json(path)
    expected = f"a JSON object with 'step': {step} (int) and 'config_hash' (string)"
    if not isinstance(state, dict):
        raise _damaged(path, f"holds a {type(state).__name__}, expected {expected}")
    if state.get("step") != step or type(state.get("step")) is not int or not isinstance(state.get("config_hash"), str):
        raise _damaged(path, f"has step={state.get('step')!r}, config_hash={state.get('config_hash')!r}; "
                             f"expected {expected}")
    window = state.get("loss_window", {"sums": [], "steps": 0})
    if not (isinstance(window, dict) and isinstance(window.get("sums"), list)
            and all(isinstance(x, (int, float)) for x in window["sums"]) and type(window.get("steps")) is int):
        raise _damaged(path, f"has loss_window={window!r}; expected {{'sums': [float per rank], 'steps': int}}")
    return state


def _read_optimizer_meta(path: Path) -> dict:
    meta = _read_json(path)
    groups = meta.get("param_groups") if isinstance(meta, dict) else None
    if not (isinstance(groups, list) and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups)
            and isinstance(meta.get("scalars", {}), dict)):
        raise _damaged(path, "has the wrong shape; expected {'param_groups': [{'params': [...], ...}], "
                             "'scalars': {...}} as written by rankscope")
    return meta


def load_checkpoint(run_dir: Path, step: int, rank: int = 0) -> dict[str, Any]:
    d = step_dir(run_dir, step)
    out: dict[str, Any] = {"train_state": read_train_state(run_dir, step)}
    out["model"] = _load_safetensors(d / "model.safetensors")
    opt_meta_path = d / "optimizer.json"
    if opt_meta_path.is_file():
        opt_meta = _read_optimizer_meta(opt_meta_path)
        try:
            out["optimizer"] = unflatten_optimizer_state(_load_safetensors(d / "optimizer.safetensors"), opt_meta)
        except (KeyError, ValueError, TypeError) as exc:
            raise _damaged(opt_meta_path, f"does not match optimizer.safetensors ({exc!r})") from None
    out["method"] = _load_safetensors(d / "method.safetensors")
    rng_path = d / f"rng_rank{rank}.safetensors"
    out["rng"] = _load_safetensors(rng_path) if rng_path.is_file() else None
    return out


def load_model(run_dir: str | Path, step: int | None = None, device: str | torch.device = "cpu"):
    """Rebuild the method's model from the run folder alone and load a checkpoint (default: the last)."""
    from rankscope.models.llama import LlamaLM

    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    steps = list_checkpoints(run_dir)
    if not steps:
        raise UserError(f"run {run_dir} has no complete checkpoint under {run_dir / 'checkpoints'}")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise UserError(f"run {run_dir} has no checkpoint at step {step}; available: {steps}")
    method = cfg.build_method()
    with torch.random.fork_rng(devices=[]):
        model = method.prepare(LlamaLM(cfg.model_config()))
    d = step_dir(run_dir, step)
    try:
        model.load_state_dict(_load_safetensors(d / "model.safetensors"), strict=True)
        method.load_state_dict({k: v for k, v in _load_safetensors(d / "method.safetensors").items()
                                if not k.startswith("guide/")})  # e.g. ReLoRA's merge count (a guide's state apart)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise UserError(f"checkpoint {d} does not match its config.json "
                        f"(model {cfg.model!r}, method {cfg.method!r}): {str(exc).splitlines()[0]}") from None
    return model.to(device).eval(), method
