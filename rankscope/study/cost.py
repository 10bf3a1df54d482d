"""What a study will cost before it runs: per training job tokens, FLOPs, memory and GPU-hours.

``rankscope study --preset paper-60m --dry-run [--gpu h100] [--gpu-check-json FILE]`` prints this table
after the plan. FLOPs are the closed forms of :mod:`rankscope.methods.flops` (per token plus per update);
memory is the closed-form parameter and optimizer-state count (``Method.theory_counts``) in fp32 bytes.

GPU-hours = FLOPs ÷ (MFU × FLOP/s) ÷ 3600, summed over the job's GPUs (wall hours = GPU-hours ÷ nproc):

* without a gpu-check result: the named class's dense bf16 peak from ``GPU_CLASSES`` (vendor datasheet)
  times the stated assumption ``ASSUMED_MFU``;
* with ``--gpu-check-json``: the MFU that ``make gpu-check`` measured for that method and size (or its
  nearest row, see :func:`rankscope.gpu_check.output.measured_mfu`) times the bf16 GEMM ceiling it
  measured on the same GPU, i.e. throughput as measured, not as advertised.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rankscope.config import RunConfig
from rankscope.errors import UserError

#: Dense (no sparsity) bf16 tensor-core peak, TFLOP/s, from the vendors' datasheets (SXM parts).
GPU_CLASSES: dict[str, tuple[str, float]] = {
    "h100": ("NVIDIA H100 SXM", 989.0), "h200": ("NVIDIA H200 SXM", 989.0), "b200": ("NVIDIA B200", 2250.0),
    "a100": ("NVIDIA A100 SXM", 312.0), "l40s": ("NVIDIA L40S", 362.0), "a10g": ("NVIDIA A10G", 70.0),
}
#: Stated assumption for an unmeasured GPU: a well-tuned small-LLaMA bf16 trainer reaches about 35 % of
#: the vendor peak. Replace it by a measurement (``make gpu-check``) before planning a budget on it.
ASSUMED_MFU = 0.35


@dataclass(frozen=True)
class Throughput:
    """Achieved training FLOP/s per GPU and where the figure comes from."""

    gpu: str
    peak_flops: float
    mfu: float
    source: str

    @property
    def flops(self) -> float:
        return self.peak_flops * self.mfu


def throughput(gpu: str, method: str, model: str, check: dict[str, Any] | None) -> Throughput:
    if check is not None:
        from rankscope.gpu_check.output import measured_mfu

        value, why = measured_mfu(check, method, model)
        if value is not None:
            name = check.get("device", {}).get("name", "gpu-check device")
            return Throughput(name, float(check["ceiling"]["flops"]), value, f"{why}, measured ceiling")
    key = gpu.lower()
    if key not in GPU_CLASSES:
        raise UserError(f"--gpu {gpu!r} is not a known GPU class; choose one of: {', '.join(GPU_CLASSES)} "
                        f"(or pass --gpu-check-json FILE measured on your GPU)")
    name, tflops = GPU_CLASSES[key]
    return Throughput(name, tflops * 1e12, ASSUMED_MFU, f"assumed MFU {ASSUMED_MFU:g} of the datasheet peak")


def job_cost(run: RunConfig, nproc: int, gpu: str, check: dict[str, Any] | None,
             trained_steps: int | None = None) -> dict[str, Any]:
    """One training job's tokens, FLOPs, fp32 parameter/state bytes and GPU-hours.

    ``trained_steps``: the updates the job itself performs when fewer than ``train.steps`` (a cooldown
    branch re-uses its parent's stable phase and trains only its decay).
    """
    from rankscope.guides.cost import run_estimate

    model_cfg, method_cfg = run.model_config(), run.method_config()
    t = run.train
    tokens_per_update = t.micro_batch_size * t.grad_accum * nproc * run.data.seq_len
    flops = run_estimate(run)  # the method's count plus a guide's extra passes
    steps = t.steps if trained_steps is None else trained_steps
    total = flops.run_flops(tokens_per_update, steps)
    counts = run.method_class().theory_counts(model_cfg, method_cfg)
    tp = throughput(gpu, run.method, run.model, check)
    gpu_hours = total / tp.flops / 3600.0
    return {"run": run.name, "method": run.method, "model": run.model, "tokens": steps * tokens_per_update,
            "flops": total, "flops_per_token": flops.per_token, "param_bytes": 4 * counts["params"],
            "state_bytes": 4 * counts["state"], "gpu": tp.gpu, "mfu": tp.mfu, "mfu_source": tp.source,
            "gpu_hours": gpu_hours, "wall_hours": gpu_hours / nproc, "note": flops.note}


def study_costs(runs: list[RunConfig], nproc: int, gpu: str = "h100",
                gpu_check_json: str | Path | None = None,
                planned: list[tuple[RunConfig, int]] = ()) -> list[dict[str, Any]]:
    """Cost rows of the main runs, then of ``planned`` (parity models: config, updates the job trains)."""
    check = None
    if gpu_check_json is not None:
        from rankscope.gpu_check.output import read_json

        check = read_json(gpu_check_json)
    return ([job_cost(r, nproc, gpu, check) for r in runs]
            + [job_cost(r, nproc, gpu, check, trained_steps=n) for r, n in planned])


def _si(x: float) -> str:
    for unit, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


def format_costs(rows: list[dict[str, Any]]) -> str:
    """The dry-run table: one line per job, a total, and where the MFU came from."""
    head = (f"{'job':<22}{'tokens':>10}{'FLOPs':>10}{'params MiB':>12}{'state MiB':>11}{'MFU':>7}"
            f"{'GPU-h':>9}{'wall-h':>8}")
    lines = ["cost estimate (closed-form FLOPs, fp32 memory):", head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['run']:<22}{_si(r['tokens']):>10}{_si(r['flops']):>10}{r['param_bytes'] / 2**20:>12,.1f}"
                     f"{r['state_bytes'] / 2**20:>11,.1f}{r['mfu']:>7.3f}{r['gpu_hours']:>9.2f}{r['wall_hours']:>8.2f}")
    if rows:
        lines.append(f"{'total':<22}{_si(sum(r['tokens'] for r in rows)):>10}{_si(sum(r['flops'] for r in rows)):>10}"
                     f"{'':>30}{sum(r['gpu_hours'] for r in rows):>9.2f}{sum(r['wall_hours'] for r in rows):>8.2f}")
        sources = sorted({f"{r['gpu']}: {r['mfu_source']}" for r in rows})
        lines += [f"throughput: {s}" for s in sources]
        lines += sorted({f"note: {r['note']}" for r in rows if r["note"]})
    return "\n".join(lines)


def design_summary(cfg, rows: list[dict[str, Any]]) -> str:
    """The seed design in one paragraph: runs per method × init seed × data order, and what siblings cost.

    evidence.md §6 asks for 5 init seeds × 2 data orders per method at paper scale (minimum 3 × 2): the
    line says whether the study meets that, so its price is read next to what its verdicts can claim.
    """
    sib = cfg.siblings
    n_methods, n_init = len(cfg.methods), len(cfg.seeds)
    sib_names = {cfg.run_name(m, s, d) for s in cfg.seeds for d in sib.data_seeds for m in sib.methods}
    sib_hours = sum(r["gpu_hours"] for r in rows if r["run"] in sib_names)
    total = sum(r["gpu_hours"] for r in rows)
    orders = 1 + len(sib.data_seeds)
    full = set(sib.methods) == set(cfg.methods)
    grid = (f"{n_methods} method(s) × {n_init} init seed(s) × {orders} data order(s)" if full else
            f"{n_methods} method(s) × {n_init} init seed(s), plus {len(sib.data_seeds)} data-order sibling(s) "
            f"per init seed of {', '.join(sib.methods) or 'no method'}")
    n_runs = n_methods * n_init + len(sib_names)
    if n_init >= 5 and orders >= 2 and full:
        meets = "meets the paper design (evidence.md §6: 5 init seeds × 2 data orders)"
    elif n_init >= 3 and orders >= 2 and full:
        meets = "meets the documented minimum (3 init seeds × 2 data orders; the paper design is 5 × 2)"
    else:
        meets = ("below the paper design (5 init seeds × 2 data orders, minimum 3 × 2): verdicts are "
                 "exploratory" + ("" if sib.data_seeds else "; no siblings, so every finding says 'no null'"))
    return (f"design: {grid} = {n_runs} run(s); {meets}. Siblings: {len(sib_names)} run(s), "
            f"{sib_hours:.2f} of {total:.2f} GPU-h.")
