"""The one ``typer.Typer`` application every ``rankscope`` subcommand registers on.

It lives in its own module so the command modules depend on it and not on each other: ``cli`` (train,
methods, export-hf and the console-script entry point) imports ``cli_commands`` (analyze, eval, ppl, ...),
and both import this module; ``cli_commands`` never imports ``cli``.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Train, diagnose, evaluate and compare low-rank pre-training methods for LLaMA models.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
)
