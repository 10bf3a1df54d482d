"""Per-rank memory of one training step under DDP vs FSDP2 (``fully_shard``), for any method.

    torchrun --nproc_per_node 2 benchmarks/bench_fsdp_memory.py --model 60m --method galore --dist fsdp \
        --out benchmarks/results/fsdp_memory_galore_fsdp.json

Each rank builds the model exactly as ``rankscope train`` does (seeded LLaMA, the method's transform, FSDP2
sharding or a DDP replica), runs one update on random tokens, and reports the bytes it holds: parameters,
gradients and optimizer state (its shards for DTensors; ``step`` counters excluded) and its peak RSS.
Rank 0 writes every rank's row to ``--out``. Under FSDP2, projected methods run with whole-matrix
ownership (rankscope/optim/whole_matrix.py).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch
import torch.distributed as torch_dist
from torch import nn

from rankscope.config import DataConfig, RunConfig, TrainConfig
from rankscope.models.llama import lm_loss
from rankscope.training import dist
from rankscope.training.loop import build_model


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def _bytes(tensors) -> int:
    return sum(_local(t).numel() * _local(t).element_size() for t in tensors)


def state_bytes(optimizer) -> int:
    if hasattr(optimizer, "local_state_bytes"):
        return optimizer.local_state_bytes()
    return _bytes(v for st in optimizer.state.values() for k, v in st.items()
                  if isinstance(v, torch.Tensor) and k != "step")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="60m")
    ap.add_argument("--method", default="galore")
    ap.add_argument("--dist", choices=("ddp", "fsdp"), default="fsdp")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--micro-batch-size", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    cfg = RunConfig(model=args.model, method=args.method, data=DataConfig(seq_len=args.seq_len),
                    train=TrainConfig(steps=100, micro_batch_size=args.micro_batch_size, device="cpu",
                                      precision="fp32", dist=args.dist))
    info = dist.setup("cpu")
    method = cfg.build_method()
    model, _ = build_model(cfg, method)
    if args.dist == "fsdp":
        from rankscope.training.fsdp import build_optimizer, shard_model

        shard_model(model)
        optimizer = build_optimizer(method, model)
        train_model = model
    else:
        optimizer = method.build_optimizer(model)
        train_model = nn.parallel.DistributedDataParallel(model) if info.distributed else model
    gen = torch.Generator().manual_seed(1000 + info.rank)
    ids = torch.randint(cfg.model_config().vocab_size, (args.micro_batch_size, args.seq_len + 1), generator=gen)
    t0 = time.perf_counter()
    lm_loss(train_model(ids[:, :-1]), ids[:, 1:]).backward()
    params = [p for p in model.parameters()]
    row = {"rank": info.rank, "param_bytes": _bytes(params),
           "grad_bytes": _bytes(p.grad for p in params if p.grad is not None)}
    optimizer.step()
    method.on_step_end(1, model, optimizer)
    row.update(state_bytes=state_bytes(optimizer), step_s=time.perf_counter() - t0,
               peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    rows: list = [None] * info.world
    if info.distributed:
        torch_dist.all_gather_object(rows, row)
    else:
        rows = [row]
    if info.is_main:
        result = {"model": args.model, "method": args.method, "dist": args.dist, "world": info.world,
                  "seq_len": args.seq_len, "micro_batch_size": args.micro_batch_size, "torch": torch.__version__,
                  "ranks": rows}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        for r in rows:
            print(f"{args.method} {args.dist} rank {r['rank']}: params {r['param_bytes'] / 2**20:.1f} MiB, grads "
                  f"{r['grad_bytes'] / 2**20:.1f} MiB, state {r['state_bytes'] / 2**20:.1f} MiB, peak RSS "
                  f"{r['peak_rss_mib']:.0f} MiB")
    dist.teardown()


if __name__ == "__main__":
    main()
