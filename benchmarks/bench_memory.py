"""Memory accounting per method: optimizer-state bytes vs theory, and peak RSS of one step (performance.md T3).

For every registered method (``rankscope.methods.registry.available()``) at each preset (default ``tiny`` and
``60m``), a **fresh subprocess** builds exactly what the trainer builds (``loop.build_model`` with the method's
``prepare``, then ``method.build_optimizer``), runs one training step on a random micro-batch (fp32, 8 × 256
by default: forward, token-mean loss, backward, ``optimizer.step``, ``method.on_step_end``,
``zero_grad(set_to_none=True)``) and reports

* measured optimizer state: the bytes of every tensor in ``optimizer.state`` except the per-parameter
  ``step`` counters (bookkeeping; reported separately), projectors included;
* theory: ``method_cls.theory_counts(model_cfg, config)["state"]`` elements × 4 B (fp32), methods.md §2.7;
* relative difference (target |Δ| ≤ 5 %), cross-checked against ``rankscope.methods.memory.memory_table``;
* peak RSS of the process (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) after the step, and the RSS just
  before the step (model + optimizer built, no state yet) for context.

Run::

    .venv/bin/python benchmarks/bench_memory.py          # writes benchmarks/results/memory.json (~3 min idle)
    .venv/bin/python benchmarks/bench_memory.py --presets smoke --out /tmp/m.json   # smoke
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _harness import peak_rss_bytes, rss_now_bytes, system_info, write_json  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "memory.json"
BYTES_FP32 = 4
TARGET_REL = 0.05


def worker(method: str, preset: str, batch: int, seq: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from rankscope.config import RunConfig, TrainConfig
    from rankscope.methods.memory import memory_table
    from rankscope.models.llama import lm_loss
    from rankscope.training.loop import build_model

    cfg = RunConfig(model=preset, method=method,
                    train=TrainConfig(steps=1000, micro_batch_size=batch, precision="fp32", device="cpu", seed=0))
    m = cfg.build_method()
    model, _ = build_model(cfg, m)
    opt = m.build_optimizer(model)
    model_cfg = cfg.model_config()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, model_cfg.vocab_size, (batch, seq + 1), generator=g)
    x, y = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
    rss_before = rss_now_bytes()
    peak_before = peak_rss_bytes()

    t0 = time.perf_counter()
    model.train()
    loss = lm_loss(model(x), y)
    loss.backward()
    opt.step()
    m.on_step_end(1, model, opt)
    opt.zero_grad(set_to_none=True)
    step_s = time.perf_counter() - t0

    by_key: dict[str, int] = {}
    counters = 0
    for st in opt.state.values():
        for k, v in st.items():
            if not isinstance(v, torch.Tensor):
                continue
            nbytes = v.numel() * v.element_size()
            if k == "step":
                counters += nbytes
            else:
                by_key[k] = by_key.get(k, 0) + nbytes
    measured = sum(by_key.values())
    theory = type(m).theory_counts(model_cfg, m.config)
    theory_bytes = theory["state"] * BYTES_FP32
    rows = memory_table(model, opt, type(m), m.config, model_cfg)
    row = next(r for r in rows if r["quantity"] == "optimizer_state")
    return {
        "method": method, "preset": preset, "loss": float(loss.detach()), "step_seconds": step_s,
        "state_bytes_measured": measured, "state_bytes_theory": theory_bytes,
        "rel_diff": (measured - theory_bytes) / theory_bytes,
        "state_bytes_by_key": by_key, "step_counter_bytes": counters,
        "memory_table_state_bytes": row["bytes"], "memory_table_rel_diff": row["rel_diff"],
        "theory_counts": theory,
        "params": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "rss_before_step_bytes": rss_before, "peak_rss_before_step_bytes": peak_before,
        "peak_rss_bytes": peak_rss_bytes(),
        "method_config": {k: v for k, v in m.config.__dict__.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "60m"])
    ap.add_argument("--methods", nargs="*", default=None, help="default: every registered method")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--worker", nargs=2, metavar=("METHOD", "PRESET"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        res = worker(args.worker[0], args.worker[1], args.batch, args.seq, args.threads)
        print("RESULT " + json.dumps(res, default=str))
        return

    import torch

    torch.set_num_threads(args.threads)
    from rankscope.methods.registry import available

    methods = args.methods or available()
    info = system_info()
    rows = []
    for preset in args.presets:
        for method in methods:
            cmd = [sys.executable, __file__, "--worker", method, preset, "--batch", str(args.batch),
                   "--seq", str(args.seq), "--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                print(f"{preset} {method}: worker failed ({proc.returncode})\n{proc.stderr[-3000:]}", flush=True)
                rows.append({"method": method, "preset": preset, "error": proc.stderr[-3000:]})
                continue
            r = json.loads(line[len("RESULT "):])
            rows.append(r)
            print(f"{preset:>5} {method:>9}: state {r['state_bytes_measured'] / 2**20:9.2f} MiB, theory "
                  f"{r['state_bytes_theory'] / 2**20:9.2f} MiB, diff {100 * r['rel_diff']:+.3f} %, peak RSS "
                  f"{r['peak_rss_bytes'] / 2**30:.2f} GiB (before step {r['rss_before_step_bytes'] / 2**30:.2f})",
                  flush=True)
    ok = [r for r in rows if "error" not in r]
    out = {
        "benchmark": "bench_memory", "target_rel_diff": TARGET_REL,
        "command": " ".join([".venv/bin/python"] + sys.argv),
        "settings": {"presets": args.presets, "methods": methods, "batch": args.batch, "seq": args.seq,
                     "threads": args.threads, "precision": "fp32", "bytes_per_element": BYTES_FP32},
        "system": info,
        "all_within_target": bool(ok) and len(ok) == len(rows) and all(abs(r["rel_diff"]) <= TARGET_REL for r in ok),
        "rows": rows,
    }
    write_json(args.out, out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
