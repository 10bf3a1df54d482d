"""Downstream evaluation of models and run folders into the long-format results table.

``evaluate_model`` scores one in-memory model on the shipped offline tasks (native scorer, no lm-eval);
``evaluate_runs`` does it for checkpoints of run folders and writes ``<run_dir>/results/downstream.parquet``
(+ csv) and, next to it, one row per scored item (``downstream_items.parquet``, downstream/item_rows.py). Rows: metric ``acc``/``acc_norm``, ``scope="task"``, ``name=<task>``, stderr and a bootstrap 95 % CI,
plus ``avg_acc`` (macro average of the main tasks' ``acc``, defined once in downstream/average.py; the
``agreement_hard`` subset is reported but not averaged). Every row says in ``note`` that the tasks come from held-out text of the embedded corpus, so they
are never mistaken for the paper's hub benchmarks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from rankscope.diagnostics.table import Row, rows_to_frame, write_table
from rankscope.downstream import tasks as T
from rankscope.downstream.average import averaged_tasks
from rankscope.downstream.item_rows import empty as empty_items
from rankscope.downstream.item_rows import score_item_rows, write_items
from rankscope.downstream.probe import score_probe
from rankscope.downstream.scoring import BOOTSTRAP_ITERS, mean_stderr, score_choices, subsample
from rankscope.errors import UserError

DEFAULT_MAX_ITEMS = 300  # per task (the CLI default too): all tasks of a tiny checkpoint in 27 s on 2 idle cores
SOURCE_NOTE = T.SOURCE_NOTE


@dataclass
class TaskScore:
    """One metric of one task: value, stderr, bootstrap CI and the bootstrap draws (for macro averages)."""

    task: str
    metric: str
    value: float
    stderr: float
    ci_low: float
    ci_high: float
    n: int
    draws: np.ndarray = field(repr=False)
    chance: float | None = None  # expected accuracy of a uniform guess among the choices
    baseline: float | None = None  # the task's bigram (or bag-of-words) model, from the manifest
    majority: float | None = None  # accuracy of always giving the most common answer (classification tasks)
    correct: np.ndarray | None = field(default=None, repr=False)  # per item 0/1 (None: an average, no items)
    item_ids: np.ndarray | None = field(default=None, repr=False)  # index of each scored item in the task's list
    margin: np.ndarray | None = field(default=None, repr=False)  # per item score margin (downstream/item_rows.py)


def answer_rates(items: Sequence[dict]) -> tuple[float | None, float | None]:
    """(chance, majority-class rate) of the scored items.

    chance = mean of 1/len(choices) (probe items: 1/number of classes). The majority-class rate is the accuracy
    of always giving the most common correct answer; it exists only when every item offers the same answers
    (a classification such as the genre probe or a yes/no task): where the choices change with every item
    there is no class to favour, and chance is the floor.
    """
    if not items:
        return None, None
    if "text" in items[0] and "choices" not in items[0]:  # probe: the test part is what gets scored
        labels = [it["label"] for it in items if it.get("part", "test") == "test"] or [it["label"] for it in items]
        counts = np.unique(np.asarray([str(x) for x in labels]), return_counts=True)[1]
        n_classes = len({str(it["label"]) for it in items})
        return 1.0 / max(n_classes, 1), float(counts.max() / len(labels))
    chance = float(np.mean([1.0 / len(it["choices"]) for it in items]))
    if len({tuple(it["choices"]) for it in items}) != 1:
        return chance, None
    answers = [str(it["choices"][int(it["label"])]) for it in items]
    counts = np.unique(np.asarray(answers), return_counts=True)[1]
    return chance, float(counts.max() / len(answers))


def _summarise(task: str, metric: str, correct: np.ndarray, iters: int, seed: int, info: dict,
               items: Sequence[dict] = (), ids: Sequence[int] | None = None,
               margin: np.ndarray | None = None) -> TaskScore:
    """A task's score with its bootstrap CI; keeps the per-item correctness (and ids, margins) for the item file."""
    rng = np.random.default_rng(seed)
    draws = correct[rng.integers(0, len(correct), size=(iters, len(correct)))].mean(axis=1)
    lo, hi = np.percentile(draws, [2.5, 97.5])
    base = info.get("baseline", {}).get(metric)
    chance, majority = answer_rates(items) if items else (info.get("chance"), None)
    return TaskScore(task, metric, float(correct.mean()), mean_stderr(correct), float(lo), float(hi),
                     len(correct), draws, chance, base, majority, np.asarray(correct),
                     None if ids is None else np.asarray(ids, dtype=np.int64), margin)


