"""The one ``typer.Typer`` application every ``rankscope`` subcommand registers on.

It lives in its own module so the command modules depend on it and not on each other: ``cli`` (train,
methods, export-hf and the console-script entry point) imports ``cli_commands`` (analyze, eval, ppl, ...),
and both import this module; ``cli_commands`` never imports ``cli``.
"""

from __future__ import annotations

import os

import typer

app = typer.Typer(
    help="Train, diagnose, evaluate and compare low-rank pre-training methods for LLaMA models.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
)


def exit_if_stopped(result, how_to_continue: str) -> None:
    """A run stopped by SIGTERM or --stop-signal: one line on stderr (rank 0) and exit 143 (README)."""
    if not result.stopped_by:
        return
    if int(os.environ.get("RANK", "0")) == 0:
        from rankscope.training.checkpoint import step_dir

        typer.echo(f"stopped by {result.stopped_by} after update {result.step}: checkpoint "
                   f"{step_dir(result.run_dir, result.step)} written; {how_to_continue} to continue", err=True)
    raise typer.Exit(143)
