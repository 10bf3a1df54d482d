"""CLI glue for ``rankscope eval`` and ``rankscope predict``: plain keyword functions the typer app wraps.

They print a short summary and return what they wrote, so the CLI layer stays a thin shell.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from rankscope.downstream.evaluate import DEFAULT_MAX_ITEMS
from rankscope.errors import UserError

#: Tables the eval/ppl/finetune commands write, named as in a study's results/ folder.
TABLES = {"eval": "downstream", "ppl": "heldout", "finetune": "finetune"}


def out_table(out: str | Path | None, command: str) -> Path | None:
    """The table stem ``--out`` of ``eval``/``ppl``/``finetune`` means: one meaning for every command, a folder.

    ``DIR`` -> ``DIR/<table>`` (``downstream``, ``heldout`` or ``finetune``, the study's names, so ``--out
    study/results`` joins a study's tables); ``PATH.parquet``/``PATH.csv`` -> that table file. Kept from the
    earlier meaning (a file stem): a path without suffix named after a table (``results/downstream``) that is
    not an existing folder is still that table's stem.
    """
    if out is None:
        return None
    out = Path(out)
    if out.suffix in (".parquet", ".csv"):
        return out.with_suffix("")
    if out.name in TABLES.values() and not out.is_dir():
        return out
    return out / TABLES[command]


def cmd_eval(run_dirs: Sequence[str | Path], steps: str = "final", tasks: Sequence[str] | None = None,
             max_items: int | None = DEFAULT_MAX_ITEMS, out: str | Path | None = None, seed: int = 0,
             bootstrap_iters: int = 1000, lm_eval: bool = False, online: bool = False,
             device: str = "cpu", task_files: Sequence[str | Path] = (),
             lm_eval_tasks: Sequence[str] = ()) -> pd.DataFrame:
    """Score runs on the offline tasks (native scorer; ``lm_eval=True`` cross-checks through lm-eval).

    ``steps``: "final", "all" or comma-separated step numbers. ``max_items``: per-task cap (0 = all items).
    ``online``: also run the paper's hub tasks through lm-eval (needs internet). ``task_files`` /
    ``lm_eval_tasks``: the user's own tasks (downstream/user_tasks.py).
    """
    from rankscope.downstream.evaluate import evaluate_runs

    cap = None if not max_items else max_items
    frame = evaluate_runs(run_dirs, steps=parse_steps(steps), tasks=list(tasks) if tasks else None, max_items=cap,
                          out=out_table(out, "eval"),
                          seed=seed, bootstrap_iters=bootstrap_iters, device=device, task_files=task_files,
                          lm_eval_tasks=lm_eval_tasks)
    if lm_eval or online:
        _lm_eval_runs(run_dirs, tasks, cap, seed, bootstrap_iters, online)
    print_scores(frame)
    return frame


def print_scores(frame: pd.DataFrame) -> None:
    """acc of each task with its chance and majority-class rates, then the one average and its definition."""
    import json

    from rankscope.downstream.average import definition

    def rate(r, key: str) -> str:
        s = r["settings"]
        v = (json.loads(s) if isinstance(s, str) else dict(s or {})).get(key)
        return "  –  " if v is None else f"{v:.3f}"

    shown = frame[frame["metric"].isin(["acc", "avg_acc"])]
    for _, r in shown.iterrows():
        floors = (f"  chance {rate(r, 'chance')} majority {rate(r, 'majority')}" if r["metric"] == "acc" else
                  "  = " + definition(frame.loc[(frame["run"] == r["run"]) & (frame["step"] == r["step"])
                                                & (frame["note"] == r["note"]) & (frame["metric"] == "acc"), "name"]))
        print(f"{r['run']:>20} step {r['step']:>7} {r['name']:>15} {r['metric']:>8} {r['value']:.3f} "
              f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]{floors}")


def parse_steps(steps: str) -> str | list[int]:
    """``final`` | ``all`` | comma-separated step numbers (the --steps option of eval and ppl)."""
    if steps in ("final", "all"):
        return steps
    try:
        return [int(s) for s in str(steps).split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--steps {steps!r}: use 'final', 'all' or comma-separated integers") from None


def cmd_ppl(run_dirs: Sequence[str | Path], texts: Sequence[str], steps: str = "final", split: str = "validation",
            column: str = "text", max_bytes: int = 400_000, max_docs: int = 0, out: str | Path | None = None,
            seed: int = 0, bootstrap_iters: int = 1000, device: str = "cpu") -> pd.DataFrame:
    """Perplexity and bits per byte of runs on held-out texts (specs: see rankscope.downstream.heldout)."""
    from rankscope.downstream.heldout import parse_texts
    from rankscope.downstream.ppl import ppl_runs

    if not texts:
        raise UserError("rankscope ppl needs at least one --text (a file, hf:NAME[:CONFIG], embedded:SPLIT, val "
                        "or shift)")
    frame = ppl_runs(run_dirs, parse_texts(texts, split=split, column=column), steps=parse_steps(steps),
                     max_bytes=max_bytes, max_docs=max_docs, seed=seed, bootstrap_iters=bootstrap_iters,
                     out=out_table(out, "ppl"),
                     device=device)
    shown = frame[frame["metric"].isin(["heldout_ppl", "heldout_bpb"])]
    for _, r in shown.iterrows():
        print(f"{r['run']:>20} step {r['step']:>7} {r['name']:>24} {r['metric']:>12} {r['value']:.4g} "
              f"[{r['ci_low']:.4g}, {r['ci_high']:.4g}]")
    return frame


def cmd_finetune(run_dirs: Sequence[str | Path], steps: str = "final", settings: dict | None = None,
                 out: str | Path | None = None, device: str = "cpu", use_cache: bool = True) -> pd.DataFrame:
    """The fine-tuning probe (downstream/finetune.py) on checkpoints of each run; ``settings`` overrides."""
    from dataclasses import fields

    from rankscope.downstream.finetune import FinetuneSettings, finetune_runs

    known = {f.name for f in fields(FinetuneSettings)}
    unknown = sorted(set(settings or {}) - known)
    if unknown:
        raise UserError(f"--settings: unknown finetune field(s) {unknown}; valid fields: {', '.join(sorted(known))}")
    frame = finetune_runs(run_dirs, parse_steps(steps), FinetuneSettings(**(settings or {})), out=out_table(out, "finetune"),
                          device=device, use_cache=use_cache)
    for _, r in frame.iterrows():
        print(f"{r['run']:>20} step {r['step']:>7} {r['metric']:>17} {r['value']:.4g} "
              f"[{r['ci_low']:.4g}, {r['ci_high']:.4g}]")
    return frame


def _lm_eval_runs(run_dirs, tasks, cap, seed, bootstrap_iters, online) -> None:
    import json

    from rankscope.downstream.lm_eval_adapter import HUB_TASKS, run_lm_eval
    from rankscope.runs import open_runs

    for run in open_runs(run_dirs):
        model = run.load_model()
        from rankscope.downstream.tasks import task_info, task_names

        names = [n for n in (list(tasks) if tasks else task_names()) if task_info(n)["kind"] != "probe"]
        if online:
            names += list(HUB_TASKS)
        results = run_lm_eval(model, run.tokenizer(), names, online=online, max_items=cap,
                              seed=seed, bootstrap_iters=bootstrap_iters)
        path = run.results_dir / "lm_eval.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({str(k): v for k, v in results.items()}, indent=2, default=str))
        print(f"lm-eval results: {path}")


def cmd_predict(table_dir: str | Path, out: str | Path | None = None, features: Sequence[str] | None = None,
                bootstrap_iters: int = 1000, seed: int = 0, target: str = "avg_acc") -> Path:
    """Fit the downstream predictors from a study's tables.

    ``table_dir`` holds ``diagnostics.parquet`` (or .csv), ``downstream.parquet`` and ``runs.csv`` (run,
    method, seed, optional ppl); or a ready per-model table ``prediction_table.csv`` (run, method, ppl, y,
    metric columns). Writes prediction.json, prediction_features.csv and prediction.png into ``out``
    (``prediction_<target>.*`` for another target: shift_nll[:<text>], ft_acc, forgetting).
    """
    from rankscope.downstream.item_rows import read_items
    from rankscope.downstream.predict import predict, predict_from_tables

    d = Path(table_dir)
    out_dir = Path(out) if out else d
    kwargs = {"bootstrap_iters": bootstrap_iters, "seed": seed, "target": target}
    feats = list(features) if features else None
    if (d / "prediction_table.csv").is_file():
        result = predict(pd.read_csv(d / "prediction_table.csv"), feats, **kwargs)
    else:
        diag, down = _read(d, "diagnostics"), _read(d, "downstream")
        runs = d / "runs.csv"
        if not runs.is_file():
            raise UserError(f"{runs} is missing: list the runs to compare (columns run, method[, seed, ppl])")
        extra = [_read(d, stem) for stem in ("heldout", "finetune") if _has(d, stem)]
        if extra:  # rankscope ppl / the fine-tuning probe may have written their own tables beside it
            down = pd.concat([down, *extra], ignore_index=True)
        items = read_items(d / "downstream.parquet")  # per-item rows beside the table: the bootstrap draws items
        result = predict_from_tables(diag, down, pd.read_csv(runs), feats, items=items, **kwargs)
    paths = result.write(out_dir)
    for line in result.messages + result.warnings:
        print(f"note: {line}")
    for name, s in result.schemes.items():
        gain, lo, hi = result.gain(name)
        print(f"{name}: CV R² log-PPL {s['baseline']['r2']:.3f}, + metrics {s['extended']['r2']:.3f}, "
              f"difference {gain:+.3f} [{lo:+.3f}, {hi:+.3f}]")
    return paths["json"]


def _has(d: Path, stem: str) -> bool:
    return any((d / f"{stem}{suffix}").is_file() for suffix in (".parquet", ".csv"))


def _read(d: Path, stem: str) -> pd.DataFrame:
    for suffix in (".parquet", ".csv"):
        if (d / f"{stem}{suffix}").is_file():
            from rankscope.diagnostics.table import read_table

            return read_table(d / f"{stem}{suffix}")
    raise UserError(f"{d} has no {stem}.parquet or {stem}.csv (run `rankscope analyze` / `rankscope eval` first)")
