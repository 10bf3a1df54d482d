"""Tokens/s, MFU and peak CUDA memory of one method at one model size (a gpu-check row).

Random tokens, bf16 autocast, fp32 master weights, the method's own layers, optimizer and hooks. The first
``warmup`` updates (which include GaLore-style projector refreshes at counter 0) are not timed; the next
``timed`` are, between CUDA synchronisations. Peak memory is ``torch.cuda.max_memory_allocated`` over the
whole row (model, optimizer state, activations, decompositions).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from rankscope.config import DataConfig, RunConfig, TrainConfig
from rankscope.gpu_check.ceiling import mfu

#: Micro-batch per size: large enough to keep the GPU busy, small enough for 1b + AdamW on 80 GB.
MICRO_BATCH = {"60m": 64, "130m": 32, "350m": 32, "1b": 16}
SIZES = tuple(MICRO_BATCH)


def theory_bytes(method: str, model: str) -> tuple[float, int]:
    """(params + grads + optimizer state in fp32 bytes, parameter count), from the closed forms."""
    cfg = RunConfig(model=model, method=method)
    counts = cfg.method_class().theory_counts(cfg.model_config(), cfg.method_config())
    return 4.0 * (counts["params"] + counts["trainable"] + counts["state"]), counts["params"]


def throughput_row(method: str, model: str, ceiling_flops: float, seq: int = 256, warmup: int = 2,
                   timed: int = 5, micro_batch: int | None = None) -> dict[str, Any]:
    """One row ``{method, model, status, tokens_per_s, mfu, peak_mib, ...}``; OOM is a status, not an error."""
    from rankscope.methods.flops import estimate
    from rankscope.models.llama import LlamaLM, lm_loss

    mb = micro_batch or MICRO_BATCH.get(model, 8)
    cfg = RunConfig(model=model, method=method, data=DataConfig(seq_len=seq),
                    train=TrainConfig(steps=1000, micro_batch_size=mb, device="cuda", precision="bf16-autocast"))
    row: dict[str, Any] = {"method": method, "model": model, "micro_batch": mb, "seq_len": seq}
    free, _ = torch.cuda.mem_get_info()
    need, n_params = theory_bytes(method, model)
    row.update(state_bytes_theory=need, params=n_params)
    if need * 1.25 > free:  # 25 % headroom for activations and workspaces
        return {**row, "status": f"skipped: needs ~{need / 2**30:.1f} GiB for params+grads+state, "
                                 f"{free / 2**30:.1f} GiB free"}
    model_cfg, method_obj = cfg.model_config(), cfg.build_method()
    flops = estimate(method, model_cfg, method_obj.config, seq)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    net = opt = None
    try:
        torch.manual_seed(0)
        with torch.device("cuda"):
            net = method_obj.prepare(LlamaLM(model_cfg)).cuda()
        opt = method_obj.build_optimizer(net)
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * 0.1  # a mid-run LR: no warmup-from-zero, no divergence in 7 updates
        ids = torch.randint(model_cfg.vocab_size, (mb, seq + 1), device="cuda")
        trainable = [p for p in net.parameters() if p.requires_grad]
        t0 = 0.0
        for step in range(warmup + timed):
            if step == warmup:
                torch.cuda.synchronize()
                t0 = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = lm_loss(net(ids[:, :-1]), ids[:, 1:])
            loss.backward()
            if method_obj.config.grad_clip:
                torch.nn.utils.clip_grad_norm_(trainable, method_obj.config.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            method_obj.on_step_end(step + 1, net, opt)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    except torch.cuda.OutOfMemoryError:
        return {**row, "status": "oom", "peak_mib": torch.cuda.max_memory_allocated() / 2**20}
    finally:
        del net, opt
        torch.cuda.empty_cache()
    tokens = timed * mb * seq
    tok_s = tokens / seconds
    per_token = flops.per_token + flops.per_update / (mb * seq)
    return {**row, "status": "ok", "tokens_per_s": tok_s, "flops_per_token": per_token,
            "mfu": mfu(tok_s, per_token, ceiling_flops), "peak_mib": torch.cuda.max_memory_allocated() / 2**20,
            "loss": float(loss),
            "finite": bool(torch.isfinite(loss)), "flops_note": flops.note}