def evaluate_model(model: nn.Module, tokenizer, tasks: Sequence[str] | None = None, *,
                   max_items: int | None = DEFAULT_MAX_ITEMS, seed: int = 0,
                   bootstrap_iters: int = BOOTSTRAP_ITERS, batch_tokens: int = 16384) -> list[TaskScore]:
    """Score one model on the offline tasks; each task is subsampled to ``max_items`` with a fixed seed."""
    names = T.resolve_tasks(tasks)
    scores: list[TaskScore] = []
    for name in names:
        info = T.task_info(name)
        items = T.load_items(name)
        if info["kind"] == "probe":
            ids = _probe_subsample(items, max_items, seed)
            items = [items[i] for i in ids]
            correct = score_probe(model, tokenizer, items)
            test_ids = [i for i, it in zip(ids, items, strict=True) if it["part"] == "test"]
            scores.append(_summarise(name, "acc", correct, bootstrap_iters, seed, info, items, test_ids))
            continue
        ids = subsample(len(items), max_items, seed)
        items = [items[i] for i in ids]
        res = score_choices(model, tokenizer, items, info["target_delimiter"], batch_tokens=batch_tokens)
        margins = {"acc": res.margin, "acc_norm": res.margin_norm}
        for metric in info["metrics"]:
            scores.append(_summarise(name, metric, getattr(res, metric), bootstrap_iters, seed, info, items, ids,
                                     margins.get(metric)))
        if "hard_subset" in info:
            hard = np.array([bool(it.get("hard")) for it in items])
            sub = dict(info["hard_subset"], chance=info["chance"])
            scores.append(_summarise(f"{name}_hard", "acc", res.acc[hard], bootstrap_iters, seed, sub,
                                     [it for it, h in zip(items, hard, strict=True) if h], ids[hard],
                                     res.margin[hard]))
    return scores + average_score(scores)


def average_score(scores: Sequence[TaskScore]) -> list[TaskScore]:
    """The task set's ``avg_acc`` (downstream/average.py: mean ``acc`` of the main tasks) with a bootstrap CI
    from the tasks' draws; [] when no task has ``acc``."""
    keep = set(averaged_tasks(s.task for s in scores if s.metric == "acc"))
    main = [s for s in scores if s.metric == "acc" and s.task in keep]
    if not main:
        return []
    draws = np.mean([s.draws for s in main], axis=0)
    value = float(np.mean([s.value for s in main]))
    stderr = float(np.sqrt(sum(s.stderr**2 for s in main)) / len(main))
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return [TaskScore("average", "avg_acc", value, stderr, float(lo), float(hi), sum(s.n for s in main), draws)]


def _probe_subsample(items: list[dict], max_items: int | None, seed: int) -> list[int]:
    """Indices of the probe items kept under the cap: the same fraction of its train and test parts (both stay
    non-empty)."""
    if max_items is None or max_items >= len(items):
        return list(range(len(items)))
    out = []
    for part in ("train", "test"):
        idx = [i for i, it in enumerate(items) if it["part"] == part]
        take = max(2, round(max_items * len(idx) / len(items)))
        out += [idx[j] for j in subsample(len(idx), take, seed)]
    return out


def scores_to_rows(scores: Sequence[TaskScore], run: str, method: str, step: int, *, scale: str = "",
                   seed: int | None = None, settings: dict | None = None, note: str = SOURCE_NOTE) -> list[Row]:
    """Table rows of one model's scores; ``note`` names the task set (the shipped tasks by default)."""
    settings = dict(settings or {})
    rows = []
    for s in scores:
        rows.append(Row(run=run, method=method, step=step, metric=s.metric, value=s.value, stderr=s.stderr,
                        ci_low=s.ci_low, ci_high=s.ci_high, scope="task" if s.task != "average" else "model",
                        name=s.task, space="native", scale=scale, seed=seed,
                        settings={**settings, "n_items": s.n, "chance": s.chance, "majority": s.majority,
                                  "baseline": s.baseline},
                        note=note))
    return rows


def _steps(run, steps: str | Sequence[int]) -> list[int]:
    """The checkpoint steps of ``run`` (a rankscope.runs.Run) that ``steps`` selects."""
    run_dir, available = run.path, list(run.steps)
    if not available:
        raise UserError(f"run {run_dir} has no complete checkpoint; train it first (rankscope train ...)")
    if steps == "final":
        return available[-1:]
    if steps == "all":
        return available
    if isinstance(steps, str):
        raise UserError(f"steps={steps!r} is not valid; use 'final', 'all' or a list of step numbers")
    missing = sorted(set(steps) - set(available))
    if missing:
        raise UserError(f"run {run_dir} has no checkpoint at step(s) {missing}; available: {available}")
    return list(steps)


