"""Loss-line benchmark (performance.md T6): rankscope's engine vs loss-landscapes ``random_line``.

A 1-D line of 21 points on a fixed batch of a ~20M LLaMA (d256, 4 layers, vocab 32000), 1 thread. The
direction build (seeded N(0,1) + filter normalisation vs loss-landscapes' uniform + filter normalisation)
is timed separately from the line. Each measurement runs in a fresh worker process (clean peak RSS), and
the two implementations are interleaved A/B/A/B, repeated ``--repeats`` times (performance.md §8).

    .venv/bin/python benchmarks/bench_landscape.py            # writes benchmarks/results/landscape.json

Goals: direction build ≥ 5× faster, line ≤ 1.0× loss-landscapes, peak RSS no higher.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
N_POINTS = 21


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) machine jiffies from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


class Interval:
    """Wall time plus the share of machine CPU used by *other* processes during it (contention)."""

    def __enter__(self):
        self.busy0, self.total0 = _cpu_jiffies()
        self.own0 = sum(os.times()[:2])
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        busy1, total1 = _cpu_jiffies()
        tick = os.sysconf("SC_CLK_TCK")
        own = (sum(os.times()[:2]) - self.own0) * tick
        self.other_share = max(0.0, (busy1 - self.busy0 - own) / max(total1 - self.total0, 1))


def worker(impl: str, batch_size: int, seq_len: int) -> dict:
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT))
    from rankscope.diagnostics.context import EvalBatch
    from rankscope.models.llama import LlamaLM, ModelConfig, lm_loss_sums

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=32000, d_model=256, n_layers=4, n_heads=4, d_ff=688, max_seq_len=seq_len)
    model = LlamaLM(cfg).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (batch_size, seq_len + 1), generator=g)
    batch = EvalBatch(ids[:, :-1].contiguous(), ids[:, 1:].contiguous(), micro_batch=batch_size)
    with torch.inference_mode():  # warm-up
        model(batch.input_ids)
        model(batch.input_ids)

    out: dict = {"impl": impl}
    if impl == "native":
        from rankscope.diagnostics.perturb import (
            live_params,
            loss_line,
            make_grid,
            model_loss_fn,
            seeded_direction,
        )

        params = live_params(model)
        with Interval() as iv:
            d = seeded_direction(params, 0, 0, filter_normalize=True, exclude_1d=False)
        out["build_s"], out["build_other"] = iv.seconds, iv.other_share
        with Interval() as iv:
            loss_line(params, [d], make_grid(0.5, N_POINTS), batch, model_loss_fn(model))
        out["line_s"], out["line_other"] = iv.seconds, iv.other_share
    else:
        import loss_landscapes as ll
        from loss_landscapes.metrics.metric import Metric
        from loss_landscapes.model_interface.model_parameters import rand_u_like
        from loss_landscapes.model_interface.model_wrapper import wrap_model

        class LMLoss(Metric):
            def __call__(self, wrapper):
                with torch.inference_mode():
                    nll, n = lm_loss_sums(wrapper.forward(batch.input_ids), batch.labels)
                return float(nll) / int(n)

        # Their direction build, as random_line does it internally (uniform, filter-normalised, scaled).
        with Interval() as iv:
            start = wrap_model(model).get_module_parameters()
            d = rand_u_like(start)
            d.filter_normalize_(start)
            d.mul_(((start.model_norm() / 10.0) / N_POINTS) / d.model_norm())
        out["build_s"], out["build_other"] = iv.seconds, iv.other_share
        del d, start
        with Interval() as iv:
            ll.random_line(model, LMLoss(), distance=10.0, steps=N_POINTS, normalization="filter", deepcopy_model=True)
        out["line_total_s"] = iv.seconds
        out["line_s"] = iv.seconds - out["build_s"]  # random_line builds its own direction inside
        out["line_other"] = iv.other_share
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def environment() -> dict:
    import torch

    torch.set_num_threads(1)
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    a = torch.randn(1024, 1024)
    a @ a
    t0 = time.perf_counter()
    for _ in range(10):
        a @ a
    gflops = 10 * 2 * 1024**3 / (time.perf_counter() - t0) / 1e9
    cfg = torch.__config__.show()
    return dict(
        cpu=cpu, amx="amx_tile" in flags, torch=torch.__version__, threads=1,
        blas="mkl" if "MKL" in cfg or "mkl" in cfg else "openblas" if "openblas" in cfg.lower() else "unknown",
        allocator=os.environ.get("LD_PRELOAD") or "glibc malloc", gemm_gflops_1thread=round(gflops, 1),
        loadavg_start=os.getloadavg(), python=platform.python_version(),
    )


def summarise(results: list[dict]) -> dict:
    def stats(impl: str, key: str) -> dict:
        vals = [r[key] for r in results if r["impl"] == impl]
        clean = [r[key] for r in results if r["impl"] == impl and r.get(key.replace("_s", "_other"), 0) <= 0.05]
        return dict(min=min(vals), median=statistics.median(vals), min_uncontended=min(clean) if clean else None)

    out = {}
    for key in ("build_s", "line_s", "peak_rss_mb"):
        nat, ll = stats("native", key), stats("ll", key)
        out[key] = dict(native=nat, loss_landscapes=ll, ratio_min=nat["min"] / ll["min"],
                        ratio_median=nat["median"] / ll["median"])
    out["build_speedup_min"] = 1.0 / out["build_s"]["ratio_min"]
    out["build_speedup_median"] = 1.0 / out["build_s"]["ratio_median"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--worker", choices=["native", "ll"])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "landscape.json")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.batch, args.seq)))
        return
    env = environment()
    results = []
    for rep in range(args.repeats):
        for impl in ("native", "ll") if rep % 2 == 0 else ("ll", "native"):
            cmd = [sys.executable, __file__, "--worker", impl, "--batch", str(args.batch), "--seq", str(args.seq)]
            res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            res["repeat"] = rep
            results.append(res)
            print(json.dumps(res), flush=True)
    report = dict(benchmark="loss line, 21 points (performance.md T6)", n_points=N_POINTS,
                  model="LLaMA d256 L4 V32000 d_ff688", batch=[args.batch, args.seq], environment=env,
                  loadavg_end=os.getloadavg(), results=results, summary=summarise(results),
                  command=f"python benchmarks/bench_landscape.py --repeats {args.repeats} --batch {args.batch} "
                          f"--seq {args.seq}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report["summary"], indent=2))


if __name__ == "__main__":
    main()
