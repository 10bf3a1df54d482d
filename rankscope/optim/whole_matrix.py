"""Projected optimizers (GaLore, Fira, GoLore, APOLLO, ...) under FSDP2: state sharded by whole matrices.

FSDP2 (``fully_shard``) keeps every weight and gradient as a row shard (``Shard(0)``) on each rank. A
projected optimizer needs the whole gradient of a matrix (its top-r basis, Fira's per-row/column scaling
and residual norm, APOLLO's channel norms), so this wrapper gives every projected matrix one **owner
rank** (largest-first onto the least-loaded rank, the same on every rank) and, in each ``step``:

1. all-gathers that matrix's weight and gradient, kept only on its owner (other ranks drop them at once,
   so a non-owner holds one m×n temporary at a time);
2. runs the method's own optimizer, unchanged, on the owner: projector refresh, compact moments, Fira's
   limiter, APOLLO's seeds, all exactly as in one process (the limiter's norms are whole-matrix norms on
   the owner, no reduction needed);
3. broadcasts the updated matrix from its owner; every rank keeps its rows.

The extras (embedding, lm_head, norms) are plain AdamW on the FSDP shards: their moments are row shards.
So per rank the optimizer state is the compact moments, projectors and scalars of its owned matrices plus
1/world of the extras' moments: the closed form ÷ world when the matrices balance (they do at every
preset: the 7 projections come in equal-shape groups). Nothing is replicated.

The inner optimizer is the method's own ``build_optimizer`` over the method's own groups, with each
projected DTensor replaced by a *proxy* parameter (empty between steps, the full matrix on its owner during
one), so parameter order, seeds and the state-dict layout are those of a single process, and
``full_state_dict`` writes the same checkpoint a single process would.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn


def is_projected(group: dict[str, Any]) -> bool:
    return group.get("rank") is not None


def _is_dtensor(t: Any) -> bool:
    return hasattr(t, "to_local") and hasattr(t, "placements")


def owners(sizes: list[int], world: int) -> list[int]:
    """Largest-first greedy assignment of matrices to ranks (ties: lower index, lower rank); deterministic."""
    load = [0] * world
    out = [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        r = min(range(world), key=lambda r: (load[r], r))
        out[i] = r
        load[r] += sizes[i]
    return out


def local_rows(full: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's rows of ``full`` under ``Shard(0)`` (torch.chunk semantics, as FSDP2 and DTensor use)."""
    chunks = torch.chunk(full, world, dim=0)
    return chunks[rank] if rank < len(chunks) else full[:0]


@contextlib.contextmanager
def _groups(method, groups: list[dict]):
    """``method.build_optimizer`` reads ``self.param_groups(model)``; hand it the proxied groups instead."""
    method.param_groups = lambda model: groups
    try:
        yield
    finally:
        del method.param_groups


