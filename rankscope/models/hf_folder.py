"""Read a Hugging Face model folder without transformers: ``config.json`` checked, weights read as fp32.

Why no transformers: an external run must be analysable with the runtime dependencies only, so the config
is parsed here and safetensors files are read with the ``safetensors`` package. Every refusal is a
:class:`UserError` naming the file, the field and the fix; nothing is guessed:

* ``model_type`` must be ``llama`` (or ``cola``, the CoLA release's own type); any other is named.
* ``rope_scaling`` must be absent or null, ``hidden_act`` SiLU, no attention/MLP biases, ``head_dim`` the
  default ``hidden_size / num_attention_heads``: rankscope's LLaMA has none of those variants, and running
  such a model with plain RoPE would give silently wrong losses.
* Weights: ``model.safetensors.index.json`` + its shards, else every ``*.safetensors``; each file's header is
  checked against its size first (a truncated shard is named before anything runs). ``pytorch_model.bin``
  (pickle) is refused unless the caller allows it: unpickling runs code from the file.
* ``max_position_embeddings`` above :data:`MAX_ROPE_POSITIONS` is capped there (RoPE tables are built for
  every position up front; diagnostics use sequences of a few hundred tokens).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from rankscope.errors import UserError
from rankscope.json_io import read_json_object
from rankscope.models.llama import ModelConfig

MODEL_TYPES = ("llama", "cola")
MAX_ROPE_POSITIONS = 8192
INDEX_NAME = "model.safetensors.index.json"
PICKLE_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def read_config_json(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise UserError(f"{folder} is not a Hugging Face model folder: {path} is missing (save the model with "
                        f"save_pretrained, or list the checkpoint folders explicitly)")
    return read_json_object(path, "restore the file written by save_pretrained",
                            "the JSON object save_pretrained writes")


def model_config_from_hf(hf: dict[str, Any], path: Path) -> ModelConfig:
    """The rankscope ModelConfig of a HF LLaMA (or CoLA) config.json, or a UserError naming the field."""
    model_type = hf.get("model_type")
    if model_type not in MODEL_TYPES:
        raise UserError(f"{path}: model_type is {model_type!r}, but rankscope analyses LLaMA decoders only "
                        f"(model_type 'llama', or 'cola' for CoLA's release); convert the model, or leave "
                        f"this folder out")
    missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                           "num_attention_heads") if not isinstance(hf.get(k), int)]
    if missing:
        raise UserError(f"{path}: field(s) {missing} are missing or not integers; a LLaMA config.json needs them")
    rope = _rope(hf, path)
    act = hf.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise UserError(f"{path}: hidden_act={act!r}; rankscope's LLaMA MLP is SwiGLU (hidden_act 'silu')")
    for flag in ("attention_bias", "mlp_bias"):
        if hf.get(flag):
            raise UserError(f"{path}: {flag}=true; rankscope's LLaMA has no biases (set by the model's author: "
                            f"such a model cannot be analysed)")
    d, heads = hf["hidden_size"], hf["num_attention_heads"]
    if d % heads or hf.get("head_dim") not in (None, d // heads):
        raise UserError(f"{path}: head_dim={hf.get('head_dim')!r} with hidden_size={d} and "
                        f"num_attention_heads={heads}; rankscope needs head_dim = hidden_size / heads")
    kv = hf.get("num_key_value_heads") or heads
    try:
        return ModelConfig(
            vocab_size=hf["vocab_size"], d_model=d, n_layers=hf["num_hidden_layers"], n_heads=heads,
            d_ff=hf["intermediate_size"],
            max_seq_len=min(int(hf.get("max_position_embeddings") or hf.get("max_sequence_length") or 2048),
                            MAX_ROPE_POSITIONS),
            rope_base=rope, norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            init_std=float(hf.get("initializer_range", 0.02)),
            n_kv_heads=None if kv == heads else int(kv), tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        )
    except ValueError as exc:
        raise UserError(f"{path}: {exc}") from None


def _rope(hf: dict[str, Any], path: Path) -> float:
    """RoPE theta; any scaled RoPE is refused. transformers 5 writes ``rope_parameters`` (type + theta),
    earlier versions ``rope_theta`` and an optional ``rope_scaling``."""
    for key in ("rope_scaling", "rope_parameters"):
        value = hf.get(key)
        if value in (None, {}):
            continue
        kind = value.get("rope_type", value.get("type", "default")) if isinstance(value, dict) else value
        if kind != "default":
            raise UserError(f"{path}: {key}={value!r} is not supported: rankscope's LLaMA uses plain RoPE "
                            f"(theta only), so a scaled-RoPE model would get wrong losses. Use a model without "
                            f"rope_scaling (its config.json has none or null, or rope_type 'default')")
    params = hf.get("rope_parameters") if isinstance(hf.get("rope_parameters"), dict) else {}
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def shape_fields(mcfg: ModelConfig) -> dict[str, Any]:
    """The fields every checkpoint of one series must share."""
    return {k: getattr(mcfg, k) for k in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "n_kv_heads",
                                          "tie_embeddings", "rope_base")}


def weight_files(folder: Path, allow_pickle: bool = False) -> list[Path]:
    """The files holding the folder's weights (checked for truncation), or a UserError saying what is wrong."""
    folder = Path(folder)
    index = folder / INDEX_NAME
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UserError(f"{index} is not a safetensors index ({exc!r}); it needs a 'weight_map' "
                            f"object mapping tensor names to shard files") from None
        files = [folder / n for n in names]
        gone = [str(f) for f in files if not f.is_file()]
        if gone:
            raise UserError(f"{index} lists shard(s) that are missing: {', '.join(gone)}; copy every "
                            f"model-0000x-of-0000y.safetensors file of the checkpoint")
    else:
        files = sorted(folder.glob("*.safetensors"))
    if files:
        for f in files:
            check_safetensors(f)
        return files
    pickles = [folder / n for n in PICKLE_NAMES if (folder / n).is_file()]
    if pickles and not allow_pickle:
        raise UserError(f"{folder} holds only pickle weights ({pickles[0].name}): loading a pickle runs code "
                        f"stored in the file, so rankscope refuses it by default. Convert the checkpoint to "
                        f"safetensors (model.save_pretrained(dir, safe_serialization=True)), or pass "
                        f"--allow-pickle if you trust where the file came from")
    if pickles:
        return pickles
    raise UserError(f"{folder} holds no model weights (no *.safetensors, {INDEX_NAME} or pytorch_model.bin)")


