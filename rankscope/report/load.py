"""Read a study folder into plain Python/pandas objects for the report.

The report is a separate step (style.md §2.10): it reads only what earlier stages wrote to disk and
imports nothing from training, so it also renders half-finished or partly failed studies. Every read
is tolerant: a missing or unreadable file becomes an entry in ``StudyData.missing`` instead of an
exception, and the report lists those entries so a reader knows what is absent and why.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

TABLE_COLUMNS = [
    "run",
    "method",
    "scale",
    "seed",
    "init_seed",
    "data_seed",
    "step",
    "step_b",
    "metric",
    "value",
    "stderr",
    "ci_low",
    "ci_high",
    "scope",
    "name",
    "space",
    "mode",
    "n_tokens",
    "settings_hash",
    "settings",
    "note",
    "null",
]


@dataclass
class RunInfo:
    """One run folder: its config, meta, memory summary and parsed metrics."""

    name: str
    method: str
    seed: int | None
    config: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    train: pd.DataFrame = field(default_factory=pd.DataFrame)  # kind == "train" lines
    evals: pd.DataFrame = field(default_factory=pd.DataFrame)  # kind == "eval" lines

    @property
    def final_val_ppl(self) -> float:
        """Perplexity of the last eval line; NaN when the run never evaluated."""
        if self.evals.empty or "val_ppl" not in self.evals:
            return math.nan
        return float(self.evals.sort_values("step")["val_ppl"].iloc[-1])

    @property
    def tokens(self) -> float:
        """Tokens seen at the last logged step (train lines first, eval lines as fallback)."""
        for frame in (self.train, self.evals):
            if not frame.empty and "tokens" in frame and frame["tokens"].notna().any():
                return float(frame["tokens"].max())
        return math.nan


@dataclass
class StudyData:
    """Everything the report shows, with a list of what could not be found."""

    root: Path
    study: dict[str, Any] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    runs: list[RunInfo] = field(default_factory=list)
    diagnostics: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=TABLE_COLUMNS))
    downstream: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=TABLE_COLUMNS))
    prediction: dict[str, Any] = field(default_factory=dict)
    prediction_png: bytes | None = None
    timings: dict[str, Any] = field(default_factory=dict)
    baselines: dict[str, Any] = field(default_factory=dict)  # results/baselines.json: n-gram perplexities
    missing: list[str] = field(default_factory=list)


SPACE_ORDER = ("dense", "linear_product", "native", "factor")  # most to least comparable across methods
SPACE_RANK = {s: i for i, s in enumerate(SPACE_ORDER)}


def prefer_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Keep one flavour of each number: mode "default" over "faithful", and per method the most
    comparable parameter space (CoLA's spectra come as both ``linear_product`` and ``factor`` rows,
    which must not be averaged together)."""
    if rows.empty:
        return rows
    if (rows["mode"] == "default").any():
        rows = rows[rows["mode"] == "default"]
    rank = rows["space"].map(SPACE_RANK).fillna(len(SPACE_ORDER))
    if rank.nunique() <= 1:
        return rows
    return rows[rank == rank.groupby(rows["method"]).transform("min")]


def pair_labels(rows: pd.DataFrame, diag: pd.DataFrame) -> list[str]:
    """ "a ↔ b" method pair of each pair-scope row.

    ``name`` holds the other run's name as interpolation.py writes it (the contract also allows the
    other method's name); runs are mapped to methods through the table's own run/method columns.
    """
    run_method = dict(zip(diag["run"].astype(str), diag["method"].astype(str), strict=True))
    return [
        " ↔ ".join(sorted((str(a), run_method.get(str(b), str(b)))))
        for a, b in zip(rows["method"], rows["name"], strict=True)
    ]


