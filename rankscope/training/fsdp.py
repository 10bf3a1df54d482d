"""FSDP2 (``fully_shard``) for models too large to replicate: each block is one shard unit.

Checkpoints stay full (unsharded) state dicts so every run folder loads the same way. Methods with
projected groups (GaLore, Fira, GoLore, APOLLO, APOLLO-Mini) need whole matrices: their optimizer runs
behind :class:`~rankscope.optim.whole_matrix.WholeMatrixSharded` (each matrix owned whole by one rank,
state sharded by matrices), whose checkpoints have a single process's layout.
"""

from __future__ import annotations

import torch
from torch import nn


def shard_model(model: nn.Module) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    for block in model.model.layers:
        fully_shard(block)
    fully_shard(model)
    return model


def build_optimizer(method, model: nn.Module):
    """The method's optimizer over the sharded model; whole-matrix ownership for projected groups."""
    from rankscope.optim.whole_matrix import WholeMatrixSharded, needs_whole_matrices

    if needs_whole_matrices(method, model):
        return WholeMatrixSharded(method, model)
    return method.build_optimizer(model)


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_states(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    if hasattr(optimizer, "full_state_dict"):  # WholeMatrixSharded: already a single process's layout
        return get_model_state_dict(model, options=_options()), optimizer.full_state_dict()
    return get_model_state_dict(model, options=_options()), _to_indexed(model, optimizer,
                                                                          get_optimizer_state_dict(model, optimizer, options=_options()))


def _to_indexed(model, optimizer, osd: dict) -> dict:
    """DCP returns optimizer state keyed by FQN; the run folder stores torch's index-keyed layout.

    With ``cpu_offload`` only rank 0 receives the full state; the other ranks get an empty dict.
    """
    if not osd:
        return {}
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    index = {n: i for i, n in enumerate(names)}
    state = {index[k]: v for k, v in osd["state"].items()}
    groups = []
    for g in osd["param_groups"]:
        g = dict(g)
        g["params"] = [index[n] for n in g["params"]]
        groups.append(g)
    return {"state": state, "param_groups": groups}


def load_full_states(model: nn.Module, optimizer, model_state: dict, opt_state: dict | None) -> None:
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    set_model_state_dict(model, model_state, options=_options())
    if opt_state is not None and hasattr(optimizer, "load_full_state_dict"):
        optimizer.load_full_state_dict(opt_state)
    elif opt_state is not None:
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        by_name = {"state": {names[i]: v for i, v in opt_state["state"].items()},
                   "param_groups": [dict(g, params=[names[i] for i in g["params"]]) for g in opt_state["param_groups"]]}
        set_optimizer_state_dict(model, optimizer, by_name, options=_options())
