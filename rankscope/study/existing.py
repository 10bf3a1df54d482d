"""Analysis-only studies: ``rankscope study --runs A B C`` (or ``runs:`` in a study config).

The runs already exist (rankscope run folders, external checkpoint series, or both; rankscope.runs), so
there is no training stage; everything after it is the ordinary study: analyze, eval, ood, finetune,
predict, report, with the study config's settings. What replaces training:

* ``validation`` job: the perplexity of every checkpoint on the validation text the user names
  (``validation:``: a file, ``hf:NAME[:CONFIG]`` or ``embedded:SPLIT``; default ``val``, each run's own
  validation data). It is the ``val_ppl`` of each run's curve in the report and the perplexity the
  predictor starts from (``results/validation.parquet``).
* parity (when ``parity.protocol`` is not ``off``): chosen among the given checkpoints. Target and choice
  are the study's (rankscope/study/parity.py) with the checkpoint *step* in place of tokens, because an
  external run does not record its batch size; ``results/parity.json`` says so (``x_axis: step``).
* ``<out>/runs/<name>/`` holds each run's description (config.json, meta.json, metrics.jsonl with the
  validation perplexities), not its checkpoints, which stay where they are (``study.json`` lists them).

Every run is opened and checked before anything is written, so a bad run is exit 2 with nothing written.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from rankscope.errors import UserError

RUN_SPEC_KEYS = ("path", "name", "method", "seed", "scale", "tokenizer", "allow_pickle")
VALIDATION = "validation"


def check_run_specs(specs: Any, validation: str) -> None:
    """The shape of ``runs:`` entries and the validation text, checked when the config is read."""
    from rankscope.downstream.heldout import parse_texts

    for spec in specs:
        if isinstance(spec, dict):
            unknown = sorted(set(spec) - set(RUN_SPEC_KEYS))
            if unknown or not isinstance(spec.get("path"), str):
                raise UserError(f"study: runs entry {spec!r} needs a 'path' and only the keys "
                                f"{', '.join(RUN_SPEC_KEYS)}" + (f" (unknown: {unknown})" if unknown else ""))
        elif not isinstance(spec, str):
            raise UserError(f"study: runs entries are paths or mappings with a 'path', got {spec!r}")
    parse_texts([validation])


def open_study_runs(cfg) -> list:
    """Every run of ``cfg.runs``, opened and checked (labels from the entries applied), names unique."""
    from rankscope.runs import ExternalOptions, open_run
    from rankscope.runs.external import LABEL_KEYS, _int_seed

    runs = []
    for spec in cfg.runs:
        d = {"path": spec} if isinstance(spec, str) else dict(spec)
        labels = {k: d[k] for k in LABEL_KEYS if k in d}
        opts = ExternalOptions(tokenizer=d.get("tokenizer"), labels={d["path"]: labels},
                               allow_pickle=bool(d.get("allow_pickle")))
        run = open_run(d["path"], opts)
        if run.kind == "rankscope" and labels:  # a run folder knows its labels; the entry may rename them
            run = replace(run, **{k: (_int_seed(v, run.path) if k == "seed" else str(v)) for k, v in labels.items()})
        if not run.steps:
            raise UserError(f"study: run {run.path} has no checkpoint; train it first or leave it out of runs")
        runs.append(run)
    names = [r.name for r in runs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"study: run name(s) {dup} occur more than once ({', '.join(str(r.path) for r in runs if r.name in dup)}); "
                        f"give each a distinct name (runs: [{{path: ..., name: ...}}] or a rankscope_run.json)")
    _check_one_tokenizer(runs)
    return runs


def _check_one_tokenizer(runs: list) -> None:
    from rankscope.diagnostics.analyze import _tokenizer_fingerprint

    if len({_tokenizer_fingerprint(str(r.data.tokenizer)) for r in runs}) > 1:
        shown = "; ".join(f"{r.name}: {r.data.tokenizer}" for r in runs)
        raise UserError(f"study: the runs use different tokenizers ({shown}); a study compares runs on one shared "
                        f"set of held-out tokens, so give runs of one tokenizer")


def describe(cfg, runs: list, out_dir: Path) -> str:
    lines = [f"study {cfg.name}: analysis only, {len(runs)} existing run(s); no training. Validation text for "
             f"parity and the predictor's perplexity: {cfg.validation}"]
    for r in runs:
        lines.append(f"  {r.name} ({r.kind}, method {r.method}, seed {r.seed}, scale {r.scale}): {r.path}, "
                     f"steps {r.steps}")
    lines.append(f"then analyze / eval / ood / finetune / predict / report into {out_dir / 'results'}"
                 + ("" if cfg.parity.protocol == "off" else "; parity among the given checkpoints"))
    return "\n".join(lines)


def write_run_descriptions(runs: list, out_dir: Path) -> None:
    """``<out>/runs/<name>/``: what the report reads about each run (its checkpoints stay where they are)."""
    for run in runs:
        folder = out_dir / "runs" / run.name
        folder.mkdir(parents=True, exist_ok=True)
        if run.kind == "rankscope":
            for name in ("config.json", "meta.json", "memory.json"):
                if (Path(run.path) / name).is_file():
                    shutil.copyfile(Path(run.path) / name, folder / name)
            continue
        mcfg = run.model_config()
        (folder / "config.json").write_text(json.dumps(
            {"name": run.name, "method": run.method, "model": run.scale, "train": {"seed": run.seed},
             "source": str(Path(run.path).resolve()), "kind": "external", "layout": run.layout,
             "model_config": mcfg.to_dict(), "data": {"tokenizer": str(run.data.tokenizer)}}, indent=2))
        (folder / "meta.json").write_text(json.dumps(
            {"method": run.method, "seed": run.seed, "external": True, "source": str(Path(run.path).resolve()),
             "checkpoints": {str(s): str(run.checkpoint_dir(s)) for s in run.steps}}, indent=2))


def measure_validation(cfg, runs: list, out_dir: Path) -> dict[str, dict[int, float]]:
    """Perplexity of every checkpoint on the validation text -> results/validation.parquet and each run's
    metrics.jsonl (eval lines); returns {run: {step: ppl}}."""
    import pandas as pd

    from rankscope.diagnostics.table import rows_to_frame, write_table
    from rankscope.downstream.heldout import parse_texts
    from rankscope.downstream.ppl import score_rows, score_texts

    (text,) = parse_texts([cfg.validation])
    o = cfg.ood
    frames, curves = [], {}
    for run in runs:
        tokenizer = run.tokenizer()
        docs = text.sample(run.data, o.max_bytes, 0, 0)
        rows = []
        for step in run.steps:
            model = run.load_model(step, device=o.device)
            scored = score_texts(model, tokenizer, docs)
            rows += score_rows(scored, text, run=run.name, method=run.method, step=step, scale=run.scale,
                               seed=run.seed, iters=o.bootstrap_iters, boot_seed=0,
                               settings={"max_bytes": o.max_bytes, "text": cfg.validation})
            del model
        frame = rows_to_frame(rows)
        frames.append(frame)
        ppl = frame[frame["metric"] == "heldout_ppl"]
        curves[run.name] = {int(s): float(v) for s, v in zip(ppl["step"], ppl["value"])}
        lines = [json.dumps({"kind": "eval", "step": s, "val_ppl": p, "text": cfg.validation})
                 for s, p in sorted(curves[run.name].items())]
        (out_dir / "runs" / run.name / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    write_table(pd.concat(frames, ignore_index=True), out_dir / "results" / VALIDATION)
    return curves


def choose_parity(cfg, runs: list, curves: dict[str, dict[int, float]], out_dir: Path) -> list:
    """Each run's parity checkpoint among its own; results/parity.json; returns the runs cut to that step."""
    from dataclasses import asdict

    from rankscope.study.jobs import write_json_atomic
    from rankscope.study.parity import Point, choose, resolve_target

    p = cfg.parity
    points = {r.name: [Point(float(s), ppl, r.name, s) for s, ppl in sorted(curves[r.name].items())] for r in runs}
    by_method: dict[str, list[Point]] = {}
    for r in runs:
        by_method.setdefault(r.method, []).extend(points[r.name])
    budget = float(max(max(r.steps) for r in runs))
    target = resolve_target(p.target, by_method, budget, p.reference)
    rows, models = [], []
    for r in runs:
        c = choose(r.method, points[r.name], target.ppl, p.tolerance, budget, extra_done=True)
        step = int(c.tokens) if c.reached and c.tokens is not None else None
        rows.append({"main_run": r.name, "method": r.method, "seed": r.seed, **asdict(c), "reached": c.reached,
                     "run": r.name if step is not None else "", "parity_step": step, "equal_step": r.steps[-1],
                     "equal_step_ppl": curves[r.name].get(r.steps[-1]), "tokens_to_target": None})
        if step is not None and c.status in ("within", "outside"):
            models.append(replace(r, steps=[step]))
    body = {"protocol": "existing-checkpoints", "x_axis": "step", "settings": asdict(p),
            "target": {"ppl": target.ppl, "how": target.how.replace("tokens", "steps")}, "runs": rows,
            "per_method": {}, "models": [m.name for m in models],
            "curves": {n: [{"tokens": pt.tokens, "ppl": pt.ppl, "run": pt.run, "step": pt.step} for pt in pts]
                       for n, pts in points.items()},
            "note": "parity among existing checkpoints: the x axis is the checkpoint step (external runs do not "
                    "record tokens); checkpoints are not cooled models unless the runs were trained that way"}
    write_json_atomic(out_dir / "results" / "parity.json", body)
    return models


