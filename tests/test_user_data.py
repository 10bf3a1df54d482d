"""Training on one's own files (issue 25 items 1-2): files imply --source files, run folders work from anywhere."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from helpers_fs import assert_clean_failure, run_cli, snapshot

from rankscope.errors import UserError

WORDS = ("the river ran past a quiet town where bakers and weavers traded bread cloth and news every morning "
         "while children counted boats and the old clock kept its own slow time").split()


def write_corpus(folder: Path, n_docs: int = 40, seed: int = 0) -> tuple[Path, Path]:
    """data/train.txt and data/val.txt under ``folder``: blank-line separated documents of plain words."""
    import random

    rng = random.Random(seed)
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.txt", n_docs), ("val.txt", n_docs // 4)):
        docs = [" ".join(rng.choice(WORDS) for _ in range(60)) for _ in range(n)]
        (data / name).write_text("\n\n".join(docs) + "\n")
    return data / "train.txt", data / "val.txt"


TINY = ("--model", "smoke", "--steps", "2", "--seq-len", "32", "--micro-batch-size", "2", "--eval-tokens", "64",
        "--eval-every", "0", "--quiet")


@pytest.fixture(scope="module")
def own_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One run trained from its project folder on relative file paths, without --source (shared, read-only)."""
    proj = tmp_path_factory.mktemp("own") / "proj"
    write_corpus(proj)
    proc = run_cli("train", *TINY, "--train-files", "data/train.txt", "--val-files", "data/val.txt",
                   "--out-dir", "runs", "--name", "own", cwd=proj)
    assert proc.returncode == 0, proc.stderr
    return proj / "runs" / "own", proc


def test_files_without_source_train_on_the_files(own_run):
    run, proc = own_run
    assert "warning" not in proc.stderr.lower()  # within one epoch, a budget the data holds: nothing to say
    data = json.loads((run / "config.json").read_text())["data"]
    assert data["source"] == "files"
    assert json.loads((run / "meta.json").read_text())["data_label"] == "data/train.txt"  # as typed, not embedded


@pytest.mark.parametrize("source", ["embedded", "hf"])
def test_files_with_another_explicit_source_is_a_user_error(tmp_path, source):
    write_corpus(tmp_path)
    out = tmp_path / "runs"
    proc = run_cli("train", *TINY, "--source", source, "--dataset", "me/corpus", "--train-files", "data/train.txt",
                   "--out-dir", str(out), cwd=tmp_path)
    assert_clean_failure(proc, 2)
    assert f"data.source='{source}' was given (--source)" in proc.stderr and "--train-files" in proc.stderr
    assert snapshot(out) == {}


def test_files_in_a_config_file_with_another_source_name_the_file(tmp_path):
    write_corpus(tmp_path)
    cfg = tmp_path / "run.yaml"
    cfg.write_text("data:\n  source: embedded\n  val_files: [data/val.txt]\n")
    proc = run_cli("train", *TINY, "--config", cfg, "--out-dir", tmp_path / "runs", cwd=tmp_path)
    assert_clean_failure(proc, 2)
    assert f"in {cfg}" in proc.stderr and "--val-files" in proc.stderr


def test_study_files_override_the_base_presets_source(tmp_path):
    from rankscope.study import load_study_config

    own = tmp_path / "own.yaml"
    own.write_text("base: smoke\ndata: {train_files: [a.txt], val_files: [b.txt]}\n")
    data = load_study_config(own).data
    assert data.source == "files" and data.holdout_source == ""  # the preset's left-out source is embedded-only
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: smoke\ndata: {source: embedded, train_files: [a.txt]}\n")
    with pytest.raises(UserError, match=r"bad\.yaml"):
        load_study_config(bad)


@pytest.mark.parametrize("spelling", ["off", "'off'", "no", "false"])
def test_yaml_off_turns_parity_off(tmp_path, spelling):
    """YAML 1.1 reads an unquoted `off` as the boolean False; the documented `protocol: off` still means off."""
    from rankscope.study import load_study_config

    path = tmp_path / "s.yaml"
    path.write_text(f"base: smoke\nparity: {{protocol: {spelling}}}\n")
    cfg = load_study_config(path)
    assert cfg.parity.protocol == "off" and not cfg.parity.enabled and cfg.decay_steps == 0


