"""Downstream tasks of the user's own domain: a JSON-lines task file, or an lm-eval task (name or YAML).

A model trained on one's own text should be measured on one's own domain, not only on the embedded corpus.

* ``--task-file FILE`` (``rankscope eval``): one multiple-choice item per line,
  ``{"context": str, "choices": [str, str, ...], "answer": int | str}`` (``answer`` = 0-based index into
  ``choices``, or the correct choice's text). Scored by the native scorer exactly like the shipped tasks
  (choices after a space, ``acc`` and ``acc_norm``, bootstrap CIs, chance and majority-class rates); the task
  is named after the file's stem. The whole file is checked before any model is loaded: a problem is a
  UserError naming the file, the line and the field.
* ``--lm-eval-task NAME|FILE.yaml``: through lm-evaluation-harness (an optional extra, imported lazily),
  with the same model wrapper as ``--lm-eval`` (downstream/lm_eval_adapter.py). A YAML file may point its
  ``dataset_kwargs.data_files`` at local data and then runs offline; a registered task name usually needs the
  hub. Per-item correctness comes from lm-eval's samples, so CIs are bootstrapped like the native ones.

Each source is its own task set (the rows' ``note``), so its average never mixes with another's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from rankscope.errors import UserError

FORMAT = ('one JSON object per line: {"context": "...", "choices": ["...", "..."], "answer": 0} '
          "(answer = 0-based index into choices, or the correct choice's text)")


def _bad(path: Path, line: int, what: str) -> UserError:
    return UserError(f"task file {path}, line {line}: {what}. Expected {FORMAT}; fix that line (or remove it) and "
                     "run again.")


def load_task_file(path: str | Path) -> list[dict]:
    """Items ``{context, choices, label}`` of a user task file, every line checked (UserError on the first bad)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"task file {p} does not exist (--task-file expects a JSON-lines file; {FORMAT})")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise UserError(f"task file {p} is not UTF-8 text (byte {exc.start}); save it as UTF-8 JSON lines") from None
    items = []
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except ValueError as exc:
            raise _bad(p, n, f"not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise _bad(p, n, f"a JSON {type(obj).__name__}, not an object")
        missing = [k for k in ("context", "choices", "answer") if k not in obj]
        if missing:
            raise _bad(p, n, f"field(s) {', '.join(missing)} missing")
        context, choices, answer = obj["context"], obj["choices"], obj["answer"]
        if not isinstance(context, str):
            raise _bad(p, n, f"field 'context' is a {type(context).__name__}, not a string")
        if (not isinstance(choices, list) or len(choices) < 2
                or not all(isinstance(c, str) and c.strip() for c in choices)):
            raise _bad(p, n, "field 'choices' must be a list of at least 2 non-empty strings")
        if isinstance(answer, bool) or not isinstance(answer, (int, str)):
            raise _bad(p, n, f"field 'answer' is a {type(answer).__name__}; give an index or the choice's text")
        if isinstance(answer, int):
            if not 0 <= answer < len(choices):
                raise _bad(p, n, f"field 'answer' = {answer} is outside 0..{len(choices) - 1} (0-based index)")
            label = answer
        elif answer in choices:
            label = choices.index(answer)
        else:
            raise _bad(p, n, f"field 'answer' = {answer!r} is not one of the choices")
        items.append({"context": context, "choices": list(choices), "label": label})
    if not items:
        raise UserError(f"task file {p} has no items; {FORMAT}")
    return items


def check_task_sources(task_files: Sequence[str | Path], lm_eval_tasks: Sequence[str]) -> dict[str, list[dict]]:
    """Validate everything named on the command line before any model is loaded: {task name: items}."""
    loaded: dict[str, list[dict]] = {}
    for f in task_files:
        name = Path(f).stem
        if name in loaded:
            raise UserError(f"two --task-file files are named {name!r}; task names come from the file stem, so "
                            "rename one")
        loaded[name] = load_task_file(f)
    for spec in lm_eval_tasks:
        if spec.endswith((".yaml", ".yml")) and not Path(spec).is_file():
            raise UserError(f"--lm-eval-task {spec}: the YAML file does not exist")
        _lm_eval_task_name(spec)  # a YAML without a task name fails here, before any model is loaded
    if lm_eval_tasks:
        from rankscope.downstream.lm_eval_adapter import _import_lm_eval

        _import_lm_eval()  # a clear "not installed" error before any work
    return loaded


def score_task_file(model: nn.Module, tokenizer, name: str, items: list[dict], *, max_items: int | None,
                    seed: int, bootstrap_iters: int) -> list:
    """TaskScores (acc, acc_norm) of one user task with the native scorer, plus that task set's avg_acc."""
    from rankscope.downstream.evaluate import _summarise, average_score
    from rankscope.downstream.scoring import score_choices, subsample

    ids = subsample(len(items), max_items, seed)
    items = [items[i] for i in ids]
    res = score_choices(model, tokenizer, items, " ")
    scores = [_summarise(name, m, getattr(res, m), bootstrap_iters, seed, {}, items, ids, margin)
              for m, margin in (("acc", res.margin), ("acc_norm", res.margin_norm))]
    return scores + average_score(scores)


def _lm_eval_task_name(spec: str) -> tuple[str, str | None]:
    """(task name, include folder) of ``--lm-eval-task``: a registered name, or a YAML file's ``task:``."""
    if not spec.endswith((".yaml", ".yml")):
        return spec, None
    import yaml

    path = Path(spec).resolve()
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"--lm-eval-task {spec}: not a readable YAML file ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("task"), str):
        raise UserError(f"--lm-eval-task {spec}: the YAML has no 'task:' name (an lm-eval task config needs one)")
    return doc["task"], str(path.parent)


def score_lm_eval_task(model: nn.Module, tokenizer, spec: str, *, max_items: int | None, seed: int,
                       bootstrap_iters: int) -> list:
    """TaskScores of one lm-eval task (name or YAML), from lm-eval's per-sample results."""
    from rankscope.downstream.evaluate import _summarise, average_score
    from rankscope.downstream.lm_eval_adapter import _import_lm_eval, make_lm

    _import_lm_eval()
    from lm_eval import evaluator
    from lm_eval.tasks import TaskManager

    name, include = _lm_eval_task_name(spec)
    # a YAML's folder alone: indexing lm-eval's thousands of built-in tasks costs about a minute
    manager = TaskManager(include_path=include, include_defaults=False) if include else TaskManager()
    if name not in manager.all_tasks:
        raise UserError(f"--lm-eval-task {spec}: lm-eval knows no task {name!r}"
                        + (f" (the YAML's folder {include} was searched too)" if include else ""))
    try:
        res = evaluator.simple_evaluate(model=make_lm(model, tokenizer), tasks=[name], task_manager=manager,
                                        num_fewshot=0, limit=max_items, log_samples=True, bootstrap_iters=0,
                                        random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                                        fewshot_random_seed=seed)
    except ConnectionError as exc:
        raise UserError(f"--lm-eval-task {spec}: lm-eval could not download the task's data ({exc}); point the "
                        "task's dataset at local files in a YAML, or run with internet access") from None
    scores = []
    for task, samples in (res.get("samples") or {}).items():
        for metric in ("acc", "acc_norm"):
            scored = [(k, s) for k, s in enumerate(samples) if metric in s]
            correct = np.array([float(s[metric]) for _, s in scored])
            if len(correct):
                items = [_item(s) for s in samples]
                ids = [int(s.get("doc_id", k)) for k, s in scored]  # lm-eval's document index: same items, same id
                scores.append(_summarise(task, metric, correct, bootstrap_iters, seed, {},
                                         [it for it in items if it is not None], ids))
    if not scores:
        raise UserError(f"--lm-eval-task {spec}: lm-eval returned no acc samples (only multiple-choice "
                        "log-likelihood tasks can be scored)")
    return scores + average_score(scores)


def _item(sample: dict[str, Any]) -> dict | None:
    """{choices, label} of one lm-eval sample, for the chance and majority-class rates."""
    args = [a.get("arguments") if isinstance(a, dict) else a for a in sample.get("arguments") or []]
    choices = [str(a[1]) for a in args if isinstance(a, (list, tuple)) and len(a) == 2]
    target = sample.get("target")
    if len(choices) < 2 or not isinstance(target, int) or not 0 <= target < len(choices):
        return None
    return {"context": "", "choices": choices, "label": target}