def _study_json(cfg, runs: list) -> dict[str, Any]:
    """study.json: the config, with the grid fields describing the given runs (nothing was trained)."""
    body = cfg.to_dict()
    body.update(methods=list(dict.fromkeys(r.method for r in runs)), seeds=list(dict.fromkeys(r.seed for r in runs)),
                model=", ".join(dict.fromkeys(r.scale for r in runs)), steps=max(r.steps[-1] for r in runs),
                checkpoint_steps=sorted({s for r in runs for s in r.steps}), analysis_only=True,
                existing_runs=[{"name": r.name, "kind": r.kind, "method": r.method, "seed": r.seed,
                                "scale": r.scale, "path": str(Path(r.path).resolve()), "steps": list(r.steps)}
                               for r in runs])
    return body


def run_existing(cfg, out_dir: str | Path, dry_run: bool = False, progress: bool = True,
                 stop_signals: tuple[int, ...] = ()):
    """The analysis-only study (module docstring); returns the runner's StudyResult."""
    from rankscope.diagnostics.table import read_table
    from rankscope.study import parity_stage, runner, stages
    from rankscope.study.execute import run_stage, study_progress
    from rankscope.study.jobs import STAGES, Job, StatusBook, write_json_atomic

    out_dir = Path(out_dir)
    # The runs bring their own data and tokenizer; the study's data section (a preset's left-out source for
    # the shift text, say) describes training data that these runs did not use.
    cfg = replace(cfg, data=replace(cfg.data, holdout_source=""))
    runs = open_study_runs(cfg)  # every run checked before anything is written
    jobs = [Job(VALIDATION, "ood", f"{len(runs)} run(s)")] + [Job(stage, stage) for stage in STAGES[1:]]
    if dry_run:
        print(describe(cfg, runs, out_dir))
        return runner.StudyResult(out_dir, jobs)
    results = out_dir / "results"
    results.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "study.json", _study_json(cfg, runs))
    write_run_descriptions(runs, out_dir)
    book = StatusBook(out_dir / "status.json", jobs)
    book.write()
    with runner._terminate_as_exit(stop_signals), study_progress(cfg, runs, progress, train=False) as bar:
        curves: dict[str, dict[int, float]] = {}
        o = cfg.ood
        stamp = stages.Stamp(results, VALIDATION, [cfg.validation, o.max_bytes, o.bootstrap_iters,
                                                   stages._run_keys(runs, final_only=False)],
                             [results / f"{VALIDATION}.parquet"])
        run_stage(book.jobs[VALIDATION], stamp, lambda: curves.update(measure_validation(cfg, runs, out_dir)),
                          book, out_dir)
        if not curves and book.jobs[VALIDATION].state == "skipped":  # fresh: read what the last run measured
            table = read_table(results / f"{VALIDATION}.parquet")
            for r in runs:
                mine = table[(table["run"] == r.name) & (table["metric"] == "heldout_ppl")]
                curves[r.name] = {int(s): float(v) for s, v in zip(mine["step"], mine["value"])}
        for r in runs:
            r.extra["val_ppl"] = curves.get(r.name, {})
        parity_stage.baselines_for(replace(cfg, data=runs[0].data), out_dir, runs[0])  # keyed by the runs' data
        if curves and cfg.parity.protocol != "off":
            models: list = []
            job = Job("parity", "predict", "parity checkpoints")
            book.jobs[job.id] = job
            run_stage(job, None, lambda: models.extend(choose_parity(cfg, runs, curves, out_dir)), book,
                              out_dir)
            parity_stage.later_stages(cfg, out_dir, models, book, bar)
        runner.later_stages(cfg, out_dir, runs, book, bar, None)
    return runner.finish(out_dir, book, None, progress)
