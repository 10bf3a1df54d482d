"""``rankscope eval --task-file`` / ``--lm-eval-task``: the user's own domain, through the console script."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import smoke_config
from helpers_fs import assert_clean_failure, assert_unchanged, cli_env, run_cli, snapshot

# A yes/no task whose items all share one answer set (so it has a majority class) and one whose choices vary.
YES_NO = [{"context": f"Question {i}: is the sky blue?", "choices": ["no", "yes"], "answer": ("yes" if i % 4 else 0)}
          for i in range(12)]
VARYING = [{"context": "The cat sat on the", "choices": ["mat", "sky", "idea"], "answer": 0},
           {"context": "Water is", "choices": ["wet", "dry"], "answer": "wet"}]


def _write(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(it) + "\n" for it in items), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from rankscope.training.loop import train

    cfg = smoke_config(tmp_path_factory.mktemp("user_tasks"), "own", steps=2)
    train(cfg, progress=False)
    return Path(cfg.run_dir)


def _native_acc(run: Path, items: list[dict]) -> float:
    """The same items scored in process with the shipped scorer (choices after a space)."""
    from rankscope.data.tokenizer import load_tokenizer
    from rankscope.downstream.scoring import score_choices
    from rankscope.training.checkpoint import load_model, read_run_config

    model, _ = load_model(run)
    labelled = [{"context": it["context"], "choices": it["choices"],
                 "label": it["answer"] if isinstance(it["answer"], int) else it["choices"].index(it["answer"])}
                for it in items]
    return float(score_choices(model.eval(), load_tokenizer(read_run_config(run).data.tokenizer), labelled, " ").acc.mean())


def test_task_file_is_scored_with_its_floors_and_own_average(run_dir, tmp_path):
    from rankscope.diagnostics.table import read_table

    yes_no = _write(tmp_path / "yesno.jsonl", YES_NO)
    varying = _write(tmp_path / "mixed.jsonl", VARYING)
    proc = run_cli("eval", run_dir, "--task-file", yes_no, "--task-file", varying, "--max-items", "0",
                   "--out", tmp_path / "combined")
    assert proc.returncode == 0, proc.stderr
    table = read_table(run_dir / "results" / "downstream.parquet")
    assert set(table["name"]) == {"yesno", "mixed", "average"}  # no shipped task unless named with --task
    acc = table[(table["metric"] == "acc")].set_index("name")
    assert acc.loc["yesno", "value"] == pytest.approx(_native_acc(run_dir, YES_NO))
    settings = json.loads(acc.loc["yesno", "settings"])
    assert settings["chance"] == 0.5 and settings["majority"] == pytest.approx(9 / 12)  # 9 "yes" of 12
    mixed = json.loads(acc.loc["mixed", "settings"])
    assert mixed["chance"] == pytest.approx((1 / 3 + 1 / 2) / 2) and mixed["majority"] is None
    notes = set(table["note"])
    assert any(n.startswith("task file ") and n.endswith("yesno.jsonl") for n in notes) and len(notes) == 2
    avg = table[table["metric"] == "avg_acc"].set_index("note")["value"]
    assert len(avg) == 2  # one average per task set, never across the two files
    assert "chance 0.500 majority 0.750" in proc.stdout
    assert "avg_acc" in proc.stdout and "unweighted mean of acc over 1 task(s): yesno" in proc.stdout


BAD = [
    ("not_json.jsonl", '{"context": "a", "choices": ["x", "y"], "answer": 0}\n{oops\n', "line 2", "not valid JSON"),
    ("missing.jsonl", '{"context": "a", "choices": ["x", "y"]}\n', "line 1", "answer"),
    ("range.jsonl", '{"context": "a", "choices": ["x", "y"], "answer": 2}\n', "line 1", "'answer' = 2 is outside"),
    ("text.jsonl", '{"context": "a", "choices": ["x", "y"], "answer": "z"}\n', "line 1", "not one of the choices"),
    ("choices.jsonl", '\n{"context": "a", "choices": "x", "answer": 0}\n', "line 2", "'choices'"),
    ("list.jsonl", '[1, 2]\n', "line 1", "not an object"),
    ("empty.jsonl", "\n\n", "no items", "context"),
]


@pytest.mark.parametrize(("name", "text", "where", "what"), BAD, ids=[b[0] for b in BAD])
def test_bad_task_file_names_file_line_and_field(tmp_path, name, text, where, what):
    from rankscope.downstream.user_tasks import load_task_file
    from rankscope.errors import UserError

    bad = tmp_path / name
    bad.write_text(text, encoding="utf-8")
    with pytest.raises(UserError) as err:
        load_task_file(bad)
    assert str(bad) in str(err.value) and where in str(err.value) and what in str(err.value), err.value


def test_missing_files_and_a_yaml_without_task_name_are_user_errors(tmp_path):
    from rankscope.downstream.user_tasks import check_task_sources
    from rankscope.errors import UserError

    with pytest.raises(UserError, match="nope.jsonl does not exist"):
        check_task_sources([tmp_path / "nope.jsonl"], [])
    with pytest.raises(UserError, match="nope.yaml: the YAML file does not exist"):
        check_task_sources([], [str(tmp_path / "nope.yaml")])
    (tmp_path / "notask.yaml").write_text("dataset_path: json\n")
    with pytest.raises(UserError, match="no 'task:' name"):
        check_task_sources([], [str(tmp_path / "notask.yaml")])
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    with pytest.raises(UserError, match="two --task-file files are named 'same'"):
        check_task_sources([_write(a / "same.jsonl", VARYING), _write(b / "same.jsonl", VARYING)], [])


def test_bad_task_file_through_the_console_script_exits_2_and_changes_nothing(run_dir, tmp_path):
    name, text, where, what = BAD[0]
    bad = tmp_path / name
    bad.write_text(text, encoding="utf-8")
    before = snapshot(run_dir)
    proc = run_cli("eval", run_dir, "--task-file", bad)
    assert_clean_failure(proc, 2)
    assert str(bad) in proc.stderr and where in proc.stderr and what in proc.stderr, proc.stderr
    assert_unchanged(before, run_dir)


def test_lm_eval_missing_is_a_user_error(run_dir, tmp_path):
    """lm_eval is an extra: without it, --lm-eval-task says how to install it (shadowed import here)."""
    shim = tmp_path / "shim" / "lm_eval"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('lm_eval hidden by the test')\n")
    yaml_file = tmp_path / "task.yaml"
    yaml_file.write_text("task: mine\n")
    env = cli_env()
    env["PYTHONPATH"] = f"{shim.parent}:{env.get('PYTHONPATH', '')}"
    before = snapshot(run_dir)
    proc = run_cli("eval", run_dir, "--lm-eval-task", yaml_file, env=env)
    assert_clean_failure(proc, 2)
    assert "lm-eval is not installed" in proc.stderr and "pip install" in proc.stderr
    assert_unchanged(before, run_dir)


def test_lm_eval_yaml_task_on_local_data_equals_the_task_file(run_dir, tmp_path):
    pytest.importorskip("lm_eval")
    from rankscope.diagnostics.table import read_table

    data = tmp_path / "yesno_data.jsonl"
    data.write_text("".join(json.dumps({"context": it["context"], "choices": it["choices"],
                                        "label": it["choices"].index(it["answer"]) if isinstance(it["answer"], str)
                                        else it["answer"]}) + "\n" for it in YES_NO), encoding="utf-8")
    yaml_file = tmp_path / "yesno.yaml"
    yaml_file.write_text(
        "task: my_yesno\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {json.dumps(str(data))}\ntest_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: context\ndoc_to_choice: choices\ndoc_to_target: label\ntarget_delimiter: ' '\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    proc = run_cli("eval", run_dir, "--lm-eval-task", yaml_file, "--max-items", "0")
    assert proc.returncode == 0, proc.stderr
    table = read_table(run_dir / "results" / "downstream.parquet")
    row = table[(table["metric"] == "acc") & (table["name"] == "my_yesno")].iloc[0]
    assert row["value"] == pytest.approx(_native_acc(run_dir, YES_NO))
    assert row["note"] == f"lm-eval task {yaml_file}"
    assert json.loads(row["settings"])["majority"] == pytest.approx(9 / 12)
