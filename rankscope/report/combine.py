"""Combine finished single-size study folders into one multi-size study folder (``rankscope report A B C``).

A multi-size study is, on disk, one study folder per size plus a combined folder: ``study.json`` with
``models`` (the sizes, smallest first) and ``sizes`` (size -> its study folder), and ``results/`` holding every
size's tables stacked (diagnostics, downstream, held-out, fine-tuning) and the pooled predictor. ``rankscope
study`` with ``models: [...]`` writes exactly this with :func:`combine_studies` after its sizes finish, so combining
the same single-size folders by hand gives the same tables (tests/test_scale_report.py).

Choices: a run is renamed ``<run>@<size>`` in the combined tables (every size has a ``full_rank_s0``), and so is
the other run of a pair row; the ``scale`` column is set to the size (its ``study.json`` ``model``). Folders may only
be combined when they are studies of the same methods, seeds (and siblings) and data; a size given twice is refused.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from rankscope.downstream.item_rows import items_path, read_items, write_items
from rankscope.errors import UserError
from rankscope.report.load import study_folder_problem

TABLES = ("diagnostics", "downstream", "heldout", "finetune")
# study.json fields every combined size must share (a seeds/siblings design field counts when either has it)
MUST_AGREE = ("methods", "seeds", "data", "siblings", "init_seeds", "data_seeds", "runs")
SEPARATOR = "@"


@dataclass
class SizeStudy:
    size: str
    path: Path
    study: dict[str, Any]


def run_label(run: str, size: str) -> str:
    return f"{run}{SEPARATOR}{size}"


def _first_difference(a: Any, b: Any, where: str) -> str | None:
    """Dotted path of the first field where ``a`` and ``b`` differ (None when equal)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            diff = _first_difference(a.get(k), b.get(k), f"{where}.{k}")
            if diff:
                return diff
        return None
    return None if a == b else where


def _value(d: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def read_size_studies(folders: list[Path]) -> list[SizeStudy]:
    """Check that ``folders`` can be combined and return them smallest size first; UserError naming the field."""
    from rankscope.report.scale_findings import order_sizes

    if len(folders) < 2:
        raise UserError("combining studies needs at least two study folders, one per model size")
    out: list[SizeStudy] = []
    for folder in folders:
        problem = study_folder_problem(folder)
        if problem:
            raise UserError(problem)
        try:
            study = json.loads((folder / "study.json").read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"{folder / 'study.json'} is unreadable ({exc}); re-run the study to rewrite it") from None
        if study.get("models"):
            raise UserError(f"{folder} is already a multi-size study (study.json has models: {study['models']}); "
                            "combine the single-size study folders it lists under 'sizes' instead")
        size = str(study.get("model") or "")
        if not size:
            raise UserError(f"{folder / 'study.json'} has no 'model' field, so its size is unknown")
        twice = next((s for s in out if s.size == size), None)
        if twice is not None:
            raise UserError(f"size {size} given twice: {twice.path} and {folder} both have model: {size} in "
                            "study.json; give one study folder per model size")
        out.append(SizeStudy(size, folder, study))
    first = out[0]
    for other in out[1:]:
        for key in MUST_AGREE:
            diff = _first_difference(first.study.get(key), other.study.get(key), key)
            if diff:
                raise UserError(
                    f"study folders {first.path} and {other.path} disagree on '{diff}': "
                    f"{_value(first.study, diff)!r} vs {_value(other.study, diff)!r} (in their study.json). Sizes "
                    "can be combined only when they ran the same methods, seeds and data; re-run one of them "
                    f"with the other's {diff.split('.')[0]}")
    order = order_sizes([s.size for s in out])
    return sorted(out, key=lambda s: order.index(s.size))


def _read(path: Path) -> pd.DataFrame | None:
    from rankscope.diagnostics.table import read_table

    return read_table(path) if path.is_file() else None


def stacked_table(sizes: list[SizeStudy], stem: str) -> pd.DataFrame | None:
    """One size's ``results/<stem>.parquet`` after another, runs renamed ``<run>@<size>``, ``scale`` = size."""
    parts = []
    for s in sizes:
        frame = _read(s.path / "results" / f"{stem}.parquet")
        if frame is None or frame.empty:
            continue
        runs = set(frame["run"].astype(str))
        frame = frame.copy()
        frame["run"] = [run_label(str(r), s.size) for r in frame["run"]]
        if "name" in frame.columns:  # pair rows name the other run of the pair
            frame["name"] = [run_label(str(n), s.size) if str(n) in runs else n for n in frame["name"]]
        frame["scale"] = s.size
        parts.append(frame)
    return pd.concat(parts, ignore_index=True) if parts else None


def stacked_items(sizes: list[SizeStudy]) -> pd.DataFrame | None:
    """Each size's per-item downstream rows (downstream/item_rows.py), runs renamed as in :func:`stacked_table`;
    None when a size has none (the pooled predictor then falls back to the evaluator's standard errors)."""
    parts = []
    for s in sizes:
        frame = read_items(s.path / "results" / "downstream.parquet")
        if frame is None or frame.empty:
            return None
        parts.append(frame.assign(run=[run_label(str(r), s.size) for r in frame["run"]]))
    return pd.concat(parts, ignore_index=True) if parts else None


def runs_meta(sizes: list[SizeStudy]) -> pd.DataFrame:
    """run, method, seed, scale, ppl for every finished run of every size (the predictor's input)."""
    from rankscope.report.load import load_study

    rows = []
    for s in sizes:
        for r in load_study(s.path).runs:
            ppl = r.final_val_ppl
            rows.append({"run": run_label(r.name, s.size), "method": r.method, "seed": r.seed, "scale": s.size,
                         "ppl": ppl if math.isfinite(ppl) else None})
    return pd.DataFrame(rows, columns=["run", "method", "seed", "scale", "ppl"])


def combine_studies(folders: list[Path], out_dir: Path, name: str = "") -> Path:
    """Write the combined multi-size folder at ``out_dir`` (study.json, results/) and return it.

    Everything is checked before anything is written. The pooled predictor is fitted when the stacked tables
    allow it; otherwise ``results/prediction_skipped.txt`` says why."""
    sizes = read_size_studies([Path(f) for f in folders])
    for s in sizes:
        if Path(out_dir).resolve() == s.path.resolve():
            raise UserError(f"--out {out_dir} is one of the study folders being combined; give a new folder")
    results = Path(out_dir) / "results"
    tables = {stem: stacked_table(sizes, stem) for stem in TABLES}
    first = sizes[0].study
    study = {"name": name or "+".join(s.size for s in sizes), "models": [s.size for s in sizes],
             "sizes": {s.size: str(s.path.resolve()) for s in sizes},
             **{k: first[k] for k in MUST_AGREE if k in first},
             "size_settings": {s.size: {k: s.study.get(k) for k in ("preset", "steps", "micro_batch_size",
                                                                     "global_batch", "checkpoint_steps")}
                               for s in sizes}}
    results.mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "study.json").write_text(json.dumps(study, indent=2, default=str) + "\n")
    for stem, frame in tables.items():
        target = results / f"{stem}.parquet"
        if frame is None:
            target.unlink(missing_ok=True)
        else:
            frame.to_parquet(target, index=False)
    items = stacked_items(sizes)
    if items is None:
        items_path(results / "downstream.parquet").unlink(missing_ok=True)
    else:
        write_items(items, results / "downstream.parquet")
    meta = runs_meta(sizes)
    meta.to_csv(results / "runs.csv", index=False)
    _pooled_prediction(sizes, tables, meta, results, items)
    return Path(out_dir)


