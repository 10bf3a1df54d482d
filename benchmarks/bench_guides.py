"""Step-time overhead of each guide: the guided update's wall time as a ratio to the unguided one.

For each method, one model per arm (no guide, and each registered guide with its defaults; align against a
1-update full-rank reference run of the same model and init written to a temp folder) is built from the
same init, and the arms' updates are timed side by side: in each round every arm makes one update, in an
order rotated round by round, so load on the shared machine falls on all arms alike. An update is what the
loop does: the micro-batch pass (or the guide's replacement of it), the optimizer step, the guide's
after-step work. Random token batches (one CPU generator), one thread. Reported per arm: the median and
the mean update time over the rounds after warm-up, and their ratios to the unguided arm (the mean
includes spectral's spectrum every ``every`` = 10 updates, so its mean ratio is the amortised cost). Run::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_guides.py                      # tiny, ~3 min
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_guides.py --model smoke --rounds 4 --out /tmp/g.json
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Interval, system_info, write_json  # noqa: E402

from rankscope.config import DataConfig, RunConfig, TrainConfig  # noqa: E402
from rankscope.guides.options import build_guide  # noqa: E402
from rankscope.guides.registry import available as guides  # noqa: E402
from rankscope.models.llama import lm_loss  # noqa: E402
from rankscope.training.loop import build_model, train  # noqa: E402

METHODS = ("full_rank", "galore", "sltrain", "cola")


def run_config(out: Path, name: str, method: str, model: str, steps: int, seq: int, batch: int) -> RunConfig:
    return RunConfig(name=name, out_dir=str(out), model=model, method=method, data=DataConfig(seq_len=seq),
                     train=TrainConfig(steps=steps, micro_batch_size=batch, eval_every=0, eval_tokens=1024,
                                       save_every=1, log_every=1, warmup_steps=0))


def make_arm(cfg: RunConfig, guide: str, reference: Path):
    options = {"reference": str(reference)} if guide == "align" else {}
    cfg = dataclasses.replace(cfg, guide=guide, guide_options=options)
    method = cfg.build_method()
    model, _ = build_model(cfg, method)
    optimizer = method.build_optimizer(model)
    g = build_guide(cfg)
    if g is not None:
        g.check(method)
        g.setup(model, optimizer, info=None)
    return {"guide": g, "model": model, "optimizer": optimizer, "method": method}


def update(arm, step: int, ids, labels) -> None:
    model, optimizer, g = arm["model"], arm["optimizer"], arm["guide"]

    def micro_pass(extra=None):
        loss = lm_loss(model(ids), labels)
        (loss if extra is None else loss + extra(ids, labels)).backward()
        return loss.detach()

    if g is not None:
        g.accumulate(step, micro_pass)
    else:
        micro_pass()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if g is not None:
        g.after_step(step + 1, optimizer)
    arm["method"].on_step_end(step + 1, model, optimizer)


def bench_method(method: str, args, reference: Path, out: Path) -> list[dict]:
    cfg = run_config(out, f"bench_{method}", method, args.model, args.warmup + args.rounds, args.seq, args.batch)
    if method == "cola":  # spectral needs a dense W: CoLA refuses it
        arms_names = ["none", *[g for g in guides() if g != "spectral"]]
    else:
        arms_names = ["none", *guides()]
    arms = {name: make_arm(cfg, "" if name == "none" else name, reference) for name in arms_names}
    gen = torch.Generator().manual_seed(0)
    vocab = cfg.model_config().vocab_size
    times: dict[str, list[float]] = {n: [] for n in arms}
    contention: dict[str, list[float]] = {n: [] for n in arms}
    for step in range(args.warmup + args.rounds):
        tokens = torch.randint(0, vocab, (args.batch, args.seq + 1), generator=gen)
        ids, labels = tokens[:, :-1], tokens[:, 1:]
        order = arms_names[step % len(arms_names):] + arms_names[: step % len(arms_names)]
        for name in order:
            with Interval() as iv:
                update(arms[name], step, ids, labels)
            if step >= args.warmup:
                times[name].append(iv.wall)
                contention[name].append(iv.contention)
    base_med, base_mean = statistics.median(times["none"]), statistics.mean(times["none"])
    rows = []
    for name in arms_names:
        med, mean = statistics.median(times[name]), statistics.mean(times[name])
        rows.append({"method": method, "guide": name, "median_s": med, "mean_s": mean,
                     "ratio_median": med / base_med, "ratio_mean": mean / base_mean,
                     "contention_median": statistics.median(contention[name]), "n": len(times[name])})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "guides.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        ref_cfg = run_config(Path(tmp), "reference", "full_rank", args.model, 1, args.seq, args.batch)
        train(ref_cfg, progress=False)
        rows = []
        for method in args.methods.split(","):
            rows += bench_method(method, args, ref_cfg.run_dir, Path(tmp))
    print(f"{'method':<10} {'guide':<9} {'median s':>9} {'ratio':>6} {'mean ratio':>10} {'contention':>10}")
    for r in rows:
        print(f"{r['method']:<10} {r['guide']:<9} {r['median_s']:>9.3f} {r['ratio_median']:>6.2f} "
              f"{r['ratio_mean']:>10.2f} {r['contention_median']:>10.0%}")
    write_json(args.out, {"system": system_info(), "args": vars(args), "rows": rows,
                          "seconds": time.perf_counter() - t0})
    print(f"wrote {args.out} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
