"""Stages 2–5 of a study: analyze, eval, predict, report. Each stage reads the previous stages' files.

Each stage is skipped when an input key (its settings plus what it reads: run fingerprints and checkpoint
steps, or the hashes of input tables) matches the key stored with its outputs, so re-running a study does
only what is new. Stage modules are imported lazily: a missing or broken module fails its stage only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rankscope.config import RunConfig
from rankscope.study.config import StudyConfig
from rankscope.study.jobs import write_json_atomic


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else ""


def _run_keys(runs: Sequence[Any], final_only: bool) -> list[Any]:
    from rankscope.training.checkpoint import list_checkpoints

    keys = []
    for cfg in runs:
        if not isinstance(cfg, RunConfig):  # an existing run (rankscope.runs.Run): its checkpoints' stamps
            from rankscope.diagnostics.cache import checkpoint_stamp

            steps = list(cfg.steps[-1:] if final_only else cfg.steps)
            keys.append([cfg.name, cfg.method, cfg.seed, steps,
                         [checkpoint_stamp(cfg.path, s, cfg.checkpoint_dir(s)) for s in steps]])
            continue
        steps = list_checkpoints(cfg.run_dir)
        keys.append([cfg.name, cfg.fingerprint(), steps[-1:] if final_only else steps])
    return keys


def _target(run: Any) -> Any:
    """What analyze/eval/ppl/finetune take: a trained run's folder, or an existing run as it was opened."""
    return run.run_dir if isinstance(run, RunConfig) else run


def _meta(run: Any) -> dict[str, Any]:
    """run, method, seed, scale, ppl of a trained run (RunConfig) or an existing one (rankscope.runs.Run)."""
    if isinstance(run, RunConfig):
        return {"run": run.name, "method": run.method, "seed": run.train.weights_seed, "scale": run.model,
                "ppl": final_ppl(run.run_dir)}
    return {"run": run.name, "method": run.method, "seed": run.seed, "scale": run.scale,
            "ppl": run.extra.get("val_ppl", {}).get(run.steps[-1])}


class Stamp:
    """``results/stamps/<stage>.json``: the input key of the outputs currently on disk."""

    def __init__(self, results: Path, stage: str, key: Any, outputs: Sequence[Path]) -> None:
        self.path = results / "stamps" / f"{stage}.json"
        self.key, self.outputs = _digest(key), list(outputs)

    def fresh(self) -> bool:
        try:
            stored = json.loads(self.path.read_text()).get("key")
        except (OSError, ValueError):
            return False
        return stored == self.key and all(p.is_file() for p in self.outputs)

    def save(self) -> None:
        write_json_atomic(self.path, {"key": self.key, "outputs": [p.name for p in self.outputs]})

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def analysis_stamp(cfg: StudyConfig, runs: Sequence[RunConfig], results: Path) -> Stamp:
    return Stamp(results, "analyze", [asdict(cfg.analysis), _run_keys(runs, final_only=False)],
                 [results / "diagnostics.parquet"])


def run_analyze(cfg: StudyConfig, runs: Sequence[RunConfig], results: Path, progress: bool) -> None:
    """Diagnostics over every checkpoint of every run, with one cache shared by all re-runs.

    ``keep_going``: a failed checkpoint is an error row in the written table, and the AnalysisFailed raised at
    the end fails this stage (the study exits 1; the next re-run retries only the failed tasks).
    """
    from rankscope.diagnostics.analyze import analyze

    a = cfg.analysis
    analyze([_target(r) for r in runs], metrics=list(a.metrics) if a.metrics else None, out=results, mode=a.mode,
            n_tokens=a.n_tokens, settings={k: dict(v) for k, v in a.settings.items()}, device=a.device,
            progress=progress, workers=a.workers, keep_going=True)


def eval_stamp(cfg: StudyConfig, runs: Sequence[RunConfig], results: Path) -> Stamp:
    return Stamp(results, "eval", [asdict(cfg.downstream), _run_keys(runs, final_only=True)],
                 [results / "downstream.parquet", results / "downstream_items.parquet"])


def run_eval(cfg: StudyConfig, runs: Sequence[RunConfig], results: Path) -> None:
    """Offline downstream tasks on each run's final checkpoint."""
    from rankscope.downstream.evaluate import evaluate_runs

    d = cfg.downstream
    evaluate_runs([_target(r) for r in runs], steps="final", tasks=list(d.tasks) if d.tasks else None,
                  max_items=d.max_items or None, out=results / "downstream", bootstrap_iters=d.bootstrap_iters,
                  device=d.device)


def ood_texts(cfg: StudyConfig) -> list:
    """In-domain ``val``, the configured texts, and ``shift`` when a source is left out."""
    from rankscope.downstream.heldout import parse_texts

    return parse_texts(["val", *cfg.ood.texts, *(["shift"] if cfg.data.holdout_source else [])])


def ood_stamp(cfg: StudyConfig, runs: Sequence[RunConfig], results: Path) -> Stamp:
    o = cfg.ood
    key = [[asdict(t) for t in ood_texts(cfg)], o.max_bytes, o.bootstrap_iters, _run_keys(runs, final_only=True)]
    return Stamp(results, "ood", key, [results / "heldout.parquet"])


