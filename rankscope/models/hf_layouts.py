"""The official releases' checkpoint layouts, turned into rankscope models (no transformers, no copied code).

Key names were read from each release's save code (all save with HF ``save_pretrained`` into
``model_<step>/``; see docs/external_runs.md):

* ``dense`` — plain ``LlamaForCausalLM`` (full-rank, GaLore, Fira, APOLLO, ... and HF Trainer runs).
* ``relora`` — ReLoRA's wrapped model: every target keeps ``<m>.weight`` (frozen W) plus
  ``<m>.lora_A.weight`` (r×n) and ``<m>.lora_B.weight`` (m×r); ``relora_config.json`` holds ``r`` and
  ``lora_alpha`` (scale alpha/r), or ``<m>.scaling`` holds the trainable scale (applied as tanh). Merged here
  to ``W + s·B A``, the same dense form as rankscope's own ReLoRA runs. ``lora_only`` runs have no W.
* ``sltrain`` — SLTrain's SpLoRa layers: ``<m>.lora_A`` (r×n), ``<m>.lora_B`` (m×r) as bare parameters,
  ``<m>.sparse_value`` and the row-major flat ``<m>.sparse_index`` buffer; scale from ``splora_config.json``
  (alpha/r) or ``<m>.scaling`` (tanh). Merged to ``s·B A + S``.
* ``cola`` — CoLA's ``model_type: cola``: ``<m>.cola_a`` (n×r) and ``<m>.cola_b`` (r×m), used as
  ``x a → SiLU → b``; loaded into rankscope's CoLA layers (``cola_A = aᵀ``, ``cola_B = bᵀ``) and analysed in
  native space like rankscope's CoLA runs. ``only_lr_act`` (default true in the release's config class)
  drops the MLP's outer SiLU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rankscope.errors import UserError
from rankscope.models.llama import LlamaLM, ModelConfig

LAYOUTS = ("dense", "relora", "sltrain", "cola")
#: Method label given to a layout when the user names none (dense checkpoints do not say how they were trained).
DEFAULT_METHOD = {"dense": "unlabelled", "relora": "relora", "sltrain": "sltrain", "cola": "cola"}


def detect_layout(hf: dict[str, Any], folder: Path, keys: set[str]) -> str:
    if hf.get("model_type") == "cola" or any(k.endswith(".cola_a") for k in keys):
        return "cola"
    if any(k.endswith(".sparse_index") for k in keys):
        return "sltrain"
    if any(k.endswith(".lora_A.weight") for k in keys):
        return "relora"
    return "dense"


def build_model(state: dict[str, torch.Tensor], mcfg: ModelConfig, layout: str, folder: Path,
                hf: dict[str, Any]) -> LlamaLM:
    """An fp32 eval-mode LlamaLM (dense layouts merged; CoLA with its own layers) from the folder's tensors."""
    state = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}
    if layout == "relora":
        state = _merge_relora(state, folder)
    elif layout == "sltrain":
        state = _merge_sltrain(state, folder)
    model = LlamaLM(mcfg)
    if layout == "cola":
        state = _cola_to_rankscope(state)
        _swap_cola(model, int(hf.get("rank") or mcfg.d_model // 4), bool(hf.get("only_lr_act", True)))
    state = {k: v.float() for k, v in state.items()}
    if mcfg.tie_embeddings:
        state.setdefault("lm_head.weight", state.get("model.embed_tokens.weight"))
        if state["lm_head.weight"] is None:
            state.pop("lm_head.weight")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"{folder}: its weights do not match a LLaMA of its config.json ({layout} layout): "
                        f"missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}. Check that the "
                        f"folder holds the whole model as save_pretrained wrote it")
    return model.float().eval()


def _config_file(folder: Path, name: str) -> dict[str, Any] | None:
    path = folder / name
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); restore it from the run") from None
    return data if isinstance(data, dict) else None


def _scale(state: dict, prefix: str, cfg: dict | None, folder: Path, cfg_name: str) -> float | torch.Tensor:
    """tanh(<m>.scaling) when the scale was trained, else lora_alpha / r from the release's config file."""
    if f"{prefix}.scaling" in state:
        return state.pop(f"{prefix}.scaling").float().tanh()
    if cfg is None or not cfg.get("r") or cfg.get("lora_alpha") is None:
        raise UserError(f"{folder}: {cfg_name} with 'r' and 'lora_alpha' is missing, so the adapters' scale "
                        f"(lora_alpha / r) is unknown; copy {cfg_name} from the run's checkpoint folder")
    return float(cfg["lora_alpha"]) / float(cfg["r"])


def _merge_relora(state: dict[str, torch.Tensor], folder: Path) -> dict[str, torch.Tensor]:
    cfg = _config_file(folder, "relora_config.json")
    out = dict(state)
    for key in [k for k in state if k.endswith(".lora_A.weight")]:
        prefix = key[: -len(".lora_A.weight")]
        a, b = out.pop(key).float(), out.pop(f"{prefix}.lora_B.weight").float()
        s = _scale(out, prefix, cfg, folder, "relora_config.json")
        base = out.get(f"{prefix}.weight")
        w = torch.zeros(b.shape[0], a.shape[1]) if base is None else base.float()
        out[f"{prefix}.weight"] = w + s * (b @ a)
    return out


def _merge_sltrain(state: dict[str, torch.Tensor], folder: Path) -> dict[str, torch.Tensor]:
    cfg = _config_file(folder, "splora_config.json")
    out = dict(state)
    for key in [k for k in state if k.endswith(".sparse_index")]:
        prefix = key[: -len(".sparse_index")]
        index = out.pop(key).long()
        values = out.pop(f"{prefix}.sparse_value").float()
        a, b = out.pop(f"{prefix}.lora_A").float(), out.pop(f"{prefix}.lora_B").float()
        s = _scale(out, prefix, cfg, folder, "splora_config.json")
        w = b @ (a * s)
        w.view(-1).index_add_(0, index, values)
        out[f"{prefix}.weight"] = w
    return out


def _cola_to_rankscope(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        if k.endswith(".cola_a"):
            out[k[: -len("cola_a")] + "cola_A"] = v.t().contiguous()
        elif k.endswith(".cola_b"):
            out[k[: -len("cola_b")] + "cola_B"] = v.t().contiguous()
        else:
            out[k] = v
    return out


def _swap_cola(model: LlamaLM, rank: int, only_lr_act: bool) -> None:
    from rankscope.methods.layers import CoLALinear, swap_targets

    swap_targets(model, lambda _, lin: CoLALinear(lin.in_features, lin.out_features, rank))
    if only_lr_act:  # the release's default: no SiLU around gate_proj (the low-rank SiLU stays)
        for mod in model.modules():
            if isinstance(getattr(mod, "act", None), nn.SiLU):
                mod.act = nn.Identity()
