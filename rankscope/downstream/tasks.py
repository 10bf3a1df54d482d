"""The shipped offline tasks: names, items and the manifest (chance level, bigram floor, provenance).

Files live in ``rankscope/downstream/assets/`` and are rebuilt by ``scripts/build_tasks.py``. Each JSONL line
is one item; multiple-choice items carry ``context``/``choices``/``label`` (read by both the native scorer and
lm-eval), probe items carry ``text``/``label``/``part``.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path

from rankscope.errors import UserError

MANIFEST = "tasks_manifest.json"
SOURCE_NOTE = "offline tasks from held-out embedded-corpus text (not hub benchmarks)"  # the rows' task set


def assets_dir() -> Path:
    return Path(str(resources.files("rankscope.downstream").joinpath("assets")))


@functools.cache
def manifest() -> dict:
    path = assets_dir() / MANIFEST
    if not path.is_file():
        raise UserError(f"task manifest {path} is missing; rebuild the tasks with `python scripts/build_tasks.py`")
    return json.loads(path.read_text(encoding="utf-8"))


def task_names(kind: str | None = None) -> list[str]:
    """Shipped task names, optionally only one kind (``minimal_pair`` | ``multiple_choice`` | ``probe``)."""
    return [name for name, t in manifest()["tasks"].items() if kind is None or t["kind"] == kind]


def task_info(name: str) -> dict:
    tasks = manifest()["tasks"]
    if name not in tasks:
        raise UserError(f"unknown downstream task {name!r}; shipped tasks: {', '.join(tasks)}")
    return tasks[name]


def task_file(name: str) -> Path:
    return assets_dir() / task_info(name)["file"]


@functools.cache
def _read(path: str) -> tuple[dict, ...]:
    with open(path, encoding="utf-8") as fh:
        return tuple(json.loads(line) for line in fh if line.strip())


def load_items(name: str) -> list[dict]:
    """All items of a shipped task (shared cache: copy before mutating)."""
    return list(_read(str(task_file(name))))


def resolve_tasks(tasks: list[str] | tuple[str, ...] | None) -> list[str]:
    """``None`` means every shipped task; unknown names are a UserError listing the valid ones."""
    if tasks is None:
        return task_names()
    for name in tasks:
        task_info(name)
    return list(tasks)
