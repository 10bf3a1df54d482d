"""Study jobs, their exact commands, and ``status.json`` (the record of what ran, failed or was skipped).

``status.json`` is rewritten atomically after every job, so a study killed at any moment leaves a readable
record, and the report can list what is missing and why.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rankscope.config import RunConfig
from rankscope.study.config import LauncherConfig

STAGES = ("train", "analyze", "eval", "ood", "finetune", "predict", "report")
STATES = ("pending", "running", "done", "failed", "skipped", "stopped")  # stopped: by the study's stop; resumable


@dataclass
class Job:
    """One unit of study work; ``command`` is set for training jobs (they run in their own process)."""

    id: str
    stage: str
    run: str = ""
    command: tuple[str, ...] = ()
    state: str = "pending"
    seconds: float = 0.0  # wall time of the work that produced the current result (kept when skipped)
    error: str = ""
    checkpoint: int | None = None  # a stopped training job: the step of its last checkpoint (a re-run resumes)

    def describe(self) -> str:
        cmd = f"\n    {shlex.join(self.command)}" if self.command else ""
        return f"[{self.stage}] {self.id}{cmd}"


def train_command(config_path: Path, launcher: LauncherConfig) -> tuple[str, ...]:
    """``rankscope train --resume --quiet`` on one run config, under torchrun when several processes.

    ``--resume`` on a fresh folder starts it, so the same command starts, resumes or no-ops a run.
    """
    tail = ("-m", "rankscope", "train", "--config", str(config_path), "--resume", "--quiet")
    if launcher.nproc > 1 or launcher.kind == "torchrun":
        return (sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={launcher.nproc}", *tail)
    return (sys.executable, *tail)


def run_finished(cfg: RunConfig) -> bool:
    """True when the run folder holds this config's final checkpoint (nothing left to train)."""
    from rankscope.training.checkpoint import list_checkpoints, read_run_config

    run_dir = cfg.run_dir
    if not (run_dir / "config.json").is_file():
        return False
    try:
        if read_run_config(run_dir).fingerprint() != cfg.fingerprint():
            return False  # a different run lives there: let `train --resume` explain the conflict
    except Exception:  # noqa: BLE001 - an unreadable folder is "not finished"; training will say why
        return False
    steps = list_checkpoints(run_dir)
    return bool(steps) and steps[-1] == cfg.train.steps


def child_env() -> dict[str, str]:
    """Environment for job processes: the same rankscope the study imports, even when not installed."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class StatusBook:
    """The jobs of one study invocation, persisted to ``status.json`` after every change."""

    def __init__(self, path: Path, jobs: list[Job]) -> None:
        self.path = path
        self.jobs = {j.id: j for j in jobs}
        self.previous = self._read_previous()
        self.started = time.strftime("%Y-%m-%dT%H:%M:%S")

    def _read_previous(self) -> dict[str, dict[str, Any]]:
        try:
            return {j["id"]: j for j in json.loads(self.path.read_text()).get("jobs", [])}
        except (OSError, ValueError, KeyError, TypeError):
            return {}

    def previous_seconds(self, job_id: str) -> float:
        """Seconds the last successful execution of this job took (so skipped work keeps its cost)."""
        prev = self.previous.get(job_id, {})
        return float(prev.get("seconds") or 0.0) if prev.get("state") in ("done", "skipped") else 0.0

    def update(self, job: Job, state: str, seconds: float | None = None, error: str = "") -> None:
        job.state, job.error = state, error
        if seconds is not None:
            job.seconds = round(seconds, 3)
        self.write()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = {"started": self.started, "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "jobs": [{k: v for k, v in asdict(j).items() if k != "command"} | {"command": shlex.join(j.command)}
                         for j in self.jobs.values()]}
        write_json_atomic(self.path, body)

    def failed(self) -> list[Job]:
        return [j for j in self.jobs.values() if j.state == "failed"]

    def stage_seconds(self) -> dict[str, float]:
        out = {s: 0.0 for s in STAGES}
        for j in self.jobs.values():
            out[j.stage] = round(out[j.stage] + j.seconds, 3)
        return out


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write to a temp name, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    tmp.replace(path)
