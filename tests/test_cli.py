"""CLI: generated flags are frozen (no option appears or vanishes silently), bad input gives clean errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rankscope.cli_options import config_parameters

# Snapshot of the generated `rankscope train` config flags. A change here must be deliberate.
EXPECTED_FLAGS = {
    "name", "out_dir", "model", "vocab_size", "method", "guide",
    "data__source", "data__dataset", "data__dataset_config", "data__text_column", "data__train_split",
    "data__val_split", "data__train_files", "data__val_files", "data__streaming", "data__tokenizer",
    "data__seq_len", "data__packing", "data__shuffle_buffer", "data__holdout_source",
    "train__steps", "train__warmup_steps", "train__min_lr_ratio", "train__schedule", "train__decay_steps",
    "train__decay_shape", "train__micro_batch_size", "train__grad_accum",
    "train__lr", "train__seed", "train__init_seed", "train__data_seed", "train__eval_every", "train__eval_tokens", "train__save_every",
    "train__save_steps", "train__log_every", "train__precision", "train__device", "train__dist", "train__compile",
    "train__faithful_release", "train__eval_loss", "train__max_bad_steps", "train__retain_cpu_memory",
}


def test_flag_snapshot():
    assert {p.name for p in config_parameters()} == EXPECTED_FLAGS


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "rankscope", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--method", "nope"], "unknown method 'nope'; choose one of"),
        (["train", "--model", "huge"], "unknown model preset 'huge'"),
        (["train", "--config", "/no/such/file.yaml"], "config file /no/such/file.yaml does not exist"),
        (["train", "--set", "rank=3"], "unknown option(s) ['rank']"),
        (["train", "--packing", "zip"], "data.packing='zip' is not valid"),
        (["train", "--source", "files", "--train-files", "/no/such.txt", "--model", "smoke"], "does not exist"),
        (["analyze", "/no/such/run"], "is not a rankscope run folder"),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path, args, message):
    proc = _cli(*args, "--out-dir" if args[0] == "train" else "--out", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_config_field_names_file(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("train:\n  stepz: 3\n")
    proc = _cli("train", "--config", str(cfg), "--out-dir", str(tmp_path))
    assert proc.returncode == 2 and "stepz" in proc.stderr and str(cfg) in proc.stderr


def test_dataset_without_text_column(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"body": "hello world"}\n')
    proc = _cli("train", "--model", "smoke", "--source", "files", "--train-files", str(data), "--val-files", str(data),
                "--out-dir", str(tmp_path), "--steps", "1")
    assert proc.returncode == 2 and "no text column 'text'" in proc.stderr and "--text-column" in proc.stderr


def test_hub_dataset_offline(tmp_path):
    proc = _cli("train", "--model", "smoke", "--source", "hf", "--dataset", "allenai/c4", "--dataset-config", "en",
                "--out-dir", str(tmp_path), "--steps", "1")
    assert proc.returncode == 2, proc.stderr
    assert "embedded corpus" in proc.stderr and "Traceback" not in proc.stderr


def test_help_lists_every_subcommand():
    proc = _cli("--help")
    for cmd in ("train", "analyze", "eval", "ppl", "finetune", "predict", "study", "report", "methods", "export-hf"):
        assert cmd in proc.stdout


def test_eval_max_items_default_is_the_api_default():
    import inspect

    from rankscope import cli_commands
    from rankscope.downstream.commands import cmd_eval
    from rankscope.downstream.evaluate import DEFAULT_MAX_ITEMS

    cli_default = inspect.signature(cli_commands.evaluate).parameters["max_items"].default.default
    assert cli_default == inspect.signature(cmd_eval).parameters["max_items"].default == DEFAULT_MAX_ITEMS


def test_command_modules_import_in_one_direction():
    """cli imports cli_commands (to register its commands); cli_commands never imports cli (no cycle)."""
    import ast
    from pathlib import Path

    import rankscope

    def imported(module: str) -> set[str]:
        tree = ast.parse((Path(rankscope.__file__).parent / f"{module}.py").read_text())
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
        return names

    assert "rankscope.cli" not in imported("cli_commands")
    assert "rankscope.cli_app" in imported("cli_commands") and "rankscope.cli_app" in imported("cli")
    assert "rankscope.cli_commands" in imported("cli")


def test_module_entry_point_runs_registered_commands(tmp_path):
    """`python -m rankscope.cli analyze` reaches analyze: the commands register on the app that runs."""
    proc = subprocess.run([sys.executable, "-m", "rankscope.cli", "analyze", str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "is not a rankscope run folder" in proc.stderr, proc.stderr