def _pooled_prediction(sizes: list[SizeStudy], tables: dict[str, pd.DataFrame | None], meta: pd.DataFrame,
                       results: Path, items: pd.DataFrame | None = None) -> None:
    """One predictor over the models of every size (leave-one-size-out among its CV schemes)."""
    from rankscope.downstream.predict import predict_from_tables

    for old in results.glob("prediction*"):
        if old.is_file():
            old.unlink()
    iters = max(int((s.study.get("predict") or {}).get("bootstrap_iters") or 0) for s in sizes) or 1000
    diag, down = tables["diagnostics"], tables["downstream"]
    meta = meta[meta["ppl"].notna()]
    if diag is None or down is None:
        why = "no diagnostics or downstream table at any size"
    else:
        meta = meta[meta["run"].isin(set(down["run"]))]
        try:
            predict_from_tables(diag, down, meta, bootstrap_iters=iters, seed=0, items=items).write(results)
            return
        except UserError as exc:
            why = str(exc)
    (results / "prediction_skipped.txt").write_text(f"pooled predictor not fitted: {why}\n")


def out_problem(out: Path | None, folders: list[Path]) -> str | None:
    """Why ``out`` cannot receive the combined study (None if it can): required, a folder, not one of the inputs,
    and either new, empty or an earlier combined folder (which is rewritten)."""
    if out is None:
        return ("combining several study folders needs --out: the folder of the combined study, e.g. "
                "--out study_out/combined (it gets study.json, results/ and report.html)")
    if out.suffix.lower() in (".html", ".htm"):
        return f"--out {out} names an HTML file; with several study folders --out is the combined study's folder"
    if any(out.resolve() == Path(f).resolve() for f in folders):
        return f"--out {out} is one of the study folders being combined; give a new folder"
    if out.exists() and not out.is_dir():
        return f"--out {out} is a file; give a folder for the combined study"
    if out.is_dir() and any(out.iterdir()):
        from rankscope.report.render_scale import is_multi_size

        if not is_multi_size(out):
            return (f"--out {out} is a non-empty folder that is not a combined study; give a new or empty folder "
                    "(an earlier combined folder is rewritten)")
    return None


def clear_combined(out_dir: Path) -> None:
    """Remove a combined folder's outputs (used when a re-run has fewer finished sizes)."""
    shutil.rmtree(Path(out_dir) / "results", ignore_errors=True)
