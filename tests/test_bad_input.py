"""Bad data files and bad ``--set`` values: one clear error naming the file/line or key/value/type (issue 12 §8).

In-process tests pin the messages; console-script tests check the real exit path: exit 2, one short stderr
paragraph, no traceback, and no run folder left behind.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers_fs import assert_clean_failure, run_cli, snapshot

from rankscope.config import DataConfig, RunConfig, TrainConfig
from rankscope.data.batches import load_sequences
from rankscope.data.sources import check_sources, iter_texts
from rankscope.data.tokenizer import load_tokenizer
from rankscope.errors import UserError
from rankscope.method_options import coerce_method_options


def _write_bad_files(root: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, a phrase its error must contain)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    files = {}

    def put(name: str, data: bytes, phrase: str) -> None:
        (root / name).write_bytes(data)
        files[name] = (root / name, phrase)

    put("latin1.txt", "first doc\n\nsecond caf\u00e9\n".encode("latin-1"), ":3: not UTF-8 text (byte 0xe9")
    put("garbage.parquet", bytes(range(256)) * 4, "is not a readable Parquet file")
    put("lists.jsonl", b'["a", "b"]\n[1]\n', ":1: expected a JSON object, got a JSON list")
    put("array.json", b'[\n  {"text": "a"}\n]\n', ":1: not valid JSON")
    put("null_text.jsonl", b'{"text": "fine"}\n{"text": null}\n', ":2: the text column 'text' holds a JSON null")
    put("empty.txt", b"", "is empty")
    put("blank.txt", b"\n   \n\t\n", "holds no text")
    put("binary.txt", b"ab\x00\x00cd\n", "holds NUL bytes")
    put("data.csv", b"text\nhello\n", "unsupported suffix '.csv'")
    pq.write_table(pa.table({"text": [1, 2, 3]}), root / "ints.parquet")
    files["ints.parquet"] = (root / "ints.parquet", "has type int64, not string")
    return files


BAD = ["latin1.txt", "garbage.parquet", "lists.jsonl", "array.json", "null_text.jsonl", "empty.txt", "blank.txt",
       "binary.txt", "data.csv", "ints.parquet"]


@pytest.mark.parametrize("name", BAD)
def test_bad_file_is_one_user_error_naming_it(tmp_path, name):
    path, phrase = _write_bad_files(tmp_path)[name]
    data = DataConfig(source="files", train_files=(str(path),), val_files=(str(path),))
    with pytest.raises(UserError) as err:
        list(iter_texts(data, "train"))
    assert str(path) in str(err.value) and phrase in str(err.value)
    if name not in ("latin1.txt", "null_text.jsonl"):  # their problem comes after a good first document
        with pytest.raises(UserError, match=re.escape(str(path))):
            check_sources(data)


def test_check_reads_only_the_start_and_the_full_read_names_the_line(tmp_path):
    good = "\n\n".join(f"Paragraph {i} about rivers and the sea." for i in range(50)).encode()
    path = tmp_path / "late.txt"
    path.write_bytes(good + b"\n\nbad \xff byte\n")
    data = DataConfig(source="files", train_files=(str(path),), val_files=(str(path),), seq_len=16)
    check_sources(data)  # the first document is fine: the up-front check stays cheap
    bad_line = good.count(b"\n") + 3
    with pytest.raises(UserError, match=re.escape(f"{path}:{bad_line}: not UTF-8")):
        load_sequences(data, "train", load_tokenizer())


def test_check_sources_wants_val_files_and_known_splits(tmp_path):
    (tmp_path / "a.txt").write_text("hello world")
    with pytest.raises(UserError, match="--val-files"):
        check_sources(DataConfig(source="files", train_files=(str(tmp_path / "a.txt"),)))
    with pytest.raises(UserError, match="no split 'dev'.*train, validation, test"):
        check_sources(DataConfig(val_split="dev"))
    check_sources(DataConfig())


def test_good_files_still_read(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "one"}) + "\n\n" + json.dumps({"text": "two"}) + "\n")
    (tmp_path / "b.txt").write_bytes("\ufeffcaf\u00e9 one\nline two\r\n\r\nsecond\n".encode())
    data = DataConfig(source="files", train_files=(str(tmp_path / "a.jsonl"), str(tmp_path / "b.txt")),
                      val_files=(str(tmp_path / "b.txt"),))
    check_sources(data)
    assert list(iter_texts(data, "train")) == ["one", "two", "caf\u00e9 one\nline two", "second"]


# --- method options ---------------------------------------------------------------------------------------


def _run(method: str = "relora", **kw) -> RunConfig:
    return RunConfig(model="smoke", method=method, **kw)


def test_set_values_are_converted_to_the_field_type():
    cfg = _run(method_options={"rank": "4", "lr": "1e-3", "grad_clip": "none", "zero_init_A": "true",
                               "reset": "zero", "alpha": "3"})
    assert cfg.method_options == {"rank": 4, "lr": 0.001, "grad_clip": None, "zero_init_A": True,
                                  "reset": "zero", "alpha": 3}
    assert type(cfg.method_options["alpha"]) is int  # as YAML parsed "--set alpha=3" before: same config hash
    m = cfg.method_config()
    assert (m.rank, m.lr, m.grad_clip, m.zero_init_A, m.alpha) == (4, 0.001, None, True, 3.0)
    # Typed values (JSON/YAML) are checked, not rewritten: an old config.json keeps its fingerprint.
    assert _run(method_options={"rank": 4, "alpha": 3}).method_options == {"rank": 4, "alpha": 3}
    # "--set rank=4" and a config file's rank: 4 are the same run.
    assert _run(method_options={"rank": "4"}).fingerprint() == _run(method_options={"rank": 4}).fingerprint()


@pytest.mark.parametrize("key, value, expected", [
    ("lr", "abc", "must be a number"),
    ("rank", "abc", "must be an integer"),
    ("rank", "2.5", "must be an integer"),
    ("rank", 2.5, "must be an integer"),
    ("rank", True, "must be an integer"),
    ("lr", "nan", "must be a number"),
    ("zero_init_A", "maybe", "must be true or false"),
    ("grad_clip", "off", "must be a number or none"),
    ("reset", 3, "must be a string"),
])
def test_bad_option_value_names_key_value_and_type(key, value, expected):
    with pytest.raises(UserError) as err:
        _run(method_options={key: value})
    msg = str(err.value)
    assert f"{key}={value!r}" in msg and expected in msg and "'relora'" in msg


def test_unknown_option_is_still_reported_with_the_valid_ones():
    with pytest.raises(UserError, match=r"unknown option\(s\) \['rnak'\].*valid options: .*rank"):
        _run(method_options={"rnak": "4"}).method_config()


def test_learning_rate_has_one_value():
    default = _run().method_config().lr
    assert _run(train=TrainConfig(lr=0.05)).method_config().lr == 0.05
    assert _run(method_options={"lr": "0.05"}).method_config().lr == 0.05
    assert _run(train=TrainConfig(lr=0.05), method_options={"lr": 0.05}).method_config().lr == 0.05
    assert _run(train=TrainConfig(lr=-1)).method_config().lr == default
    with pytest.raises(UserError, match="learning rate is set twice"):
        _run(train=TrainConfig(lr=0.05), method_options={"lr": "0.01"}).method_config()
    with pytest.raises(UserError, match="positive --lr, or -1"):
        _run(train=TrainConfig(lr=0.0)).method_config()
    with pytest.raises(UserError, match="must be a positive number"):
        _run(method_options={"lr": "-0.1"}).method_config()


def test_coercion_covers_every_registered_method_field():
    """Every field type used by a method Config is one the converter knows (str -> typed -> same value)."""
    import dataclasses

    from rankscope.methods.registry import available, get_method

    for name in available():
        cls = get_method(name).Config
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        as_text = {k: ("none" if v is None else str(v)) for k, v in defaults.items()}
        assert coerce_method_options(name, cls, as_text) == defaults, name


# --- through the console script ----------------------------------------------------------------------------


def _train(tmp_path: Path, *args: str):
    out = tmp_path / "runs"
    before = snapshot(out)
    proc = run_cli("train", "--model", "smoke", "--steps", "1", "--out-dir", str(out), "--name", "r", *args,
                   cwd=tmp_path)
    assert snapshot(out) == before == {}, "a refused train left files behind"
    return proc


@pytest.mark.parametrize("name", ["latin1.txt", "lists.jsonl", pytest.param("garbage.parquet", marks=pytest.mark.slow),
                                  pytest.param("empty.txt", marks=pytest.mark.slow)])
def test_train_on_a_bad_file_exits_2_with_one_paragraph(tmp_path, name):
    path, phrase = _write_bad_files(tmp_path / "data")[name]
    if name == "latin1.txt":  # make the bad byte the first document's, so the up-front check sees it
        path.write_bytes("caf\u00e9\n".encode("latin-1"))
        phrase = ":1: not UTF-8"
    proc = _train(tmp_path, "--source", "files", "--train-files", str(path), "--val-files", str(path))
    assert_clean_failure(proc, 2)
    assert str(path) in proc.stderr and phrase in proc.stderr


@pytest.mark.parametrize("args, expected", [
    (["--method", "relora", "--set", "lr=abc"], "option lr='abc' is not valid: lr must be a number"),
    pytest.param(["--method", "relora", "--set", "rank=abc"],
                 "option rank='abc' is not valid: rank must be an integer", marks=pytest.mark.slow),
    (["--method", "cola", "--set", "rank=2.5"], "option rank='2.5' is not valid: rank must be an integer"),
    pytest.param(["--lr", "0.01", "--set", "lr=0.02"], "the learning rate is set twice", marks=pytest.mark.slow),
])
def test_train_with_a_bad_set_value_exits_2(tmp_path, args, expected):
    proc = _train(tmp_path, *args)
    assert_clean_failure(proc, 2)
    assert expected in proc.stderr


def test_streamed_hub_records_without_text_are_one_error(monkeypatch):
    datasets = pytest.importorskip("datasets")
    records = [{"text": "fine"}, {"body": "no text here"}]
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **kw: iter(records))
    data = DataConfig(source="hf", dataset="me/corpus", streaming=False)
    with pytest.raises(UserError, match=r"record 1 has no text column 'text'; its fields are \['body'\]"):
        list(iter_texts(data, "validation"))
    records[1] = {"text": None}
    with pytest.raises(UserError, match="record 1 has a non-string text column"):
        list(iter_texts(data, "validation"))
