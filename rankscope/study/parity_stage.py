"""The study's parity stage: train cooled models of several budgets, pick each method's parity model.

Protocol ``wsd-branches`` (default): the main runs are WSD runs whose last ``cooldown_fraction`` of steps
decays (so each is the cooled model of the full budget); at every branch step s a branch decays over
c = round(f·s/(1−f)) updates, i.e. a cooled model of budget s + c with the same cooldown share.
Protocol ``full-schedules``: one more cosine run per budget multiple (the main run is the 1.0 budget).
Then, per method, the ppl(tokens) curve of these cooled models gives the target and the parity choice
(rankscope/study/parity.py); one more cooled model is trained at a predicted crossing when no model is
within the tolerance. ``results/parity.json`` records target, choices, curves, costs and the n-gram
baselines; the parity models are then analysed, evaluated and used by the predictor in ``results/parity/``.
Every model is an ordinary run folder trained by an ordinary (resumable, skippable) training job.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from rankscope.config import RunConfig
from rankscope.study.config import StudyConfig
from rankscope.study.jobs import Job, train_command, write_json_atomic
from rankscope.study.parity import ParityChoice, Point, branch_step_for, choose, resolve_target


def tokens_per_step(run: RunConfig) -> int:
    """Tokens per update, from the run's last checkpoint (world size included) or its config."""
    from rankscope.training import checkpoint as ckpt

    steps = ckpt.list_checkpoints(run.run_dir)
    if steps:
        state = ckpt.read_train_state(run.run_dir, steps[-1])
        if state.get("tokens_seen"):
            return int(state["tokens_seen"]) // int(state["step"])
    t = run.train
    return t.micro_batch_size * t.grad_accum * run.data.seq_len


def cooldown_for(step: int, fraction: float) -> int:
    return max(1, round(fraction * step / (1.0 - fraction)))


def parity_dir(main: RunConfig) -> str:
    """Cooled models of other budgets live beside ``runs/`` in ``parity_runs/`` (the equal-step report is
    unchanged by them); each is an ordinary run folder."""
    return str(Path(main.out_dir).parent / "parity_runs")


def candidates(cfg: StudyConfig, main: RunConfig) -> list[RunConfig]:
    """The cooled models of other budgets planned for one main run (configs only; nothing is created)."""
    from rankscope.training.branch import branch_config

    p = cfg.parity
    if p.protocol == "wsd-branches":
        return [branch_config(main, s, cooldown_for(s, p.cooldown_fraction), out_dir=parity_dir(main)) for s in cfg.branch_steps]
    if p.protocol == "full-schedules":
        out = []
        for m in p.budgets:
            steps = round(m * cfg.steps)
            if steps != cfg.steps and 0 < m <= p.cap:
                out.append(full_run(main, steps))
        return out
    return []


def planned_jobs(cfg: StudyConfig, mains: list[RunConfig]) -> list[tuple[RunConfig, int]]:
    """Every cooled model planned before training, with the updates its own job trains (a branch trains only
    its cooldown). The one extra model per run at a predicted crossing is decided later and not listed."""
    out = []
    for main in mains:
        for run in candidates(cfg, main):
            out.append((run, run.train.decay if cfg.parity.protocol == "wsd-branches" else run.train.steps))
    return out


def full_run(main: RunConfig, steps: int) -> RunConfig:
    t = replace(main.train, steps=steps, save_steps=(steps,), eval_every=0)
    return replace(main, name=f"{main.name}_n{steps}", out_dir=parity_dir(main), train=t)


def _materialise(cfg: StudyConfig, main: RunConfig, run: RunConfig) -> RunConfig:
    """Lay out a branch folder from its finished parent (full-schedule runs start from scratch)."""
    if cfg.parity.protocol != "wsd-branches":
        return run
    from rankscope.training.branch import create_branch

    step = run.train.steps - run.train.decay
    return create_branch(main.run_dir, step, run.train.decay, name=run.name, out_dir=run.out_dir)


def _train(cfg: StudyConfig, out_dir: Path, runs: list[RunConfig], book, bar) -> list[RunConfig]:
    """Train ``runs`` as ordinary study jobs (skipped when finished); returns the ones that finished."""
    from rankscope.study.execute import train_jobs

    jobs = []
    for r in runs:
        path = (Path(r.out_dir) / f"{r.name}.json").resolve()
        write_json_atomic(path, r.to_dict())
        job = book.jobs.get(f"train:{r.name}") or Job(f"train:{r.name}", "train", r.name,
                                                       train_command(path, cfg.launcher))
        book.jobs[job.id] = job
        jobs.append(job)
    book.write()
    train_jobs(cfg, out_dir, runs, jobs, book, bar)
    return [r for r in runs if book.jobs[f"train:{r.name}"].state in ("done", "skipped")]


