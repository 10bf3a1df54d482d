"""Bad external checkpoints through the console script: exit 2, one paragraph naming the problem and the fix,
no traceback, nothing written (docs/external_runs.md)."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("transformers")

import helpers_hf as H  # noqa: E402
from helpers_fs import assert_clean_failure, assert_unchanged, run_cli, snapshot  # noqa: E402


def _gpt2(root):
    H.series(root, steps=(10,))
    cfg = json.loads((root / "model_10" / "config.json").read_text())
    (root / "model_10" / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))


def _shapes(root):
    H.save(H.hf_model(0), root / "model_10")
    H.save(H.hf_model(1, intermediate_size=96), root / "model_20")


def _no_steps(root):
    H.save(H.hf_model(0), root / "final")
    H.save(H.hf_model(1), root / "best")


def _no_tokenizer(root):
    H.save(H.hf_model(0), root / "model_10", tokenizer=False)
    (root / "model_10" / "tokenizer_config.json").write_text("{}")


def _vocab(root):
    H.save(H.hf_model(0, vocab_size=4096), root / "model_10")


def _truncated(root):
    folder = H.save(H.hf_model(0), root / "model_10", max_shard_size="200KB")
    shard = sorted(folder.glob("model-*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:-100])


def _pickle(root):
    """What older transformers' save_pretrained wrote (the ReLoRA release loads exactly this file)."""
    import torch

    model = H.hf_model(0)
    (root / "model_10").mkdir()
    model.config.save_pretrained(root / "model_10")
    torch.save(model.state_dict(), root / "model_10" / "pytorch_model.bin")
    shutil.copy(H.tokenizer_file(), root / "model_10" / "tokenizer.json")


def _rope_scaling(root):
    H.save(H.hf_model(0, rope_scaling={"rope_type": "linear", "factor": 2.0}), root / "model_10")


CASES = {
    "not_llama": (_gpt2, ["model_type is 'gpt2'", "LLaMA"]),
    "shapes_differ": (_shapes, ["one shape", "d_ff 88 vs 96", "model_10", "model_20"]),
    "no_steps": (_no_steps, ["no checkpoint step could be parsed", "best", "model_<step>", "rankscope_run.json"]),
    "no_tokenizer": (_no_tokenizer, ["has no tokenizer", "tokenizer_config.json", "--tokenizer"]),
    "vocab_mismatch": (_vocab, ["8192 ids", "vocab_size=4096", "--tokenizer"]),
    "truncated_shard": (_truncated, ["truncated", "model-0000", "Copy the file again"]),
    "pickle_only": (_pickle, ["pytorch_model.bin", "runs code", "--allow-pickle", "safetensors"]),
    "rope_scaling": (_rope_scaling, ["rope_", "'linear'", "plain RoPE"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_external_run_is_refused(tmp_path, case):
    build, expected = CASES[case]
    root = tmp_path / "ckpts"
    root.mkdir()
    build(root)
    before = snapshot(tmp_path)
    proc = run_cli("analyze", root, "--out", tmp_path / "analysis", "-m", "w_erank", "--quiet")
    assert_clean_failure(proc, 2)
    for text in expected:
        assert text in proc.stderr, (text, proc.stderr)
    assert_unchanged(before, tmp_path)


def test_pickle_weights_load_with_the_flag(tmp_path, one_thread):
    """--allow-pickle is the explicit opt-in: the same folder then loads, with transformers' losses."""
    import torch
    import transformers

    from rankscope.runs import ExternalOptions, open_run

    _pickle(tmp_path)
    run = open_run(tmp_path, ExternalOptions(allow_pickle=True))
    reference = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "model_10").eval()
    ids = H.sample_ids()
    torch.testing.assert_close(H.token_losses(run.load_model(), ids), H.token_losses(reference, ids),
                               rtol=0, atol=1e-5)
    proc = run_cli("analyze", tmp_path, "--allow-pickle", "-m", "w_erank", "--quiet", "--out", tmp_path.parent / "pk")
    assert proc.returncode == 0, proc.stderr
