"""Subcommands that wrap the analysis, evaluation, prediction, study and report subpackages.

Each command is a thin shell over one plain function (imported lazily, so ``rankscope --help`` stays fast).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from rankscope.cli_app import app, exit_if_stopped
from rankscope.cli_runs import with_run_options
from rankscope.errors import UserError


def _json_option(text: Optional[str], flag: str) -> dict:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{flag} must be JSON, e.g. '{{\"landscape_random\": {{\"n_directions\": 8}}}}' ({exc.msg})") from None
    if not isinstance(value, dict):
        raise UserError(f"{flag} must be a JSON object mapping group name to settings")
    return value


@app.command()
@with_run_options()
def analyze(
    run_dirs: list[Path] = typer.Argument(..., help="Run folders (one per method/seed; rankscope's or external "
                                          "checkpoint folders, docs/external_runs.md); the full_rank run is the reference."),
    out: Path = typer.Option(Path("analysis"), "--out", "-o", help="Output folder: OUT/diagnostics.parquet and .csv, "
                             "and the per-checkpoint cache OUT/cache/ (a folder, as for study, eval, ppl, finetune and predict)."),
    metrics: Optional[list[str]] = typer.Option(None, "--metric", "-m", help="Metric ids or groups (default: the 16 headline metrics)."),
    mode: str = typer.Option("default", help="default (corrected) | faithful (the release's conventions)."),
    n_tokens: int = typer.Option(4096, help="Held-out validation tokens of the shared evaluation batch (the same "
                                 "tokens for every run and checkpoint; the paper: 65536). Activation metrics (act_*) "
                                 "use all of them; loss landscapes (rand_*, pca_*), barriers (ckpt_barrier*, imib*), "
                                 "hessian and trajectory use the batch's first 512 (their max_tokens setting, e.g. "
                                 "--settings '{\"landscape_random\": {\"max_tokens\": null}}' for all); weight and "
                                 "update spectra (w_*, dw_*) use no data."),
    settings: Optional[str] = typer.Option(None, help="JSON per-group settings, e.g. '{\"landscape_random\": {\"n_directions\": 8}}'."),
    device: str = typer.Option("cpu", help="cpu | cuda."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Recompute everything."),
    workers: int = typer.Option(1, help="CPU worker processes (each gets cores // workers threads); 2 is ~25 % "
                                "faster than 1 on a 2-core machine."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    keep_going: bool = typer.Option(False, "--keep-going", help="On a failed checkpoint or metric, compute the rest "
                                    "and record the failure as an 'error: ...' row (still exits 1)."),
) -> None:
    """Compute the study's diagnostics for every checkpoint of the given runs (cached per checkpoint).

    Exits 1 when a checkpoint or metric could not be computed (the message names it), 2 on a user error.
    """
    from rankscope.diagnostics.analyze import analyze as run_analyze
    from rankscope.errors import AnalysisFailed

    try:
        frame = run_analyze(run_dirs, metrics=metrics or None, out=out, mode=mode, n_tokens=n_tokens,
                            settings=_json_option(settings, "--settings"), device=device, progress=not quiet,
                            use_cache=not no_cache, workers=workers, keep_going=keep_going)
    except AnalysisFailed as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None  # not typer.Exit: exit 1 whatever the caller's standalone mode
    typer.echo(f"{len(frame)} rows -> {out / 'diagnostics.parquet'}")


@app.command("eval")
@with_run_options()
def evaluate(
    run_dirs: list[Path] = typer.Argument(..., help="Run folders (rankscope's or external checkpoint folders)."),
    steps: str = typer.Option("final", help="final | all | comma-separated steps."),
    tasks: Optional[list[str]] = typer.Option(None, "--task", help="Offline task names (default: all)."),
    # = downstream.evaluate.DEFAULT_MAX_ITEMS (a literal so `--help` needs no torch import; a test ties them)
    max_items: int = typer.Option(300, help="Items per task (0: all), sampled with a fixed seed."),
    out: Optional[Path] = typer.Option(None, help="Output folder: also write all runs' rows to OUT/downstream.parquet "
                                       "and .csv, replacing them (e.g. --out study/results); a path ending in .parquet or .csv names the "
                                       "table file. Each run's own results/downstream.parquet is always written."),
    lm_eval: bool = typer.Option(False, "--lm-eval", help="Cross-check through lm-evaluation-harness."),
    online: bool = typer.Option(False, "--online", help="Also run the paper's hub tasks through lm-eval (internet)."),
    task_files: Optional[list[Path]] = typer.Option(
        None, "--task-file", help='Your own task: JSON lines of {"context": ..., "choices": [...], "answer": '
        "index or text}; named after the file. With it, shipped tasks run only if named by --task."),
    lm_eval_tasks: Optional[list[str]] = typer.Option(
        None, "--lm-eval-task", help="An lm-eval task name or task YAML file (needs the 'eval' extra: lm_eval)."),
    device: str = typer.Option("cpu", help="cpu | cuda."),
) -> None:
    """Downstream accuracy (with bootstrap CIs) on offline tasks built from held-out text, or on your own tasks."""
    from rankscope.downstream.commands import cmd_eval

    cmd_eval(run_dirs, steps=steps, tasks=tasks, max_items=max_items, out=out, lm_eval=lm_eval, online=online,
             device=device, task_files=task_files or (), lm_eval_tasks=lm_eval_tasks or ())


@app.command()
@with_run_options()
def ppl(
    run_dirs: list[Path] = typer.Argument(..., help="Run folders (rankscope's or external checkpoint folders)."),
    texts: list[str] = typer.Option(..., "--text", help="Held-out text: a .txt/.jsonl/.parquet file, "
                                    "hf:NAME[:CONFIG] (online), embedded:SPLIT[:SOURCE,...], val or shift."),
    steps: str = typer.Option("final", help="final | all | comma-separated steps."),
    split: str = typer.Option("validation", help="Split of hf: datasets (e.g. validation)."),
    column: str = typer.Option("text", help="Text column of .jsonl/.parquet files and hf: datasets."),
    max_bytes: int = typer.Option(400_000, help="UTF-8 bytes per text: whole documents in a seeded order (0: all)."),
    max_docs: int = typer.Option(0, help="At most this many documents per text (0: no limit)."),
    out: Optional[Path] = typer.Option(None, help="Output folder: also merge the rows into OUT/heldout.parquet and "
                                       ".csv (e.g. --out study/results); a path ending in .parquet or .csv names the "
                                       "table file. Each run's own results/heldout.parquet is always written."),
    device: str = typer.Option("cpu", help="cpu | cuda."),
) -> None:
    """Perplexity and bits per byte on held-out text, with a bootstrap interval over documents."""
    from rankscope.downstream.commands import cmd_ppl

    cmd_ppl(run_dirs, texts, steps=steps, split=split, column=column, max_bytes=max_bytes, max_docs=max_docs,
            out=out, device=device)


@app.command()
@with_run_options()
def finetune(
    run_dirs: list[Path] = typer.Argument(..., help="Run folders (rankscope's or external checkpoint folders)."),
    steps: str = typer.Option("final", help="final | all | comma-separated checkpoint steps."),
    settings: Optional[str] = typer.Option(None, help="JSON FinetuneSettings overrides, e.g. "
                                           "'{\"steps\": 10, \"lr\": 3e-4, \"mode\": \"lora\"}'."),
    out: Optional[Path] = typer.Option(None, help="Output folder: also merge the rows into OUT/finetune.parquet and "
                                       ".csv (e.g. --out study/results); a path ending in .parquet or .csv names the "
                                       "table file. Each run's own results/finetune.parquet is always written."),
    device: str = typer.Option("cpu", help="cpu | cuda."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Recompute cached checkpoints."),
) -> None:
    """Fine-tuning probe: identical brief fine-tuning per checkpoint; accuracy, gain and forgetting."""
    from rankscope.downstream.commands import cmd_finetune

    cmd_finetune(run_dirs, steps=steps, settings=_json_option(settings, "--settings"), out=out, device=device,
                 use_cache=not no_cache)


@app.command()
def predict(
    table_dir: Path = typer.Argument(..., help="Folder with diagnostics + downstream tables and runs.csv (a study's results/)."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default: TABLE_DIR)."),
    features: Optional[list[str]] = typer.Option(None, "--feature", help="Metric ids to add to log-PPL (default: headline set)."),
    bootstrap_iters: int = typer.Option(1000, help="Case-bootstrap resamples for the CIs."),
    target: str = typer.Option("avg_acc", help="avg_acc | shift_nll[:TEXT] | ft_acc | forgetting."),
) -> None:
    """Predict downstream accuracy from perplexity alone vs perplexity + geometric/spectral metrics."""
    from rankscope.downstream.commands import cmd_predict

    path = cmd_predict(table_dir, out=out, features=features, bootstrap_iters=bootstrap_iters, target=target)
    typer.echo(f"wrote {path}")


@app.command()
def study(
    preset: Optional[str] = typer.Option(None, help="smoke | demo | paper-60m | paper-130m | paper-350m | guides-demo | guides-60m, or over several sizes: multiscale (smoke + tiny, "
                                "CPU) | paper (60m + 130m + 350m) (default: demo)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Study YAML (instead of a preset)."),
    out: Path = typer.Option(Path("study_out"), "--out", "-o", help="Study folder (re-running resumes it)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the jobs and their commands, run nothing."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress display."),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="GPU class of the --dry-run cost estimate: h100 | h200 | "
                                      "b200 | a100 | l40s | a10g (default h100)."),
    gpu_check_json: Optional[Path] = typer.Option(None, "--gpu-check-json", help="gpu_check.json from `make "
                                                  "gpu-check`: its measured MFU replaces the assumed one."),
    stop_signal: Optional[str] = typer.Option(None, "--stop-signal", help="Also stop on this signal (e.g. USR1), "
                                              "as on SIGTERM: training jobs checkpoint, exit 143."),
    runs_flag: bool = typer.Option(False, "--runs", help="Analysis-only study of existing runs, given as the "
                                   "arguments: rankscope run folders or external checkpoint folders; nothing is trained."),
    run_paths: Optional[list[Path]] = typer.Argument(None, help="With --runs: the runs to study.", show_default=False),
    val_text: Optional[str] = typer.Option(None, "--val-text", help="With --runs: the validation text parity and the "
                                           "predictor use (a .txt/.jsonl/.parquet file, hf:NAME[:CONFIG], embedded:SPLIT; "
                                           "default val: each run's own validation data)."),
) -> None:
    """The whole study: train every method and seed, analyze, evaluate, predict, and write report.html.

    With --runs: an analysis-only study of existing runs (no training; docs/external_runs.md).
    """
    from rankscope.study.commands import cmd_study

    if run_paths and not runs_flag:
        raise UserError(f"unexpected argument(s) {[str(p) for p in run_paths]}: to study existing runs, write "
                        f"rankscope study --runs RUN [RUN ...] --out DIR")
    if runs_flag and not run_paths:
        raise UserError("--runs needs the runs to study: rankscope study --runs RUN [RUN ...] --out DIR")
    code = cmd_study(preset=preset, config=config, out=out, dry_run=dry_run, quiet=quiet, gpu=gpu,
                     gpu_check_json=gpu_check_json, stop_signal=stop_signal, runs=run_paths,
                     val_text=val_text)
    if code:
        raise typer.Exit(code)


@app.command()
def report(
    study_dirs: list[Path] = typer.Argument(..., help="A study folder (runs/ and results/); several single-size "
                                            "study folders are combined into one multi-size report."),
    out: Optional[Path] = typer.Option(None, help="Output HTML path (default: STUDY_DIR/report.html). With several "
                                       "study folders: the folder of the combined study (required)."),
) -> None:
    """Render the self-contained HTML report of a study folder (no network needed to open it).

    With several single-size study folders (same methods, seeds and data; one per model size) it writes a combined
    multi-size study folder at --out (study.json, stacked results/ tables, a pooled predictor) and its report."""
    from rankscope.report.load import study_folder_problem
    from rankscope.report.render import render_report

    if len(study_dirs) > 1:
        from rankscope.report.combine import combine_studies, out_problem, read_size_studies

        read_size_studies(study_dirs)  # refuse before writing anything
        problem = out_problem(out, study_dirs)
        if problem:
            raise UserError(problem)
        typer.echo(f"report: {render_report(combine_studies(study_dirs, out))}")
        return
    study_dir = study_dirs[0]
    problem = study_folder_problem(study_dir)  # refuse before writing anything
    if problem is None and out is not None and out.is_dir():
        problem = f"--out {out} is a folder; give the HTML file to write, e.g. --out {out / 'report.html'}"
    if problem:
        raise UserError(problem)
    typer.echo(f"report: {render_report(study_dir, out)}")


@app.command()
def branch(
    parent: Path = typer.Argument(..., help="A WSD run folder (train.schedule=wsd) with a stable-phase checkpoint."),
    step: int = typer.Option(..., "--step", help="Decay start: the branch continues the parent to STEP, then decays."),
    cooldown: int = typer.Option(..., "--cooldown", help="Updates of the decay (the branch ends at STEP + COOLDOWN)."),
    name: str = typer.Option("", "--name", help="Branch folder name (default: <parent>_b<STEP>)."),
    out_dir: str = typer.Option("", "--out-dir", help="Parent folder of the branch (default: beside the parent)."),
    decay_shape: str = typer.Option("", "--decay-shape", help="linear | cosine | 1-sqrt (default: the parent's)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Train a cooldown branch: an ordinary run folder from a WSD parent's checkpoint (docs/study.md, Parity)."""
    from rankscope.training.branch import create_branch
    from rankscope.training.loop import train as run_training

    cfg = create_branch(parent, step, cooldown, name=name, out_dir=out_dir, decay_shape=decay_shape)
    result = run_training(cfg, resume=True, progress=not quiet)
    exit_if_stopped(result, "re-run the same `rankscope branch` command")
    ppl = f"{result.val_ppl:.2f}" if result.val_ppl is not None else "n/a"
    typer.echo(f"branch {result.run_dir}: step {result.step}, validation perplexity {ppl}")