def evaluate_runs(run_dirs: Sequence[str | Path], steps: str | Sequence[int] = "final",
                  tasks: Sequence[str] | None = None, max_items: int | None = DEFAULT_MAX_ITEMS,
                  out: str | Path | None = None, seed: int = 0, bootstrap_iters: int = BOOTSTRAP_ITERS,
                  device: str = "cpu", task_files: Sequence[str | Path] = (),
                  lm_eval_tasks: Sequence[str] = ()) -> pd.DataFrame:
    """Score checkpoints of each run; write per-run tables (and ``out`` as a combined table stem).

    ``task_files`` / ``lm_eval_tasks``: the user's own tasks (downstream/user_tasks.py), each its own task set;
    with either, the shipped tasks are scored only when ``tasks`` names them.
    """
    from rankscope.downstream import user_tasks as U
    from rankscope.runs import open_runs

    own = U.check_task_sources(task_files, lm_eval_tasks)  # every file checked before any model is loaded
    shipped = tasks is not None or not (task_files or lm_eval_tasks)
    files = {Path(f).stem: Path(f).resolve() for f in task_files}

    frames: list[pd.DataFrame] = []
    all_items: list[pd.DataFrame] = []
    for run in open_runs(run_dirs):
        tokenizer = run.tokenizer()
        settings = {"max_items": max_items, "seed": seed, "bootstrap_iters": bootstrap_iters,
                    "tasks_build": T.manifest()["build_version"], "scorer": "native",
                    "prefix_token": "eos", "tokenizer": run.data.tokenizer}
        rows: list[Row] = []
        item_frames: list[pd.DataFrame] = []
        for step in _steps(run, steps):
            model = run.load_model(step, device=device)
            kw = {"scale": run.scale, "seed": run.seed, "settings": settings}
            with torch.inference_mode():
                if shipped:  # no wall-clock values in rows: identical evals, identical rows
                    scores = evaluate_model(model, tokenizer, tasks, max_items=max_items, seed=seed,
                                            bootstrap_iters=bootstrap_iters)
                    rows += scores_to_rows(scores, run.name, run.method, step, **kw)
                    item_frames.append(score_item_rows(scores, run.name, run.method, step, SOURCE_NOTE))
                for name, items in own.items():
                    scores = U.score_task_file(model, tokenizer, name, items, max_items=max_items, seed=seed,
                                               bootstrap_iters=bootstrap_iters)
                    note = f"task file {files[name]}"
                    rows += scores_to_rows(scores, run.name, run.method, step, **kw, note=note)
                    item_frames.append(score_item_rows(scores, run.name, run.method, step, note))
            for spec in lm_eval_tasks:  # lm-eval runs the model in its own mode handling
                scores = U.score_lm_eval_task(model, tokenizer, spec, max_items=max_items, seed=seed,
                                              bootstrap_iters=bootstrap_iters)
                rows += scores_to_rows(scores, run.name, run.method, step, **kw, note=f"lm-eval task {spec}")
                item_frames.append(score_item_rows(scores, run.name, run.method, step, f"lm-eval task {spec}"))
            del model
        frame = rows_to_frame(rows)
        write_table(frame, run.results_dir / "downstream")
        write_items(_concat_items(item_frames), run.results_dir / "downstream")
        frames.append(frame)
        all_items += item_frames
    combined = pd.concat(frames, ignore_index=True) if frames else rows_to_frame([])
    if out is not None:
        write_table(combined, Path(out).with_suffix(""))
        write_items(_concat_items(all_items), Path(out).with_suffix(""))
    return combined


def _concat_items(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else empty_items()


def above_chance(frame: pd.DataFrame, min_tasks: int = 2, metric: str = "acc") -> list[str]:
    """Tasks whose CI lies entirely above chance and the majority-class rate (for "a trained model beats chance on
    >= 2 tasks" checks).

    Raises AssertionError naming every task's CI and chance when fewer than ``min_tasks`` pass.
    """
    rows = frame[(frame["metric"] == metric) & (frame["scope"] == "task")]
    passed, report = [], []
    for _, r in rows.iterrows():
        rates = [_settings(r).get(k) for k in ("chance", "majority")]
        rates = [x for x in rates if x is not None]
        if not rates:
            continue
        chance = max(rates)  # the stricter floor: a probe at its majority-class rate has learned nothing
        report.append(f"{r['name']}: {r['value']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] vs chance {chance:.3f}")
        if r["ci_low"] > chance:
            passed.append(r["name"])
    if len(passed) < min_tasks:
        raise AssertionError(f"only {len(passed)} task(s) above chance (need {min_tasks}): " + "; ".join(report))
    return passed


def _settings(row: pd.Series) -> dict:
    import json

    s = row.get("settings")
    return json.loads(s) if isinstance(s, str) else dict(s or {})