def normalise_table(frame: pd.DataFrame | None) -> pd.DataFrame:
    """Add absent columns and coerce types, so hand-made or older tables compare like written ones."""
    frame = pd.DataFrame(columns=TABLE_COLUMNS) if frame is None else frame.copy()
    for col in TABLE_COLUMNS:
        if col not in frame:
            frame[col] = None
    for col in ("value", "stderr", "ci_low", "ci_high", "step", "step_b"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype(float)
    frame["name"] = frame["name"].fillna("").astype(str)
    frame["scope"] = frame["scope"].fillna("model").astype(str)
    frame["metric"] = frame["metric"].fillna("").astype(str)
    frame["note"] = frame["note"].fillna("").astype(str)
    # Tables written before init_seed/data_seed: one seed set both; no row was a null.
    for col in ("init_seed", "data_seed"):
        frame[col] = pd.to_numeric(frame[col].where(frame[col].notna(), frame["seed"]), errors="coerce")
    frame["null"] = frame["null"].fillna("").astype(str)
    return frame


def _read_json(path: Path, missing: list[str], what: str) -> dict[str, Any]:
    if not path.is_file():
        missing.append(f"{what}: {path.name} not found")
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        missing.append(f"{what}: {path.name} unreadable ({exc})")
        return {}
    return data if isinstance(data, dict) else {"value": data}


def _read_jsonl(path: Path, missing: list[str], what: str) -> pd.DataFrame:
    if not path.is_file():
        missing.append(f"{what}: metrics.jsonl not found")
        return pd.DataFrame()
    records = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a truncated last line from a killed run is not worth failing the report over
    return pd.DataFrame(records)


def _read_table(path: Path, missing: list[str], what: str) -> pd.DataFrame:
    for candidate in (path, path.with_suffix(".csv")):
        if candidate.is_file():
            try:
                frame = (
                    pd.read_parquet(candidate) if candidate.suffix == ".parquet" else pd.read_csv(candidate)
                )
            except Exception as exc:  # noqa: BLE001 - any reader failure becomes a "missing" entry
                missing.append(f"{what}: {candidate.name} unreadable ({exc})")
                return pd.DataFrame(columns=TABLE_COLUMNS)
            return normalise_table(frame)
    missing.append(f"{what}: {path.name} not found")
    return pd.DataFrame(columns=TABLE_COLUMNS)


def _load_run(folder: Path, missing: list[str]) -> RunInfo:
    what = f"run {folder.name}"
    config = _read_json(folder / "config.json", missing, what)
    meta = _read_json(folder / "meta.json", missing, what)
    memory = _read_json(folder / "memory.json", missing, what)
    if memory.get("rows") and "params" not in (memory.get("summary") or {}):  # folders written by 0.1.0
        from rankscope.methods.memory import memory_summary

        memory["summary"] = memory_summary(memory["rows"])
    metrics = _read_jsonl(folder / "metrics.jsonl", missing, what)
    kind = metrics["kind"] if "kind" in metrics else pd.Series(dtype=str)
    train = metrics[kind == "train"].reset_index(drop=True) if len(metrics) else pd.DataFrame()
    evals = metrics[kind == "eval"].reset_index(drop=True) if len(metrics) else pd.DataFrame()
    seed = meta.get("seed", (config.get("train") or {}).get("seed"))
    method = meta.get("method") or config.get("method") or "unknown"
    return RunInfo(
        folder.name, str(method), None if seed is None else int(seed), config, meta, memory, train, evals
    )


def study_folder_problem(study_dir: str | Path) -> str | None:
    """Why ``study_dir`` is not a study folder (None if it is), checked before the report writes anything.

    A study folder holds ``study.json``, which ``rankscope study`` writes before any job starts, so a
    half-finished or failed study qualifies. A folder with only ``runs/`` (e.g. the project folder where
    ``rankscope train`` put its default ``--out-dir runs``) is not a study: its runs were never analysed or
    evaluated together, so a report of it would be a page of "missing" sections.
    """
    root = Path(study_dir)
    if not root.exists():
        return f"study folder {root} does not exist"
    if not root.is_dir():
        return f"{root} is a file, not a study folder"
    if (root / "study.json").is_file():
        return None
    if (root / "config.json").is_file() and (root / "meta.json").is_file():
        return (f"{root} is a run folder, not a study folder; give the folder passed to `rankscope study --out` "
                f"(it holds study.json, runs/ and results/)")
    if (root / "runs").is_dir() or (root / "results").is_dir():
        return (f"{root} has runs/ or results/ but no study.json, so it is not a study folder (`rankscope train` "
                f"puts runs in runs/ by default). The report renders what `rankscope study --out DIR` made; for a "
                f"report on runs you trained, make an analysis-only study of them: `rankscope study --runs RUN "
                f"[RUN ...] --out DIR` (docs/external_runs.md; README.md, \"Your own data\").")
    return (f"{root} is not a study folder: it has no study.json; give the folder passed to `rankscope study --out`")


def load_study(study_dir: str | Path) -> StudyData:
    """Read ``study_dir`` following the study-folder contract; never raises for missing parts."""
    root = Path(study_dir)
    data = StudyData(root=root)
    miss = data.missing
    data.study = _read_json(root / "study.json", miss, "study")
    data.status = _read_json(root / "status.json", miss, "status")
    runs_dir = root / "runs"
    if runs_dir.is_dir():
        data.runs = [_load_run(p, miss) for p in sorted(runs_dir.iterdir()) if p.is_dir()]
    if not data.runs:
        miss.append("runs: no run folders under runs/")
    results = root / "results"
    data.diagnostics = _read_table(results / "diagnostics.parquet", miss, "diagnostics")
    data.downstream = _read_table(results / "downstream.parquet", miss, "downstream")
    data.prediction = _read_json(results / "prediction.json", miss, "predictor")
    png = results / "prediction.png"
    data.prediction_png = png.read_bytes() if png.is_file() else None
    data.timings = _read_json(results / "timings.json", miss, "timings")
    data.baselines = (_read_json(results / "baselines.json", [], "baselines").get("baselines") or {})
    for job in data.status.get("jobs", []) or []:
        if job.get("state") in ("failed", "pending", "stopped") or str(job.get("error") or "").startswith("not applicable"):
            err = f": {job.get('error')}" if job.get("error") else ""
            miss.append(
                f"job {job.get('id', '?')} ({job.get('stage', '?')}, run {job.get('run', '?')}) "
                f"is {job.get('state')}{err}"
            )
    return data