def test_yaml_on_is_an_error_that_explains_the_boolean(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("base: smoke\nparity: {protocol: on}\n")
    proc = run_cli("study", "--config", path, "--out", tmp_path / "out", "--dry-run")
    assert_clean_failure(proc, 2)
    assert "parity.protocol is the boolean true" in proc.stderr and "wsd-branches" in proc.stderr
    assert not (tmp_path / "out").exists()


TWO_METHODS = """base: smoke
methods: [full_rank, galore]
parity: {protocol: off}
ood: {texts: [], finetune: null}
data: {holdout_source: ""}
analysis: {metrics: [w_erank], n_tokens: 128}
downstream: {max_items: 5, bootstrap_iters: 10}
"""


def test_two_method_dry_run_says_predict_is_skipped(tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text(TWO_METHODS)
    proc = run_cli("study", "--config", path, "--out", tmp_path / "out", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    predict = proc.stdout.split("[predict]")[1].splitlines()[1]
    assert "skipped, not applicable: 2 model(s), the predictor needs at least 4" in predict


@pytest.mark.slow
def test_two_method_study_skips_predict_and_exits_0(tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text(TWO_METHODS)
    out = tmp_path / "out"
    proc = run_cli("study", "--config", path, "--out", out, "--quiet")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = {j["id"]: j for j in json.loads((out / "status.json").read_text())["jobs"]}
    assert jobs["predict"]["state"] == "skipped" and "needs at least 4" in jobs["predict"]["error"]
    assert jobs["analyze"]["state"] == jobs["eval"]["state"] == jobs["report"]["state"] == "done"
    assert not list((out / "results").glob("prediction*"))
    assert "needs at least 4" in (out / "report.html").read_text()


def _train_own(proj: Path, *extra: str) -> Path:
    write_corpus(proj)
    proc = run_cli("train", *TINY, "--train-files", "data/train.txt", "--val-files", "data/val.txt",
                   "--out-dir", "runs", "--name", "own", *extra, cwd=proj)
    assert proc.returncode == 0, proc.stderr
    return proj / "runs" / "own"


def test_run_folder_made_from_relative_paths_works_from_another_directory(own_run, tmp_path):
    run, _ = own_run
    proj, elsewhere = run.parents[1], tmp_path / "elsewhere"
    elsewhere.mkdir()
    data = json.loads((run / "config.json").read_text())["data"]
    assert data["train_files"] == [str(proj / "data" / "train.txt")] and data["val_files"] == [str(proj / "data" / "val.txt")]
    assert data["typed_paths"] == {"train_files": ["data/train.txt"], "val_files": ["data/val.txt"]}

    ppl = run_cli("ppl", run, "--text", "val", "--max-bytes", "2000", "--out", "tables", cwd=elsewhere)
    assert ppl.returncode == 0, ppl.stderr
    assert (elsewhere / "tables" / "heldout.parquet").is_file()  # --out is a folder, as for analyze
    analyze = run_cli("analyze", run, "--metric", "rand_sharpness", "--n-tokens", "64", "--out", tmp_path / "an",
                      "--settings", '{"landscape_random": {"n_directions": 1, "n_points": 3}}', "--quiet",
                      cwd=elsewhere)
    assert analyze.returncode == 0, analyze.stderr

    (proj / "data" / "val.txt").rename(proj / "val.moved")  # the data moved: the error names the run's config
    try:
        before = snapshot(run)
        gone = run_cli("ppl", run, "--text", "val", cwd=elsewhere)
        assert_clean_failure(gone, 2)
        assert f"{run / 'config.json'} names it in data.val_files (typed as 'data/val.txt'" in gone.stderr
        assert "--val-files" not in gone.stderr
        assert snapshot(run) == before
    finally:
        (proj / "val.moved").rename(proj / "data" / "val.txt")


def test_resume_from_another_directory_with_other_files_there_is_refused(own_run, tmp_path):
    """The same relative paths typed elsewhere name other files: resuming would silently change the data."""
    run, _ = own_run
    write_corpus(tmp_path, seed=1)  # tmp_path/data/train.txt exists, with other text
    before = snapshot(run)
    proc = run_cli("train", *TINY, "--train-files", "data/train.txt", "--val-files", "data/val.txt",
                   "--out-dir", run.parent, "--name", "own", "--resume", cwd=tmp_path)
    assert_clean_failure(proc, 2)
    assert f"reads data.train_files from ['{run.parents[1] / 'data' / 'train.txt'}']" in proc.stderr
    assert snapshot(run) == before


def test_run_folder_with_relative_paths_from_an_older_version_loads_and_resumes(tmp_path):
    """config.json as written before paths were stored absolute: relative paths, no typed_paths."""
    from rankscope.config import RunConfig
    from rankscope.training.checkpoint import list_checkpoints, read_run_config, step_dir

    proj = tmp_path / "proj"
    run = _train_own(proj, "--steps", "4", "--save-steps", "2")
    new_hash = read_run_config(run).fingerprint()
    cfg = json.loads((run / "config.json").read_text())
    cfg["data"].update(cfg["data"].pop("typed_paths"))  # the old layout
    (run / "config.json").write_text(json.dumps(cfg))
    import shutil

    shutil.rmtree(step_dir(run, 4))
    assert list_checkpoints(run) == [2]
    old = RunConfig.from_dict(cfg)
    assert old.fingerprint() == new_hash  # the hash of a run is that of the paths as typed, old or new layout

    resumed = run_cli("train", *TINY, "--train-files", "data/train.txt", "--val-files", "data/val.txt",
                      "--out-dir", "runs", "--name", "own", "--steps", "4", "--save-steps", "2", "--resume", cwd=proj)
    assert resumed.returncode == 0, resumed.stderr
    assert list_checkpoints(run) == [2, 4]
    ppl = run_cli("ppl", "runs/own", "--text", "val", "--max-bytes", "2000", cwd=proj)
    assert ppl.returncode == 0, ppl.stderr


def test_fingerprint_of_a_relative_path_config_is_unchanged():
    """Recorded with the code before data paths were resolved (commit a0a5635): config hashes stay valid."""
    from rankscope.config import DataConfig, RunConfig, TrainConfig

    cfg = RunConfig(model="smoke", data=DataConfig(source="files", train_files=("data/train.txt",),
                                                   val_files=("data/val.txt",), seq_len=32), train=TrainConfig(steps=4))
    assert cfg.data.train_files[0].endswith("/data/train.txt") and cfg.data.train_files[0].startswith("/")
    assert cfg.fingerprint() == "22b6071365e0f766"


def test_train_warns_about_epochs_a_defeated_method_and_a_too_large_eval_budget(tmp_path):
    """Three settings that are valid but probably not meant: one clear `warning:` paragraph each, exit 0."""
    write_corpus(tmp_path, n_docs=8)  # ~16 sequences of 32 tokens: 12 updates x 2 sequences is 1.5 epochs
    proc = run_cli("train", *TINY, "--steps", "12", "--eval-tokens", "100000", "--method", "galore",
                   "--set", "rank=1000", "--train-files", "data/train.txt", "--val-files", "data/val.txt",
                   "--out-dir", "runs", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 3 and "UserWarning" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    epochs, method, budget = warnings
    n_seqs = int(epochs.split(" sequences in data/train.txt")[0].rsplit("(", 1)[1])
    assert f"12 updates x 2 sequences = 24 sequences of 32 tokens are {24 / n_seqs:.1f} epochs" in epochs
    assert f"One epoch is {n_seqs // 2} updates" in epochs
    assert "method 'galore': option rank=1000 (at least min(m, n)" in method and "saves no memory" in method
    assert "--set rank=8" in method  # the study default for the smoke model
    assert budget.startswith("warning: --eval-tokens 100000 asks for more validation tokens than data/val.txt")


def test_rank_warning_is_exact_at_the_break_even_rank():
    """The named rank is the largest that stores less than AdamW: one more stores at least as much."""
    from rankscope.config import RunConfig
    from rankscope.training.run_warnings import method_warning

    for method in ("galore", "cola", "relora", "sltrain"):
        text = method_warning(RunConfig(model="tiny", method=method, method_options={"rank": 1000}))
        best = int(text.split("ranks up to ")[1].split()[0])
        assert not method_warning(RunConfig(model="tiny", method=method, method_options={"rank": best})), method
        assert method_warning(RunConfig(model="tiny", method=method, method_options={"rank": best + 1})), method


def test_study_defaults_raise_no_method_warning():
    from rankscope.config import RunConfig
    from rankscope.methods.registry import available
    from rankscope.training.run_warnings import method_warning

    for model in ("smoke", "tiny", "60m", "130m", "350m", "1b"):
        assert not [m for m in available() if method_warning(RunConfig(model=model, method=m))], model


def test_export_files_share_one_mode_and_agree_on_pad_and_length(own_run, tmp_path):
    """export-hf: weights as readable as the JSON beside them; pad id and max length agree across the files."""
    import stat

    from rankscope.data.tokenizer import load_tokenizer
    from rankscope.safetensors_io import file_mode
    from rankscope.training.checkpoint import list_checkpoints, step_dir

    run, _ = own_run
    ckpt = step_dir(run, list_checkpoints(run)[-1])
    assert {stat.S_IMODE(p.stat().st_mode) for p in ckpt.iterdir()} == {file_mode()}  # checkpoints too
    out = tmp_path / "hf"
    proc = run_cli("export-hf", run, out)
    assert proc.returncode == 0, proc.stderr
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert set(modes) >= {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"}
    assert set(modes.values()) == {file_mode()}, modes  # 0644 under the usual umask 022, never 0600

    config = json.loads((out / "config.json").read_text())
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    pad_id = load_tokenizer("embedded").pad_id
    assert pad_id is not None and config["pad_token_id"] == pad_id
    added = {t["content"]: t["id"] for t in json.loads((out / "tokenizer.json").read_text())["added_tokens"]}
    assert added[tok_config["pad_token"]] == pad_id
    assert tok_config["model_max_length"] == config["max_position_embeddings"] == 256  # the smoke preset's RoPE

    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    model = transformers.LlamaForCausalLM.from_pretrained(out)
    assert tokenizer.pad_token_id == model.config.pad_token_id == model.generation_config.pad_token_id == pad_id
    assert tokenizer.model_max_length == model.config.max_position_embeddings


@pytest.mark.parametrize("command, out, expected", [
    ("eval", "study/results", "study/results/downstream"),  # a folder, as for analyze and study
    ("ppl", "study/results", "study/results/heldout"),
    ("finetune", "tables", "tables/finetune"),
    ("ppl", "mine.parquet", "mine"),  # a table file, named explicitly
    ("eval", "all.csv", "all"),
    ("ppl", "results/downstream", "results/downstream"),  # the earlier stem form keeps its meaning
    ("finetune", "results/finetune", "results/finetune"),
])
def test_out_is_a_folder_with_documented_table_names(tmp_path, monkeypatch, command, out, expected):
    from rankscope.downstream.commands import out_table

    monkeypatch.chdir(tmp_path)
    assert out_table(out, command) == Path(expected)
    (tmp_path / "results" / "downstream").mkdir(parents=True)  # an existing folder named like a table is a folder
    assert out_table("results/downstream", "eval") == Path("results/downstream/downstream")
    assert out_table(None, command) is None


def test_help_says_what_out_is_and_which_tokens_each_metric_uses():
    analyze = run_cli("analyze", "--help").stdout
    flat = " ".join(analyze.replace("│", " ").split())
    assert "Output folder: OUT/diagnostics.parquet" in flat and "a folder, as for study, eval, ppl, finetune and predict" in flat
    assert "Activation metrics (act_*) use all of them" in flat and "first 512" in flat
    for command, table in (("eval", "downstream"), ("ppl", "heldout"), ("finetune", "finetune")):
        text = " ".join(run_cli(command, "--help").stdout.replace("│", " ").split())
        assert "Output folder: also" in text and f"OUT/{table}.parquet" in text, command


def test_report_refuses_a_project_folder_with_only_runs(tmp_path):
    """`rankscope report .` where `rankscope train` made runs/: not a study (no study.json), exit 2, nothing written."""
    (tmp_path / "runs" / "own").mkdir(parents=True)
    (tmp_path / "runs" / "own" / "config.json").write_text("{}")
    before = snapshot(tmp_path)
    proc = run_cli("report", ".", cwd=tmp_path)
    assert_clean_failure(proc, 2)
    assert "no study.json, so it is not a study folder" in proc.stderr
    assert "rankscope study --runs RUN [RUN ...] --out DIR" in " ".join(proc.stderr.split())
    assert snapshot(tmp_path) == before


def test_readme_own_data_study_loads(tmp_path, monkeypatch):
    """The README's own-data study config is valid: files imply source files, the demo's holdout is dropped."""
    import re

    from rankscope.study import load_study_config

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Your own data", 1)[1].split("\n## ", 1)[0]
    (tmp_path / "my_study.yaml").write_text(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))
    monkeypatch.chdir(tmp_path)
    cfg = load_study_config("my_study.yaml")
    assert cfg.data.source == "files" and cfg.data.holdout_source == "" and cfg.methods == ("full_rank", "galore")
    assert cfg.data.train_files == (str(tmp_path / "data" / "train.txt"),)


def test_missing_text_file_of_ppl_names_no_training_option(own_run, tmp_path):
    run, _ = own_run
    proc = run_cli("ppl", run, "--text", tmp_path / "no_such.txt", cwd=tmp_path)
    assert_clean_failure(proc, 2)
    assert f"data file {tmp_path / 'no_such.txt'} does not exist" in proc.stderr and "--train-files" not in proc.stderr
