"""``rankscope`` command line: train | analyze | eval | predict | study | report (+ methods, export-hf).

Bad input raises :class:`rankscope.errors.UserError`; ``main`` prints its message (no traceback) and exits 2.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from rankscope.cli_app import app, exit_if_stopped
from rankscope.cli_options import merge, parse_set, split_overrides, with_config_options
from rankscope.cli_runs import with_run_options
from rankscope.errors import UserError, WorkFailed


def build_run_config(config: Optional[Path], set_: Optional[list[str]], options: dict):
    from rankscope.config import RunConfig, load_config_file
    from rankscope.data.paths import imply_files_source

    base = load_config_file(config) if config else {}
    nested = merge(base, split_overrides(options))
    explicit = "--source" if options.get("data__source") is not None else f"in {config}"
    nested["data"] = imply_files_source(nested.get("data") or {}, explicit)
    from rankscope.guides.options import build_guide, split_guide_options

    method_options, guide_options = split_guide_options(parse_set(set_))
    if method_options:
        nested["method_options"] = {**(nested.get("method_options") or {}), **method_options}
    if guide_options:
        nested["guide_options"] = {**(nested.get("guide_options") or {}), **guide_options}
    cfg = RunConfig.from_dict(nested, source=str(config) if config else "command line")
    cfg.method_config()  # validate method options now, before anything is written
    build_guide(cfg)  # and the guide's (window, ranges)
    from rankscope.data.sources import check_sources

    check_sources(cfg.data)  # and the data: missing, unreadable, empty or malformed files (first documents)
    return cfg


@app.command()
@with_config_options
def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="JSON/YAML run config; flags override it."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run folder from its last checkpoint."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Method option KEY=VALUE, converted to the option's type "
                                       "(see `rankscope methods`); --set lr=X is the same as --lr X; "
                                       "guide.KEY=VALUE sets an option of --guide (see `rankscope guides`)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar or memory table."),
    allow_change: Optional[str] = typer.Option(
        None, "--allow-change", help="With --resume: settings that may differ from the run's config.json "
        "(comma list of lr, grad_clip, weight_decay); the change is recorded in meta.json."),
    stop_signal: Optional[str] = typer.Option(
        None, "--stop-signal", help="Also stop cleanly on this signal (e.g. USR1 for Slurm's --signal=USR1@90; "
        "comma list): finish the update, checkpoint, exit 143. SIGTERM always does this."),
    **options,
) -> None:
    """Pre-train one model with one method; writes runs/<name>/ (config, metrics, checkpoints)."""
    from rankscope.training.loop import train as run_training
    from rankscope.training.stop import parse_signals

    signals = parse_signals(stop_signal)
    cfg = build_run_config(config, set_, options)
    changes = tuple(x.strip() for x in (allow_change or "").split(",") if x.strip())
    result = run_training(cfg, resume=resume, progress=not quiet, allow_change=changes, stop_signals=signals)
    exit_if_stopped(result, "repeat the command with --resume")
    if int(os.environ.get("RANK", "0")) == 0:
        ppl = f"{result.val_ppl:.2f}" if result.val_ppl is not None else "n/a"
        typer.echo(f"run {result.run_dir}: step {result.step}, validation perplexity {ppl}")


@app.command()
def methods() -> None:
    """List the training methods and their options (with the study defaults for each model preset)."""
    import sys
    from dataclasses import fields

    from rankscope.methods.order import in_order
    from rankscope.methods.registry import available, get_method

    for name in in_order(available()):
        cls = get_method(name)
        doc = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip()  # class, else module docstring
        typer.echo(f"{name}: {doc.splitlines()[0] if doc else ''}")
        for f in fields(cls.Config):
            typer.echo(f"    {f.name} = {getattr(cls.Config(), f.name)!r}")
        presets = getattr(cls.Config, "PRESET_DEFAULTS", {})
        if presets:
            typer.echo("    per preset: " + "; ".join(f"{k}: {v}" for k, v in presets.items()))


@app.command()
def guides() -> None:
    """List the geometry guides (--guide NAME) and their options (--set guide.KEY=VALUE); docs/guides.md."""
    from dataclasses import fields

    from rankscope.guides.registry import available, get_guide

    for name in available():
        cls = get_guide(name)
        typer.echo(f"{name}: {cls.summary}")
        for f in fields(cls.Config):
            typer.echo(f"    {f.name} = {getattr(cls.Config(), f.name)!r}")


@app.command("export-hf")
@with_run_options("run_dir")
def export_hf(
    run_dir: Path = typer.Argument(..., help="Run folder (rankscope's or external checkpoints)."),
    out: Path = typer.Argument(..., help="Output folder for a Hugging Face LlamaForCausalLM (config + safetensors)."),
    step: Optional[int] = typer.Option(None, help="Checkpoint step (default: the last)."),
    force: bool = typer.Option(False, "--force", help="Write into OUT even if it is not empty (its files with "
                               "the export's names are replaced)."),
) -> None:
    """Export a checkpoint's dense weights as a Hugging Face LLaMA folder (ReLoRA/SLTrain merged)."""
    from rankscope.models.hf import export_run

    run_path = run_dir.path.resolve()
    if out.resolve() == run_path or run_path in out.resolve().parents:
        raise UserError(f"export-hf: {out} is inside the run folder {run_dir.path}; export to a folder outside it")
    if out.exists() and not out.is_dir():
        raise UserError(f"export-hf: {out} is a file; give a folder for the Hugging Face model")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"export-hf: {out} is not empty; choose a new or empty folder, or pass --force to "
                        f"overwrite its config.json, weights and tokenizer files")
    typer.echo(f"wrote {export_run(run_dir, out, step)}")