def check_safetensors(path: Path) -> None:
    """Header length, header JSON and data size agree with the file size (a cut copy is caught here)."""
    size = path.stat().st_size
    problem = None
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            problem = f"it is {size} bytes long, shorter than a safetensors header"
        else:
            n = struct.unpack("<Q", head)[0]
            if 8 + n > size:
                problem = f"its header claims {n} bytes but the file has {size}"
            else:
                try:
                    header = json.loads(fh.read(n))
                    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"),
                              default=0)
                except (ValueError, KeyError, TypeError, AttributeError) as exc:
                    problem = f"its header is not valid safetensors JSON ({exc!r})"
                else:
                    if 8 + n + end != size:
                        problem = f"its header describes {8 + n + end} bytes of tensors but the file has {size}"
    if problem:
        raise UserError(f"weights file {path} is truncated or corrupt: {problem}. Copy the file again from "
                        f"where the checkpoint was written (or leave this checkpoint out)")


def read_weights(folder: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Every tensor of the folder, as saved (dtypes kept; callers cast)."""
    state: dict[str, torch.Tensor] = {}
    for f in weight_files(folder, allow_pickle):
        if f.name.endswith(".json"):  # pytorch_model.bin.index.json
            for shard in sorted(set(json.loads(f.read_text())["weight_map"].values())):
                state.update(torch.load(folder / shard, map_location="cpu", weights_only=True))
        elif f.suffix == ".bin":
            state.update(torch.load(f, map_location="cpu", weights_only=True))
        else:
            try:
                state.update(load_file(f))
            except (SafetensorError, OSError, ValueError) as exc:
                raise UserError(f"weights file {f} is corrupt ({exc}); copy it again") from None
    return state
