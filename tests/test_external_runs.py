"""External checkpoints (rankscope.runs): rankscope's per-token loss equals transformers' on folders that
transformers itself wrote, in every supported variant and release layout (docs/external_runs.md)."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")

import helpers_hf as H  # noqa: E402

from rankscope.runs import ExternalOptions, ExternalRun, open_run  # noqa: E402

TOL = dict(rtol=0, atol=1e-5)

VARIANTS = {
    "fp32": ({}, {}),
    "bf16": ({}, {"dtype": torch.bfloat16}),
    "sharded": ({}, {"max_shard_size": "200KB"}),
    "gqa": ({"num_attention_heads": 4, "num_key_value_heads": 2, "rope_theta": 500000.0}, {}),
    "tied": ({"tie_word_embeddings": True}, {}),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_loss_equals_transformers(tmp_path, variant, one_thread):
    import transformers

    model_kw, save_kw = VARIANTS[variant]
    folder = H.save(H.hf_model(3, **model_kw), tmp_path / "model_100", **save_kw)
    if variant == "sharded":
        assert (folder / "model.safetensors.index.json").is_file() and len(list(folder.glob("*.safetensors"))) > 1
    if variant == "tied":
        assert "tie_word_embeddings" in (folder / "config.json").read_text()
    reference = transformers.LlamaForCausalLM.from_pretrained(folder, torch_dtype=torch.float32).eval()
    run = open_run(tmp_path)
    assert run.kind == "external" and run.steps == [100] and run.layout == "dense"
    ids = H.sample_ids()
    torch.testing.assert_close(H.token_losses(run.load_model(100), ids), H.token_losses(reference, ids), **TOL)
    if variant == "gqa":
        assert run.model_config().kv_heads == 2 and run.model_config().n_heads == 4
    if variant == "tied":
        m = run.load_model(100)
        assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()


def test_trainer_checkpoint_series(tmp_path, one_thread):
    """HF Trainer's checkpoint-<step>/ folders (optimizer.pt, trainer_state.json beside the model) are a series."""
    import transformers

    H.series(tmp_path, steps=(500, 1000), pattern="checkpoint-{}")
    for step in (500, 1000):
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        (tmp_path / f"checkpoint-{step}" / "optimizer.pt").write_bytes(b"not read")
    (tmp_path / "runs").mkdir()  # TensorBoard logs beside the checkpoints are not part of the series
    run = open_run(tmp_path, ExternalOptions(labels={str(tmp_path): {"method": "galore", "seed": "3"}}))
    assert run.steps == [500, 1000] and run.method == "galore" and run.seed == 3
    reference = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "checkpoint-1000").eval()
    ids = H.sample_ids()
    torch.testing.assert_close(H.token_losses(run.load_model(), ids), H.token_losses(reference, ids), **TOL)


@pytest.mark.parametrize("layout", ["relora", "sltrain", "cola", "cola_only_lr_act"])
def test_release_layouts(tmp_path, layout, one_thread):
    """ReLoRA / SLTrain checkpoints merge to dense; CoLA loads into its own layers: same losses as the release."""
    name = layout.split("_")[0]
    reference = H.release_checkpoint(name, tmp_path / "model_40", only_lr_act=layout.endswith("act"))
    run = open_run(tmp_path)
    assert run.layout == name and run.method == name
    assert run.has_dense_form == (name != "cola")
    ids = H.sample_ids()
    torch.testing.assert_close(H.token_losses(run.load_model(), ids), H.token_losses(reference, ids), **TOL)


def test_relora_merge_equals_explicit_sum(tmp_path, one_thread):
    """The merged W is W + (alpha/r)·B A, key by key (the analytic form, not only the same function)."""
    from rankscope.methods.dense import materialize

    ref = H.release_checkpoint("relora", tmp_path / "model_1", r=4, alpha=8.0)
    merged = materialize(open_run(tmp_path).load_model())
    q = ref.model.layers[0].self_attn.q_proj
    expected = q.weight + 2.0 * q.lora_B.weight @ q.lora_A.weight
    torch.testing.assert_close(merged["model.layers.0.self_attn.q_proj.weight"], expected.detach(), **TOL)


def test_sidecar_lists_checkpoints_and_labels(tmp_path):
    H.series(tmp_path / "ckpts", steps=(5, 7), pattern="weird_{}")
    spec = {"name": "theirs", "method": "fira", "seed": 2, "checkpoints": {"5": "ckpts/weird_5", "7": "ckpts/weird_7"}}
    (tmp_path / "run.json").write_text(json.dumps(spec))
    run = open_run(tmp_path / "run.json")
    assert (run.name, run.method, run.seed, run.steps) == ("theirs", "fira", 2, [5, 7])
    assert run.checkpoint_dir(7) == tmp_path / "ckpts" / "weird_7"
    assert run.scale == "smoke"  # the smoke preset's exact shape
    assert isinstance(run, ExternalRun)


def test_external_runs_need_no_transformers(tmp_path):
    """The runtime path (config, weights, layouts, tokenizer) works with transformers unimportable."""
    import subprocess
    import sys

    H.series(tmp_path / "ckpts", steps=(1, 2))
    H.release_checkpoint("sltrain", tmp_path / "sl" / "model_3")
    script = ("import sys; sys.modules['transformers'] = None\n"
              "from rankscope.cli import run\n"
              f"code = run(['analyze', {str(tmp_path / 'ckpts')!r}, {str(tmp_path / 'sl')!r}, '--out', "
              f"{str(tmp_path / 'out')!r}, '-m', 'w_erank', '--quiet'])\n"
              "assert 'transformers' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
              "sys.exit(code)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "diagnostics.parquet").is_file()