def _point(run: RunConfig, tps: int) -> Point | None:
    from rankscope.study.stages import final_ppl

    ppl = final_ppl(run.run_dir)
    if ppl is None or not math.isfinite(ppl):
        return None
    return Point(float(run.train.steps * tps), float(ppl), run.name, run.train.steps)


def arm_labels(cfg: StudyConfig, out_dir: Path) -> dict[str, str]:
    """Guide-study arm -> its row label in parity.json ("galore+sam", "galore cost-matched to sam")."""
    if not cfg.guides.methods:
        return {}
    recs = [rec for _, rec in cfg.guide_arms(cfg.to_run_configs(out_dir))]
    return {r["run"]: f"{r['method']}+{r['guide']}" if r["role"] == "guided" else
            f"{r['method']} cost-matched to {r['guide']}" for r in recs}


def _method_curves(points: dict[str, list[Point]], mains: dict[str, RunConfig]) -> dict[str, list[Point]]:
    """Per method: mean log-ppl over seeds at each budget (seeds share budgets)."""
    by: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for name, pts in points.items():
        for p in pts:
            by[mains[name].method][p.tokens].append(math.log(p.ppl))
    return {m: [Point(t, math.exp(sum(v) / len(v))) for t, v in sorted(d.items())] for m, d in by.items()}


def run_parity(cfg: StudyConfig, out_dir: Path, mains: list[RunConfig], book, bar,
               siblings: list[RunConfig] = ()) -> list[RunConfig]:
    """Train the cooled models, choose the parity models, write ``results/parity.json``; returns the models.

    Finished ``siblings`` (data-order siblings trained to the full budget) add their final perplexity to
    their method's seed mean at that budget, so the target is the mean of every draw of the reference or
    slowest method, not one of them; they get no cooled models and no parity model of their own.
    """
    p = cfg.parity
    by_name = {m.name: m for m in mains}
    planned: dict[str, list[RunConfig]] = {m.name: [_materialise(cfg, m, c) for c in candidates(cfg, m)]
                                           for m in mains}
    done = {r.name for r in _train(cfg, out_dir, [r for rs in planned.values() for r in rs], book, bar)}
    tps = {m.name: tokens_per_step(m) for m in mains}
    points: dict[str, list[Point]] = {}
    configs: dict[str, RunConfig] = {}
    for m in mains:
        runs = [m] + [r for r in planned[m.name] if r.name in done]
        configs.update({r.name: r for r in runs})
        points[m.name] = [pt for pt in (_point(r, tps[m.name]) for r in runs) if pt is not None]
    budget = max(m.train.steps * tps[m.name] for m in mains) * min(p.cap, 1.0)
    cap = max(m.train.steps * tps[m.name] for m in mains) * p.cap
    curve_points, curve_runs = dict(points), dict(by_name)
    for sib in siblings:
        tps[sib.name] = tokens_per_step(sib)
        pt = _point(sib, tps[sib.name])
        if pt is not None:
            curve_points[sib.name], curve_runs[sib.name] = [pt], sib
    arms = arm_labels(cfg, out_dir)  # guide arms reach their own parity model but do not move the target
    curve_points = {n: pts for n, pts in curve_points.items() if n not in arms}
    target = resolve_target(p.target, _method_curves(curve_points, curve_runs), budget, p.reference)
    draws = {m: sum(1 for n in curve_points if curve_runs[n].method == m) for m in {r.method for r in curve_runs.values()}}
    if siblings and not target.how.startswith("explicit"):
        target = replace(target, how=f"{target.how}; seed means of log-ppl over "
                                     + ", ".join(f"{m} {k}" for m, k in sorted(draws.items())) + " run(s)")
    choices = {n: choose(by_name[n].method, pts, target.ppl, p.tolerance, cap) for n, pts in points.items()}
    extra = {n: _extra(cfg, by_name[n], c, tps[n]) for n, c in choices.items()
             if c.status == "predict" and p.extra_branch}
    extra = {n: r for n, r in extra.items() if r is not None}
    trained = {r.name for r in _train(cfg, out_dir, list(extra.values()), book, bar)} if extra else set()
    for n in [n for n, c in choices.items() if c.status == "predict"]:  # final: within, outside or not reached
        r = extra.get(n)
        got = r is not None and r.name in trained and (pt := _point(r, tps[n])) is not None
        if got:
            points[n].append(pt)
            configs[r.name] = r
        choices[n] = choose(by_name[n].method, points[n], target.ppl, p.tolerance, cap, extra_done=True)
        if not got and choices[n].status == "outside":
            why = ("extra_branch is off" if not p.extra_branch else "it is before the end of the warmup"
                   if r is None else "the extra cooled model did not finish training")
            choices[n] = replace(choices[n], note=f"predicted crossing at {choices[n].tokens_to_target:.4g} "
                                                  f"tokens; {why}")
    models = [configs[c.run] for c in choices.values() if c.reached and c.run in configs]
    _write(cfg, out_dir, target, choices, points, configs, tps, by_name, models)
    return models


