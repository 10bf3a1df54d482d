"""Every registered method side by side on the 60m shapes: optimizer step time and optimizer-state memory.

For each method: its study defaults for the preset (``Config.for_preset``), the model it trains
(``prepare``: swapped layers included), its optimizer, and fixed random gradients (std 1e-3, one CPU
generator) set on every trainable parameter before each update. Five updates are timed one by one,
``optimizer.step()`` plus the method's ``on_step_end`` hook (the periodic work lives there for ReLoRA and
Low-Rank). Periods are set to 4 so the periodic event of every method lands inside the five updates:

* steady = median of updates 2 and 3 (no event; update 1 also allocates state and, for GaLore-family and
  APOLLO, computes the first projection);
* event = the update with the method's periodic work: projector refresh / new random projection at 5
  (GaLore, Fira, GoLore, APOLLO, APOLLO-Mini: counter 4), ReLoRA merge after 5, LORO exact step + state
  refresh at 4, Low-Rank re-factorisation at 4, SPAM / Stable-SPAM momentum reset at 4.

State = the live optimizer-state tensors (without ``step`` counters) after the five updates, next to
``theory_counts``. One thread (``torch.set_num_threads(1)``); wall times on a shared machine are
indicative: the columns compare methods measured back to back in one process. Run::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_methods.py             # ~3 min
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_methods.py --preset smoke --out /tmp/m.json
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from rankscope.methods.base import Schedule
from rankscope.methods.memory import memory_table
from rankscope.methods.order import in_order
from rankscope.methods.registry import available, get_method
from rankscope.models.llama import LlamaLM
from rankscope.models.presets import model_config

RESULTS = Path(__file__).parent / "results" / "methods.json"
PERIOD = 4
EVENT_OPTIONS = {  # option name of each method's period, and the update that carries the event
    "galore": ("update_proj_gap", 5), "fira": ("update_proj_gap", 5), "golore": ("update_proj_gap", 5),
    "apollo": ("update_proj_gap", 5), "apollo_mini": ("update_proj_gap", 5), "relora": ("reset_every", 5),
    "loro": ("exact_every", 4), "low_rank": ("refactor_every", 4), "spam": ("reset_every", 4),
    "stable_spam": ("reset_every", 4),
}
EXTRA = {"relora": {"rewarm": 1}, "loro": {"rewarm": 1}}


def bench_method(name: str, preset: str, steps: int = 5) -> dict:
    cls = get_method(name)
    options = dict(EXTRA.get(name, {}))
    event_step = None
    if name in EVENT_OPTIONS:
        key, event_step = EVENT_OPTIONS[name]
        options[key] = PERIOD
    known = {f.name for f in dataclasses.fields(cls.Config)}
    options = {k: v for k, v in options.items() if k in known}
    cfg = cls.Config.for_preset(preset, **options)
    method = cls(cfg, Schedule(total_steps=2 * PERIOD, warmup_steps=1))
    torch.manual_seed(0)
    model = method.prepare(LlamaLM(model_config(preset)))
    opt = method.build_optimizer(model)
    params = [p for p in model.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(p.shape, generator=gen) * 1e-3 for p in params]
    for group in opt.param_groups:
        group["lr"] = group["base_lr"]
    times = []
    for k in range(1, steps + 1):
        for p, g in zip(params, grads):
            p.grad = g.clone()
        t0 = time.perf_counter()
        opt.step()
        method.on_step_end(k, model, opt)
        times.append(time.perf_counter() - t0)
        opt.zero_grad(set_to_none=True)
    rows = {r["quantity"]: r for r in memory_table(model, opt, cls, cfg, model_config(preset))}
    state = rows["optimizer_state"]
    out = {"method": name, "trainable": rows["trainable"]["elements"], "state_elements": state["elements"],
           "state_bytes": state["bytes"], "theory_state": state["theory"], "step_s": times,
           "steady_s": statistics.median(times[1:3]), "event_step": event_step,
           "event_s": times[event_step - 1] if event_step else None, "options": options}
    del model, opt, grads, params
    gc.collect()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="60m")
    ap.add_argument("--methods", nargs="*", default=None, help="default: every registered method")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    names = in_order(args.methods or available())
    rows = []
    for name in names:
        row = bench_method(name, args.preset)
        rows.append(row)
        ev = f"{row['event_s']:.3f} s (update {row['event_step']})" if row["event_s"] is not None else "-"
        print(f"{name:<12} steady {row['steady_s']:.3f} s  event {ev:<22} state "
              f"{row['state_bytes'] / 2**20:8.1f} MiB  (theory {row['theory_state'] / 1e6:.2f} M elements, "
              f"measured {row['state_elements'] / 1e6:.2f} M)", flush=True)
    meta = {"preset": args.preset, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "machine": platform.machine(), "period": PERIOD}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
