"""``--tokenizer``, ``--label`` and ``--allow-pickle`` for every command that reads runs.

:func:`with_run_options` adds the three options to a typer command and hands the command its runs already
opened (``rankscope.runs.open_runs``), so every run, rankscope's or external, is checked before the command
writes anything, and no command needs to know which kind it got.
"""

from __future__ import annotations

import functools
import inspect
from typing import Optional

import typer

RUN_OPTIONS = {
    "tokenizer": (Optional[str], typer.Option(
        None, "--tokenizer", help="External runs: tokenizer.json (or a folder holding one) when the checkpoint "
        "folders have none.")),
    "label": (Optional[list[str]], typer.Option(
        None, "--label", help="External runs: labels RUN:KEY=VALUE[,KEY=VALUE] (keys name, method, seed, scale), "
        "e.g. --label ckpts/galore:method=galore,seed=1; or a rankscope_run.json beside the checkpoints.")),
    "allow_pickle": (bool, typer.Option(
        False, "--allow-pickle", help="External runs: also load pickle weights (pytorch_model.bin); unpickling "
        "runs code from the file, so only for checkpoints you trust.")),
}


def run_options(tokenizer: str | None = None, label: list[str] | None = None, allow_pickle: bool = False):
    from rankscope.runs import ExternalOptions, parse_labels

    return ExternalOptions(tokenizer=tokenizer, labels=parse_labels(label), allow_pickle=allow_pickle)


def with_run_options(arg: str = "run_dirs"):
    """Decorator: add the run options; the command's ``arg`` (a list of paths) arrives as opened runs."""

    def wrap(fn):
        sig = inspect.signature(fn)
        extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=ann)
                 for name, (ann, default) in RUN_OPTIONS.items()]

        @functools.wraps(fn)
        def command(*args, tokenizer=None, label=None, allow_pickle=False, **kwargs):
            from rankscope.runs import open_runs

            bound = sig.bind_partial(*args, **kwargs)
            value = bound.arguments[arg]
            opts = run_options(tokenizer, label, allow_pickle)
            bound.arguments[arg] = open_runs(value, opts) if isinstance(value, list) else open_runs([value], opts)[0]
            return fn(*bound.args, **bound.kwargs)

        command.__signature__ = sig.replace(parameters=[*sig.parameters.values(), *extra])
        return command

    return wrap