def run_ood(cfg: StudyConfig, runs: Sequence[RunConfig], results: Path) -> None:
    """Perplexity and bits per byte of each final checkpoint on in-domain and shifted held-out texts."""
    from rankscope.downstream.ppl import ppl_runs

    for suffix in (".parquet", ".csv"):  # rebuilt whole: a text dropped from the config must not linger
        (results / f"heldout{suffix}").unlink(missing_ok=True)
    o = cfg.ood
    ppl_runs([_target(r) for r in runs], ood_texts(cfg), "final", max_bytes=o.max_bytes,
             bootstrap_iters=o.bootstrap_iters, out=results / "heldout", device=o.device)


def finetune_stamp(cfg: StudyConfig, runs: Sequence[RunConfig], results: Path) -> Stamp:
    return Stamp(results, "finetune", [cfg.ood.finetune, _run_keys(runs, final_only=True)],
                 [results / "finetune.parquet"])


def run_finetune(cfg: StudyConfig, runs: Sequence[RunConfig], results: Path) -> None:
    """The fine-tuning probe on each final checkpoint (cached per checkpoint inside each run folder)."""
    from rankscope.downstream.finetune import finetune_runs

    for suffix in (".parquet", ".csv"):
        (results / f"finetune{suffix}").unlink(missing_ok=True)
    finetune_runs([_target(r) for r in runs], "final", cfg.ood.finetune_settings(), out=results / "finetune",
                  device=cfg.ood.device)


def final_ppl(run_dir: Path) -> float | None:
    """Validation perplexity of the run's last eval line in metrics.jsonl."""
    ppl = None
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("kind") == "eval" and rec.get("val_ppl") is not None:
                ppl = float(rec["val_ppl"])
    return ppl


def predict_stamp(cfg: StudyConfig, runs: Sequence[RunConfig], results: Path) -> Stamp:
    stems = ("diagnostics", "downstream", "heldout", "finetune", "downstream_items")  # items: the bootstrap's draws
    inputs = [_file_hash(results / f"{stem}.parquet") for stem in stems]
    return Stamp(results, "predict", [asdict(cfg.predict), inputs, [r.name for r in runs]],
                 [results / "prediction.json"])


def predict_not_applicable(n_models: int) -> str:
    """Why the predict stage cannot apply to ``n_models`` models ("" when it can)."""
    from rankscope.downstream.predict import MIN_MODELS

    if n_models >= MIN_MODELS:
        return ""
    return (f"not applicable: {n_models} model(s), the predictor needs at least {MIN_MODELS} (add methods or "
            f"seeds to fit it)")


def clear_predict(results: Path) -> None:
    """Remove the predictor's outputs, so a skipped stage leaves no stale prediction from an earlier study."""
    for path in results.glob("prediction*"):
        if path.is_file():
            path.unlink()
    (results / "stamps" / "predict.json").unlink(missing_ok=True)


def run_predict(cfg: StudyConfig, runs: Sequence[RunConfig], results: Path) -> None:
    """Fit log-PPL vs log-PPL + metrics predictors over the finished runs (needs >= 4 of them)."""
    import pandas as pd

    from rankscope.diagnostics.table import read_table
    from rankscope.downstream.item_rows import read_items
    from rankscope.downstream.predict import predict_from_tables

    meta = [_meta(r) for r in runs]
    pd.DataFrame(meta).to_csv(results / "runs.csv", index=False)
    diag = read_table(results / "diagnostics.parquet")
    down = read_table(results / "downstream.parquet")
    p = cfg.predict
    result = predict_from_tables(diag, down, meta, list(p.features) if p.features else None,
                                 bootstrap_iters=p.bootstrap_iters, seed=0,
                                 items=read_items(results / "downstream.parquet"))
    result.write(results)
    _predict_targets(cfg, meta, diag, results)


def _predict_targets(cfg: StudyConfig, meta: list[dict], diag, results: Path) -> None:
    """Shifted NLL (per text), fine-tuned accuracy and forgetting, when those stages wrote rows.

    ``prediction_targets.json`` records each target's output file or why it was not fitted.
    """
    import pandas as pd

    from rankscope.diagnostics.table import read_table
    from rankscope.downstream.predict import predict_from_tables, target_stem
    from rankscope.errors import UserError

    for stale in results.glob("prediction_*"):  # targets of an earlier run that may no longer apply
        if stale.name not in ("prediction_targets.json", "prediction_features.csv"):
            stale.unlink()
    extra = [read_table(results / f"{stem}.parquet") for stem in ("heldout", "finetune")
             if (results / f"{stem}.parquet").is_file()]
    targets: list[str] = []
    if extra and "heldout_nll" in set(extra[0]["metric"]):
        targets += [f"shift_nll:{n}" for n in sorted(set(extra[0]["name"].astype(str)) - {"val"})]
    if any("ft_acc" in set(e["metric"]) for e in extra):
        targets += ["ft_acc", "forgetting"]
    down = pd.concat(extra, ignore_index=True) if extra else None
    record: dict[str, str] = {}
    p = cfg.predict
    for target in targets:
        try:
            res = predict_from_tables(diag, down, meta, list(p.features) if p.features else None, target=target,
                                      bootstrap_iters=p.bootstrap_iters, seed=0)
        except UserError as exc:
            record[target] = f"not fitted: {exc}"
            continue
        record[target] = res.write(results, target_stem(target))["json"].name
    write_json_atomic(results / "prediction_targets.json", record)


def run_report(out_dir: Path) -> Path:
    from rankscope.report.render import render_report

    return render_report(out_dir)
