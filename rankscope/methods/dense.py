"""Dense (merged) views of any method's model (methods.md §4; diagnostics.md "parameter space").

* :func:`materialize` — a plain LLaMA state dict (HF backbone names, ``...q_proj.weight``) that loads
  strictly into :class:`~rankscope.models.llama.LlamaLM` and computes the same function. Swapped layers
  contribute ``dense_weight()`` (fp32, one cast); everything else (extras) is copied.
* :func:`linearised_state` — CoLA's B·A products, for the metrics that opt in (spectra tagged
  ``space=linear_product``). They are *not* the layers' function and must never be loaded into a model.
* :func:`native_tensors` — every parameter as stored (trainable and frozen), for the faithful
  diagnostics mode (release defect Q2/Q3 behaviour).

All three are pure: they never modify the model. Swapped layers are recognised by duck typing
(``dense_weight`` / ``linear_product``) so this module does not depend on the layer classes.
"""

from __future__ import annotations

import torch
from torch import nn


class NoDenseForm(RuntimeError):
    """The layer applies a map no single matrix represents (CoLA: SiLU between its factors)."""


def _unwrap(model: nn.Module) -> nn.Module:
    """The raw model under DDP (``.module``) or torch.compile (``._orig_mod``) wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def _swapped(model: nn.Module, attr: str) -> dict[str, nn.Module]:
    return {name: mod for name, mod in model.named_modules() if name and callable(getattr(mod, attr, None))}


@torch.no_grad()
def materialize(model: nn.Module) -> dict[str, torch.Tensor]:
    """Plain LLaMA state dict: swapped layers → ``<name>.weight = dense_weight()``, extras copied.

    Raises :class:`NoDenseForm` for CoLA (use :func:`linearised_state` for its B·A products).
    """
    model = _unwrap(model)
    swapped = _swapped(model, "dense_weight")
    out: dict[str, torch.Tensor] = {}
    for name, mod in swapped.items():
        try:
            out[f"{name}.weight"] = mod.dense_weight().detach().clone()
        except NoDenseForm as exc:
            raise NoDenseForm(
                f"{name} ({type(mod).__name__}) has no dense form: {exc} Metrics that need dense weights "
                f"report this method as 'excluded: no dense form'; spectra may opt in to "
                f"linearised_state(model)."
            ) from None
    prefixes = tuple(f"{name}." for name in swapped)
    for key, value in model.state_dict().items():
        if not key.startswith(prefixes):
            out[key] = value.detach().clone()
    return out


@torch.no_grad()
def linearised_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``<name>.weight`` → B·A for every layer that offers ``linear_product()`` (CoLA).

    Documented as *not* the layer's function: B·SiLU(Ax) ≠ (BA)x. Only metrics that opt in (spectra with
    ``space=linear_product``) may use it, and it is never loaded into a dense model.
    """
    model = _unwrap(model)
    return {f"{name}.weight": mod.linear_product().detach().clone()
            for name, mod in _swapped(model, "linear_product").items()}


def native_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter as stored, trainable and frozen (ReLoRA: W, A, B; SLTrain: A, B, values; CoLA: A, B).

    Returns detached *views* of the live tensors (no copy, so 1B models do not double in memory):
    callers that perturb must work on their own fp32 copy (style.md §2.9). Buffers such as SLTrain's
    index are not parameters and are excluded.
    """
    model = _unwrap(model)
    return {name: p.detach() for name, p in model.named_parameters()}