def _extra(cfg: StudyConfig, main: RunConfig, choice: ParityChoice, tps: int) -> RunConfig | None:
    s, c = branch_step_for(choice.predicted_tokens or 0.0, tps, cfg.parity.cooldown_fraction)
    if cfg.parity.protocol == "full-schedules":
        return full_run(main, s + c)
    from rankscope.training.branch import create_branch

    if s < max(main.train.warmup, 1):
        return None
    from rankscope.errors import UserError

    try:
        return create_branch(main.run_dir, s, c, name=f"{main.name}_b{s}c{c}", out_dir=parity_dir(main))
    except UserError:  # no checkpoint before the predicted decay start: the same WSD schedule from step 0
        t = replace(main.train, steps=s + c, warmup_steps=main.train.warmup, decay_steps=c, save_steps=(),
                    save_every=0, eval_every=0)
        return replace(main, name=f"{main.name}_w{s + c}", out_dir=parity_dir(main), train=t)


def _write(cfg, out_dir, target, choices, points, configs, tps, mains, models) -> None:
    from rankscope.study.parity_cost import cost_row, seed_interval
    from rankscope.training.logging import read_metrics

    rows = []
    labels = arm_labels(cfg, out_dir)
    for name, c in choices.items():
        main = mains[name]
        model = configs.get(c.run)
        records = read_metrics(model.run_dir) if model else []
        cost = cost_row(model or main, (model or main).run_dir, c.tokens_to_target if c.reached else None,
                        tps[name], records)
        rows.append({"main_run": name, "method": labels.get(name, main.method), "seed": main.train.weights_seed, **asdict(c), "reached": c.reached,
                     "parity_step": model.train.steps if model and c.reached else None,
                     "equal_step": main.train.steps, "equal_step_ppl": _final(main), **cost})
    per_method: dict[str, dict[str, Any]] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        per_method[method] = {k: seed_interval([r.get(k) for r in mine if r["reached"]])
                              for k in ("ppl", "tokens_to_target", "flops_to_target", "seconds_to_target",
                                        "memory_bytes", "peak_mib")}
        per_method[method]["reached"] = sum(bool(r["reached"]) for r in mine)
        per_method[method]["seeds"] = len(mine)
    body = {"protocol": cfg.parity.protocol, "settings": asdict(cfg.parity),
            "target": {"ppl": target.ppl, "how": target.how}, "runs": rows, "per_method": per_method,
            "models": [m.name for m in models],
            "curves": {n: [asdict(pt) for pt in sorted(pts, key=lambda q: q.tokens)] for n, pts in points.items()},
            "baselines": baselines_for(cfg, out_dir, next(iter(mains.values())))}
    write_json_atomic(out_dir / "results" / "parity.json", body)


def _final(run: RunConfig) -> float | None:
    from rankscope.study.stages import final_ppl

    return final_ppl(run.run_dir)


def baselines_for(cfg: StudyConfig, out_dir: Path, run: RunConfig) -> dict[str, Any] | None:
    """n-gram baselines of the study's validation split (computed once, cached in results/baselines.json)."""
    import json

    path = out_dir / "results" / "baselines.json"
    key = {"data": asdict(cfg.data)}
    try:
        stored = json.loads(path.read_text())
        if stored.get("key") == json.loads(json.dumps(key, default=str)):
            return stored["baselines"]
    except (OSError, ValueError, KeyError):
        pass
    from rankscope.data.ngram_baselines import study_baselines

    try:
        got = study_baselines(run).to_dict()
    except Exception as exc:  # noqa: BLE001 - baselines are context; their absence is reported, not fatal
        return {"error": f"{type(exc).__name__}: {exc}"}
    write_json_atomic(path, {"key": key, "baselines": got})
    return got