def _register_optional_commands() -> None:
    """The analysis/evaluation/study commands register themselves on the shared app (``cli_app``) when
    ``cli_commands`` is imported; imported here, lazily, never the other way round."""
    from rankscope import cli_commands  # noqa: F401


INTERRUPTED = "interrupted; checkpoints intact, resume with --resume"


def main(argv: list[str] | None = None) -> None:
    """The console script: exit 0 success, 1 failed work, 2 user error, 130 interrupted, 143 stopped by
    SIGTERM (README)."""
    sys.exit(run(argv))


def run(argv: list[str] | None = None) -> int:
    """Run one command and return its exit code; user and usage errors are one line on stderr, no traceback.

    In non-standalone mode typer/click return ``typer.Exit`` codes instead of exiting (and the installed
    typer turns Ctrl-C into a returned 130), so the code is taken from the return value.
    """
    _register_optional_commands()
    try:
        code = app(args=argv, standalone_mode=False)
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    except WorkFailed as exc:
        typer.echo(f"error: {exc}", err=True)
        return 1
    except KeyboardInterrupt:
        code = 130
    except SystemExit:
        raise
    except Exception as exc:
        handled = _click_error(exc)
        if handled is None:
            raise
        code = handled
    code = code if isinstance(code, int) else 0
    if code == 130:
        typer.echo(INTERRUPTED, err=True)
    return code


def _click_error(exc: Exception) -> int | None:
    """Exit code for a usage error or abort of click or of typer's bundled click (its own classes), else None.

    Matched by behaviour, not class, because typer >= 0.2x ships ``typer._click`` whose exceptions are not
    click's; both have ``format_message()`` and ``exit_code``.
    """
    module = type(exc).__module__.split(".")[0]
    if module not in ("click", "typer"):
        return None
    if type(exc).__name__ == "Abort":  # click wraps Ctrl-C (and EOF at a prompt) in Abort
        return 130 if isinstance(exc.__context__, KeyboardInterrupt) else 1
    if not (hasattr(exc, "format_message") and hasattr(exc, "exit_code")):
        return None
    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:  # bare `rankscope`: the help
        text = ctx.get_help()  # typer's rich help prints itself (to stdout) and returns ""
        if text:
            typer.echo(text, err=True)
        return int(exc.exit_code)
    where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    message = " ".join(str(exc.format_message()).split())
    typer.echo(f"error: {message}{where}", err=True)
    return int(exc.exit_code)


if __name__ == "__main__":
    main()
