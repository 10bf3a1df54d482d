"""``rankscope analyze``: run the selected diagnostics over run folders into one long-format table.

Metrics select diagnostic *groups* through the registry (``group_of_metric``), so this file never needs to
know which module emits what; every metric of a selected group is kept, since they come from one
computation. Each group is scheduled by its kind:

* checkpoint: every saved step of every run;
* consecutive: every adjacent pair of saved steps of a run;
* reference: every step the run shares with its full-rank reference (:func:`pick_reference`): the
  full-rank run with the same init and data seeds; a full-rank run's own reference is the full-rank run of
  its init seed with the lowest data seed, so the primary full-rank run gets its CKA = 1 self rows (the
  "is full-rank" flag the predictor expects) and each full-rank sibling gets the CKA ceiling (null rows);
* pairwise: every pair of *paired* runs (two methods, same init and data seed) and of *siblings* (one
  method, same init seed, another data seed) of one scale, at every shared step; runs of different init
  seeds are never paired (an interpolation barrier needs a shared start).

Rows between two runs of one method carry ``null="sibling"``: they are the within-method nulls of
evidence.md §2. Siblings must share their start: two runs of one method and init seed whose meta.json
``init_fingerprint`` differs are refused before anything is computed.

Reference and pairwise groups can instead pair each run's last checkpoint with the other's last one
(``pair_at="last"``): the study's parity models, trained to one perplexity, sit at different steps.

Every task is cached (``cache.py``), so a second call computes only what is new. A failing task (an
unreadable checkpoint, a metric that raised) is never a silent row: by default the call stops at the first
failure with :class:`AnalysisFailed` naming the checkpoint and the error (the CLI exits 1); with
``keep_going`` the rest is computed, each failure becomes an ``error: ...`` row, the table is written, and
``AnalysisFailed`` is raised at the end. A run folder without checkpoints is a :class:`UserError`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

import pandas as pd

from rankscope.allocator import retain_freed_memory
from rankscope.diagnostics.cache import RowCache, task_key
from rankscope.diagnostics.context import AnalysisContext, EvalBatch, RunHandle
from rankscope.diagnostics.registry import Diagnostic, all_diagnostics, group_of_metric
from rankscope.diagnostics.table import Row, rows_to_frame, write_table
from rankscope.errors import AnalysisFailed, UserError

log = logging.getLogger(__name__)

#: diagnostics.md §2.5: the proposed 16 headline metrics (the paper's list is not public).
HEADLINE_METRICS = (
    "rand_sharpness", "rand_variance", "pca_top1_sharpness", "pca_topk_sharpness", "pca_topk_variance",
    "ckpt_barrier", "imib", "w_erank", "w_stable_rank", "w_spectral_gap", "w_n_sv_gt_0p1", "dw_rel_fro",
    "dw_erank", "dw_stable_rank", "act_cka", "act_cos",
)
REFERENCE_METHOD = "full_rank"
#: Computed by default beside the headline metrics: the estimators verdicts decide on (evidence.md §3).
#: Cross-fitted barriers and debiased CKA come out of headline groups; this is normalised sharpness.
DECIDING_METRICS = ("rand_sharpness_fn",)


#: Default held-out token budget shared by every metric (activations use all of it; perturbation lines take
#: their ``max_tokens`` prefix). 4096 tokens keep six tiny runs × 5 checkpoints under 5 minutes on 2 CPU
#: cores with every headline metric; the study used 65,536 (the paper presets set that).
DEFAULT_TOKENS = 4096


def resolve_groups(metrics: Sequence[str] | None) -> dict[str, Diagnostic]:
    """Groups emitting ``metrics`` (default: the headline set, skipping groups not installed, with a warning)."""
    strict = metrics is not None
    groups: dict[str, Diagnostic] = {}
    for metric in (*HEADLINE_METRICS, *DECIDING_METRICS) if metrics is None else metrics:
        try:
            diag = group_of_metric(metric)
        except KeyError as exc:
            if strict:
                raise UserError(str(exc.args[0])) from None
            log.warning("headline metric %s: no registered diagnostic emits it yet; skipped", metric)
            continue
        groups.setdefault(diag.name, diag)
    return groups


def resolve_settings(groups: dict[str, Diagnostic], overrides: dict[str, dict[str, Any]] | None) -> dict[str, dict]:
    """Defaults of each group updated by ``overrides[group]``; unknown groups or keys are errors."""
    overrides = overrides or {}
    unknown = sorted(set(overrides) - set(all_diagnostics()))
    if unknown:
        raise UserError(f"settings for unknown diagnostic group(s) {unknown}; groups: {sorted(all_diagnostics())}")
    out = {}
    for name, diag in groups.items():
        extra = overrides.get(name, {})
        bad = sorted(set(extra) - set(diag.defaults))
        if bad:
            raise UserError(f"unknown setting(s) {bad} for {name!r}; valid: {sorted(diag.defaults)}")
        out[name] = {**diag.defaults, **extra}
    return out


def pick_reference(run: RunHandle, runs: Sequence[RunHandle]) -> RunHandle | None:
    """The full-rank run of the same scale that ``run`` is compared with.

    Same init and data seed (a paired comparison); for a full-rank run, the full-rank run of its init seed
    with the lowest data seed (itself when it is that run; the CKA ceiling for its siblings). Without such
    a run: the full-rank run of the same init seed, else any of the scale (studies of older layouts).
    """
    cands = [r for r in runs if r.method == REFERENCE_METHOD and r.scale == run.scale]
    same_init = sorted((r for r in cands if r.init_seed == run.init_seed), key=lambda r: r.order_seed)
    if run.method == REFERENCE_METHOD and same_init:
        return same_init[0]
    paired = [r for r in same_init if r.order_seed == run.order_seed]
    return (paired or same_init or cands or [None])[0]


def _pairs(runs: Sequence[RunHandle]) -> list[tuple[RunHandle, RunHandle]]:
    """Paired runs of two methods and siblings of one method (see the module docstring)."""
    return [(a, b) for a, b in combinations(runs, 2) if a.is_paired_with(b) or a.is_sibling_of(b)]


def check_shared_starts(runs: Sequence[RunHandle]) -> None:
    """Siblings (one method, one init seed) must start from the same weights, or their null means nothing."""
    for a, b in combinations(runs, 2):
        if (a.method == b.method and a.scale == b.scale and a.init_seed == b.init_seed and a.init_fingerprint
                and b.init_fingerprint and a.init_fingerprint != b.init_fingerprint):
            raise UserError(
                f"runs {a.name!r} ({a.path}) and {b.name!r} ({b.path}) are siblings (method {a.method}, init_seed "
                f"{a.init_seed}) but their meta.json init_fingerprint differs ({a.init_fingerprint} vs "
                f"{b.init_fingerprint}): they do not share their start, so no within-method null can be computed "
                f"from them. Retrain one with the other's init_seed and model settings, or analyse them separately "
                f"(nothing was written)")


def schedule(diag: Diagnostic, runs: Sequence[RunHandle], pair_at: str = "equal-step") -> list[dict[str, Any]]:
    """Tasks of one group: dicts of AnalysisContext fields (run, step, step_b, reference, other, other_step).

    ``pair_at="last"`` pairs each run's last checkpoint with the reference's / other run's last one, whatever
    their steps: models trained to the same perplexity (parity) sit at different steps.
    """
    tasks: list[dict[str, Any]] = []
    if diag.kind == "checkpoint":
        tasks = [{"run": r, "step": s} for r in runs for s in r.steps]
    elif diag.kind == "consecutive":
        tasks = [{"run": r, "step": a, "step_b": b} for r in runs for a, b in zip(r.steps, r.steps[1:])]
    elif diag.kind == "reference":
        missing = [r.name for r in runs if pick_reference(r, runs) is None]
        if missing:
            log.warning("%s: no full-rank run of the same scale for %s; reference diagnostics skipped there",
                        diag.name, ", ".join(missing))
        for r in runs:
            ref = pick_reference(r, runs)
            if ref is not None:
                tasks += [{"run": r, "reference": ref, **pair} for pair in _paired_steps(r, ref, pair_at)]
    elif diag.kind == "pairwise":
        for a, b in _pairs(runs):
            tasks += [{"run": a, "other": b, **pair} for pair in _paired_steps(a, b, pair_at)]
    return tasks


def _paired_steps(run: RunHandle, other: RunHandle, pair_at: str) -> list[dict[str, int]]:
    if pair_at == "last":
        if not (run.steps and other.steps):
            return []
        return [{"step": run.steps[-1], "other_step": other.steps[-1]}]
    shared = set(other.steps)
    return [{"step": s} for s in run.steps if s in shared]


def unscheduled(diag: Diagnostic, runs: Sequence[RunHandle], pair_at: str = "equal-step") -> list[tuple[RunHandle, str]]:
    """(run, reason) for each run a group computes nothing for, so the table says why instead of a gap."""
    out = []
    for r in runs:
        if diag.kind == "consecutive" and len(r.steps) < 2:
            out.append((r, f"needs two checkpoints of the run; it has {len(r.steps)}"))
        elif diag.kind == "reference":
            ref = pick_reference(r, runs)
            if ref is None:
                out.append((r, f"no {REFERENCE_METHOD} run of scale {r.scale!r} among the analysed runs"))
            elif not _paired_steps(r, ref, pair_at):
                out.append((r, f"no checkpoint step in common with the reference run {ref.name!r}"))
        elif diag.kind == "pairwise" and not any(
                (r.is_paired_with(o) or r.is_sibling_of(o)) and _paired_steps(o, r, pair_at) for o in runs):
            out.append((r, f"no paired run (another method, same init and data seed) or sibling (same method "
                           f"and init seed) of scale {r.scale!r} with a checkpoint step in common"))
    return out


def _key_runs(task: dict[str, Any]) -> list[tuple[Path, tuple[int, ...], list[Path]]]:
    """(run path, steps, checkpoint folders) of every run a task reads."""
    steps = (task["step"],) if task.get("step_b") is None else (task["step"], task["step_b"])
    pairs = [(task["run"], steps)]
    for role in ("reference", "other"):
        if task.get(role) is not None:
            other_step = task.get("other_step")
            pairs.append((task[role], (task["step"] if other_step is None else other_step,)))
    return [(h.path, s, [h.checkpoint_dir(x) for x in s]) for h, s in pairs]


def _error_row(diag: Diagnostic, task: dict[str, Any], mode: str, settings: dict, exc: Exception) -> Row:
    run = task["run"]
    return Row(run=run.name, method=run.method, step=task["step"], metric=diag.name, value=math.nan,
               scale=run.scale, seed=run.seed, init_seed=run.init_seed, data_seed=run.order_seed,
               step_b=task.get("step_b"), mode=mode, settings=settings,
               note=f"error: {type(exc).__name__}: {exc}")


def _failure(name: str, task: dict[str, Any], exc: Exception) -> str:
    """One line: which group, which checkpoint(s), which error."""
    first = (str(exc).strip().splitlines() or [""])[0]
    ckpts = [str(d) for _, _, dirs in _key_runs(task) for d in dirs]
    where = "" if any(c in first for c in ckpts) else f" (checkpoint {', '.join(ckpts)})"  # said once is enough
    kind = "" if isinstance(exc, UserError) else f"{type(exc).__name__}: "
    return f"{name} on run {task['run'].name!r} step {task['step']}{where}: {kind}{first}"


@functools.lru_cache(maxsize=16)
def _tokenizer_fingerprint(spec: str) -> str:
    from rankscope.data.tokenizer import load_tokenizer

    return load_tokenizer(spec).fingerprint()


def _check_runs(runs: Sequence[RunHandle]) -> None:
    empty = [str(r.path) for r in runs if not r.steps]
    specs = {str(r.run.data.tokenizer) for r in runs}  # different paths may hold one tokenizer: compare ids
    if len(specs) > 1 and len({_tokenizer_fingerprint(s) for s in specs}) > 1:
        names = "; ".join(f"{r.name}: {r.run.data.tokenizer}" for r in runs)
        raise UserError(f"the runs use different tokenizers ({names}); every metric is computed on one shared "
                        f"batch of held-out tokens, so analyse runs of one tokenizer together")
    if empty:
        raise UserError(f"run folder(s) {', '.join(empty)} have no complete checkpoint (no checkpoints/step_*/ with "
                        f"train_state.json): train them first (or let the running job save one), or leave them "
                        f"out of the analyze arguments")


def _progress(enabled: bool):
    if not enabled:
        return contextlib.nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())


def analyze(run_dirs: Sequence[str | Path | RunHandle], metrics: Sequence[str] | None = None,
            out: str | Path = "analysis", mode: str = "default", n_tokens: int = DEFAULT_TOKENS,
            settings: dict[str, dict[str, Any]] | None = None, device: str = "cpu", progress: bool = True,
            seed: int = 0, batch: EvalBatch | None = None, use_cache: bool = True,
            workers: int = 1, keep_going: bool = False, pair_at: str = "equal-step") -> pd.DataFrame:
    """Compute the diagnostics of ``metrics`` over the runs and write ``<out>/diagnostics.{parquet,csv}``.

    ``settings`` overrides group defaults (``{"spectra": {"dtype": "float64"}}``); ``batch`` replaces the
    shared evaluation batch (tests, studies that fix their own tokens). ``workers`` > 1 computes the tasks
    of each group in that many processes with cpu_count // workers threads each (CPU only; results and
    their order are the same). ``pair_at`` is how reference and pairwise groups pair checkpoints:
    ``"equal-step"`` (every shared step) or ``"last"`` (each run's last checkpoint with the other's last one,
    at whatever steps: the parity models). Returns the table.

    Raises :class:`AnalysisFailed` when a task fails: at once (nothing written) unless ``keep_going``, which
    computes the rest, records each failure as an ``error: ...`` row, writes the table and raises at the end.
    """
    if mode not in ("default", "faithful"):
        raise UserError(f"mode must be 'default' or 'faithful', got {mode!r}")
    if pair_at not in ("equal-step", "last"):
        raise UserError(f"pair_at must be 'equal-step' or 'last', got {pair_at!r}")
    runs = [r if isinstance(r, RunHandle) else RunHandle.open(r) for r in run_dirs]
    if not runs:
        raise UserError("analyze needs at least one run folder")
    _check_runs(runs)
    check_shared_starts(runs)
    out = Path(out)
    groups = resolve_groups(metrics)
    resolved = resolve_settings(groups, settings)
    cache = RowCache(out / "cache", enabled=use_cache)
    shared: dict[str, EvalBatch] = {} if batch is None else {"batch": batch}

    def eval_batch() -> EvalBatch:  # built on first need: a fully cached rerun never touches the data
        if "batch" not in shared:
            from rankscope.data.batches import eval_batch as build

            shared["batch"] = build(runs[0].run.data, n_tokens, seed=1234, flag="--n-tokens")
        return shared["batch"]

    rows: list[Row] = []
    failures: list[str] = []
    timings: dict[str, dict[str, float]] = {}
    on_cpu = str(device).startswith("cpu")
    if on_cpu:
        retain_freed_memory()  # forwards free and re-allocate the same logits buffers at every point
    if workers > 1 and not on_cpu:
        log.info("analyze: workers=%d ignored on %s (worker processes are for CPU analysis)", workers, device)
        workers = 1
    pool = _Pool(workers)
    with _progress(progress) as bar, pool:
        for name, diag in groups.items():
            tasks = schedule(diag, runs, pair_at)
            timing = timings.setdefault(name, {"seconds": 0.0, "computed": 0, "cached": 0})
            bar_id = bar.add_task(name, total=len(tasks)) if bar is not None else None
            results: list[list[Row] | None] = [None] * len(tasks)
            todo = []
            for i, task in enumerate(tasks):
                key = task_key(name, mode=mode, n_tokens=n_tokens, seed=seed, settings=resolved[name],
                               runs=_key_runs(task))
                results[i] = cache.get(key)
                if results[i] is None:
                    todo.append((i, task, key))
                elif bar is not None:
                    bar.advance(bar_id)
            timing["cached"] += len(tasks) - len(todo)
            timing["computed"] += len(todo)
            t0 = time.perf_counter()
            for i, task, key, got, exc in pool.run(name, todo, resolved[name], mode, device, seed, eval_batch):
                where = f"{name} {task['run'].name}@{task['step']}" + (f"→{task['step_b']}" if task.get("step_b") else "")
                if exc is None:
                    stamp = dict(resolved[name])  # one shared dict: rows are many, settings are few
                    for r in got:
                        r.settings = r.settings or stamp
                    cache.put(key, got)
                else:
                    failure = _failure(name, task, exc)
                    if not keep_going:
                        raise AnalysisFailed(
                            f"analyze could not compute {failure}. Nothing was written to "
                            f"{out / 'diagnostics.parquet'} (finished tasks are cached, so a re-run after the fix "
                            f"is quick); pass --keep-going to compute the rest and record failures as error rows",
                            [failure])
                    log.info("failed: %s", failure)  # reported once, in the AnalysisFailed at the end
                    failures.append(failure)
                    got = [_error_row(diag, task, mode, resolved[name], exc)]
                results[i] = got
                if bar is not None:
                    bar.update(bar_id, description=where)
                    bar.advance(bar_id)
            timing["seconds"] += time.perf_counter() - t0
            group_rows = [r for got in results for r in got]
            group_rows += [Row(run=r.name, method=r.method, step=r.steps[-1], metric=name, value=math.nan,
                               scale=r.scale, seed=r.seed, init_seed=r.init_seed, data_seed=r.order_seed,
                               mode=mode, settings=resolved[name],
                               note=f"skipped: {name}: {why}") for r, why in unscheduled(diag, runs, pair_at)]
            for r in group_rows:  # cached rows too: never an unexplained NaN
                if r.init_seed is None:  # cached by a version with one seed, which set both
                    r.init_seed, r.data_seed = r.seed, r.seed if r.data_seed is None else r.data_seed
                if not r.note and (r.value is None or not math.isfinite(r.value)):
                    r.note = f"undefined: {r.metric} is {r.value} here (no reason recorded by {name})"
            rows += group_rows
            for r in runs:
                r._cache.clear()  # at most one checkpoint per run held between groups
    frame = rows_to_frame(rows)
    write_table(frame, out / "diagnostics")
    _write_timings(out / "analysis_timings.json", timings)  # not timings.json: the study writes that one
    if failures:
        shown = "; ".join(failures[:3]) + (f"; and {len(failures) - 3} more" if len(failures) > 3 else "")
        raise AnalysisFailed(f"analyze: {len(failures)} task(s) failed and are recorded as 'error: ...' rows in "
                             f"{out / 'diagnostics.parquet'}: {shown}", failures, frame)
    return frame


def compute_task(name: str, task: dict[str, Any], settings: dict[str, Any], mode: str, device: str, seed: int,
                 batch: EvalBatch) -> list[Row]:
    """One task of one group (runs in the parent or in a worker process)."""
    ctx = AnalysisContext(batch=batch, mode=mode, device=device, seed=seed, **task)
    return all_diagnostics()[name].fn(ctx, **settings)


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    retain_freed_memory()


class _Pool:
    """Where uncached tasks run: in this process (``workers`` ≤ 1), or in a process pool started on first
    need (spawn: no forked OpenMP state; each worker uses cpu_count // workers threads).

    Why processes: on a 2-core CPU two 1-thread workers evaluate ~25 % more tokens per second than one
    2-thread process, because the tiny model's GEMMs thread poorly. Workers do not share the per-run
    caches, so end-point memos (interpolation) only help within a worker's task.
    """

    def __init__(self, workers: int) -> None:
        self.workers = max(1, int(workers))
        self._executor = None

    def __enter__(self) -> _Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._executor is not None:
            self._executor.shutdown(cancel_futures=True)

    def run(self, name: str, todo: list[tuple[int, dict, dict]], settings: dict[str, Any], mode: str, device: str,
            seed: int, batch_fn):
        """Yield (index, task, key, rows, exception) for every task of ``todo`` as it completes."""
        if not todo:
            return
        if self.workers <= 1 or len(todo) == 1:
            batch = batch_fn()  # outside the try: unreadable data is the user's error, not one task's
            for i, task, key in todo:
                try:
                    yield i, task, key, compute_task(name, task, settings, mode, device, seed, batch), None
                except Exception as exc:  # noqa: BLE001 - reported as an error row by the caller
                    yield i, task, key, None, exc
            return
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from multiprocessing import get_context

        if self._executor is None:
            threads = max(1, (os.cpu_count() or 1) // self.workers)
            self._executor = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"),
                                                 initializer=_init_worker, initargs=(threads,))
        batch = batch_fn()
        futures = {self._executor.submit(compute_task, name, task, settings, mode, device, seed, batch): (i, task, key)
                   for i, task, key in todo}
        for future in as_completed(futures):
            i, task, key = futures[future]
            try:
                yield i, task, key, future.result(), None
            except Exception as exc:  # noqa: BLE001 - reported as an error row by the caller
                yield i, task, key, None, exc


def _write_timings(path: Path, timings: dict[str, dict[str, float]]) -> None:
    """Wall seconds per metric group of this call (cache hits cost ~0), so a slow group is easy to spot."""
    for t in timings.values():
        t["seconds"] = round(t["seconds"], 2)
    path.write_text(json.dumps({"total_seconds": round(sum(t["seconds"] for t in timings.values()), 2),
                                "groups": timings}, indent=2))