def train_and_choose(cfg: StudyConfig, out_dir: Path, runs: list[RunConfig], book, bar) -> list[RunConfig]:
    """Runner hook after the main training: n-gram baselines always, the parity protocol when configured."""
    finished = [r for r in runs if book.jobs.get(f"train:{r.name}") is not None
                and book.jobs[f"train:{r.name}"].state in ("done", "skipped")]
    if not finished:
        return []
    mains, siblings = cfg.main_runs(finished), cfg.sibling_runs(finished)
    if not mains:
        return []
    if not cfg.parity.enabled:
        baselines_for(cfg, out_dir, mains[0])
        return []
    # the selection's own job (its training jobs are listed, and timed, as train:<name>)
    job = book.jobs.get("parity") or Job("parity", "predict", "parity models")
    book.jobs[job.id] = job
    import traceback

    try:
        models = run_parity(cfg, out_dir, mains, book, bar, siblings)
    except Exception as exc:  # noqa: BLE001 - a failed parity stage is recorded; the equal-step study goes on
        log = out_dir / "logs" / "parity.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(traceback.format_exc())
        book.update(job, "failed", 0.0, f"{type(exc).__name__}: {exc} (traceback: {log})")
        return []
    book.update(job, "done", 0.0)
    return models


def later_stages(cfg: StudyConfig, out_dir: Path, models: list[RunConfig], book, bar) -> None:
    """analyze / eval / ood / finetune / predict on the parity models into ``results/parity/`` (skipped when
    fresh)."""
    if not models:
        return
    from rankscope.study import stages

    results = out_dir / "results" / "parity"
    results.mkdir(parents=True, exist_ok=True)
    work = [("analyze", lambda: stages.analysis_stamp(cfg, models, results),
             lambda: run_analyze_final(cfg, models, results), ()),
            ("eval", lambda: stages.eval_stamp(cfg, models, results), lambda: stages.run_eval(cfg, models, results),
             ()),
            ("ood", lambda: stages.ood_stamp(cfg, models, results), lambda: stages.run_ood(cfg, models, results), ()),
            ("finetune", lambda: stages.finetune_stamp(cfg, models, results),
             lambda: stages.run_finetune(cfg, models, results), ()),
            ("predict", lambda: stages.predict_stamp(cfg, models, results),
             lambda: stages.run_predict(cfg, models, results), ("analyze", "eval"))]
    for stage, make_stamp, fn, needs in work:
        job = book.jobs.get(f"{stage}:parity") or Job(f"{stage}:parity", stage, "parity models")
        book.jobs[job.id] = job
        bar.start(stage, "parity models", bar.stage_units(stage, parity=True), parity=True)
        _parity_stage(cfg, out_dir, models, book, job, make_stamp, fn, needs)
        bar.finish_job("parity models", job.state)


def _parity_stage(cfg, out_dir, models, book, job, make_stamp, fn, needs) -> None:
    from rankscope.study import stages
    from rankscope.study.execute import run_stage

    stage = job.stage
    blocked = [n for n in needs if book.jobs[f"{n}:parity"].state not in ("done", "skipped")]
    if blocked:
        book.update(job, "failed", 0.0, f"not run: needs {', '.join(blocked)} (parity), which failed")
    elif (stage == "ood" and not cfg.ood.enabled(cfg.data)) or (stage == "finetune" and cfg.ood.finetune is None):
        book.update(job, "skipped", 0.0, "not configured (study config: ood)")
    elif stage == "predict" and stages.predict_not_applicable(len(models)):
        book.update(job, "skipped", 0.0, f"parity models: {stages.predict_not_applicable(len(models))}")
    else:
        run_stage(job, make_stamp(), fn, book, out_dir)


def run_analyze_final(cfg: StudyConfig, models: list[RunConfig], results: Path) -> None:
    """Diagnostics of each parity model at its own final checkpoint (its parity checkpoint).

    Pairwise and reference diagnostics (IMIB, CKA against full-rank) pair parity models with each other at
    their own steps (``pair_at="last"``): trained to the same perplexity, not for the same number of steps.
    """
    from rankscope.diagnostics.analyze import analyze
    from rankscope.diagnostics.context import RunHandle

    handles = []
    for m in models:
        h = RunHandle.open(m.run_dir if isinstance(m, RunConfig) else m)  # trained, or an existing run
        h.steps = h.steps[-1:]
        handles.append(h)
    a = cfg.analysis
    analyze(handles, metrics=list(a.metrics) if a.metrics else None, out=results, mode=a.mode,
            n_tokens=a.n_tokens, settings={k: dict(v) for k, v in a.settings.items()}, device=a.device,
            progress=False, workers=a.workers, pair_at="last")