class WholeMatrixSharded:
    """The method's optimizer with projected matrices owned whole by one rank each (module docstring)."""

    def __init__(self, method, model: nn.Module) -> None:
        self.world, self.rank = torch_dist.get_world_size(), torch_dist.get_rank()
        groups, projected = [], []
        for g in method.param_groups(model):
            if not is_projected(g):
                groups.append(g)
                continue
            proxies = []
            for p in g["params"]:
                local = p.to_local() if _is_dtensor(p) else p
                proxy = nn.Parameter(torch.empty(0, 0, dtype=p.dtype, device=local.device))
                projected.append((p, proxy))
                proxies.append(proxy)
            groups.append({**g, "params": proxies})
        who = owners([p.numel() for p, _ in projected], self.world)
        self.matrices = [(p, proxy, owner) for (p, proxy), owner in zip(projected, who)]
        self._proxy_owner = {id(proxy): owner for _, proxy, owner in self.matrices}
        with _groups(method, groups):
            self.inner = method.build_optimizer(model)

    # --- the Optimizer surface the loop uses ---------------------------------------------------------
    @property
    def param_groups(self) -> list[dict]:
        return self.inner.param_groups

    @property
    def state(self):
        return self.inner.state

    @property
    def defaults(self) -> dict:
        return self.inner.defaults

    def __getattr__(self, name: str) -> Any:  # counters such as nonfinite_skips live on the inner optimizer
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)
        for p, proxy, _ in self.matrices:
            p.grad = None
            proxy.grad = None

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        for p, proxy, owner in self.matrices:
            if p.grad is None:  # the same on every rank: FSDP gives every rank a gradient shard or none
                continue
            weight, grad = self._full(p), self._full(p.grad)
            if owner == self.rank:
                proxy.data, proxy.grad = weight, grad
            del weight, grad
        loss = self.inner.step(closure)
        for p, proxy, owner in self.matrices:
            if p.grad is None:
                continue
            buf = proxy.data if owner == self.rank else torch.empty(p.shape, dtype=p.dtype, device=proxy.device)
            torch_dist.broadcast(buf, src=owner)
            local = p.to_local() if _is_dtensor(p) else p
            if local.numel():
                local.copy_(local_rows(buf, self.rank, self.world))
            del buf
            proxy.data, proxy.grad = torch.empty(0, 0, dtype=p.dtype, device=proxy.device), None
        return loss

    @staticmethod
    def _full(t: torch.Tensor) -> torch.Tensor:
        return t.full_tensor() if _is_dtensor(t) else t.detach().clone()

    # --- accounting and checkpoints ---------------------------------------------------------------------
    def local_state_bytes(self) -> int:
        """Bytes of this rank's optimizer-state tensors (shards for DTensors), ``step`` counters excluded."""
        total = 0
        for st in self.inner.state.values():
            for k, v in st.items():
                if isinstance(v, torch.Tensor) and k != "step":
                    v = v.to_local() if _is_dtensor(v) else v
                    total += v.numel() * v.element_size()
        return total

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.inner.param_groups for p in g["params"]]

    def full_state_dict(self) -> dict:
        """A single process's ``state_dict()`` (index layout, full tensors on CPU) on rank 0; ``{}`` elsewhere.

        Collective: every rank must call it (the extras' shards are gathered, owned states sent to rank 0).
        """
        sd = self.inner.state_dict()
        params = self._params()
        full, owned = {}, {}
        for idx in sorted(sd["state"]):
            values = sd["state"][idx]
            if id(params[idx]) in self._proxy_owner:
                owned[idx] = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in values.items()}
                continue
            full[idx] = {k: (v.full_tensor() if _is_dtensor(v) else v).detach().cpu() if isinstance(v, torch.Tensor)
                         else v for k, v in sorted(values.items())}
        gathered: list = [None] * self.world
        torch_dist.all_gather_object(gathered, owned)
        if self.rank != 0:
            return {}
        for part in gathered:
            full.update(part)
        return {"state": dict(sorted(full.items())), "param_groups": sd["param_groups"]}

    def load_full_state_dict(self, full: dict) -> None:
        """Load a single-process layout: owned matrices' states whole, the extras' moments as row shards."""
        params = self._params()
        state = {}
        for idx, values in full["state"].items():
            p = params[int(idx)]
            if id(p) in self._proxy_owner:
                if self._proxy_owner[id(p)] == self.rank:
                    state[int(idx)] = values
                continue
            state[int(idx)] = {k: self._shard_like(v, p) for k, v in values.items()}
        self.inner.load_state_dict({"state": state, "param_groups": full["param_groups"]})

    def _shard_like(self, value: Any, p: torch.Tensor) -> Any:
        if not (isinstance(value, torch.Tensor) and _is_dtensor(p) and value.shape == p.shape):
            return value  # scalars (step) and replicated values
        from torch.distributed.tensor import DTensor

        local = local_rows(value, self.rank, self.world).to(p.to_local().device).contiguous()
        return DTensor.from_local(local, p.device_mesh, p.placements, run_check=False, shape=p.shape,
                                  stride=p.stride())


def needs_whole_matrices(method, model: nn.Module) -> bool:
    return any(is_projected(g) for g in method.param_groups(model))
