"""Spectra and CKA cost against their baselines and peer tools (performance.md T4, T5; protocol §8).

Run (about 3-5 minutes on 2 cores)::

    .venv/bin/python benchmarks/bench_spectra_cka.py            # writes benchmarks/results/spectra_cka.json
    .venv/bin/python benchmarks/bench_spectra_cka.py --quick    # smoke run, fewer repeats

Model: LLaMA d=256, 4 layers, vocab 32000 (~20M parameters, 30 matrices incl. embedding and lm_head),
random weights: valid for cost, not for science. Everything runs on 1 thread (LAPACK-heavy kernels are
unstable on 2, §8). Spectra candidates are timed in one process, interleaved call by call after warm-up;
CKA candidates each run in a fresh subprocess (peak RSS = ``ru_maxrss`` of that process), alternating.
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

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rankscope.models.llama import LlamaLM, ModelConfig  # noqa: E402 - after the sys.path insert

CFG = ModelConfig(vocab_size=32000, d_model=256, n_layers=4, n_heads=4, d_ff=688, max_seq_len=256)
CKA_LAYERS = ["model.embed_tokens"] + [f"model.layers.{i}" for i in range(4)]  # 5 layers, as T5


# ------------------------------------------------------------------------------------ measurement
def _busy_jiffies() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [float(v) for v in f.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return (sum(fields) - idle) / hz, sum(fields) / hz


def timed(fn) -> dict[str, float]:
    """Wall time of ``fn()`` and the share of machine CPU other processes used meanwhile (§8 item 3)."""
    b0, _ = _busy_jiffies()
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    wall, own = time.perf_counter() - t0, time.process_time() - c0
    b1, _ = _busy_jiffies()
    other = max(0.0, (b1 - b0) - own) / (wall * (os.cpu_count() or 1))
    return {"wall": wall, "other_cpu": other}


def summarise(samples: list[dict[str, float]], flag: float = 0.05) -> dict[str, float]:
    clean = [s["wall"] for s in samples if s["other_cpu"] <= flag]
    walls = [s["wall"] for s in samples]
    return {"min": min(clean or walls), "median": statistics.median(walls), "n": len(walls),
            "n_contended": len(walls) - len(clean), "min_uses_contended": not clean}


def machine_info() -> dict:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    cfg = torch.__config__.show()
    blas = "MKL" if "USE_MKL=ON" in cfg or "mkl" in cfg.lower() else ("OpenBLAS" if "openblas" in cfg.lower() else "?")
    a = torch.randn(1024, 1024)
    (a @ a)
    t = min(timed(lambda: a @ a)["wall"] for _ in range(5))
    return {"cpu": cpu, "amx": any(f.startswith("amx") for f in flags), "avx512": "avx512f" in flags,
            "torch": torch.__version__, "blas": blas, "threads": torch.get_num_threads(),
            "allocator": os.environ.get("LD_PRELOAD", "") or "glibc malloc (default)",
            "gemm_fp32_gflops_1thread": 2 * 1024**3 / t / 1e9, "loadavg_start": os.getloadavg(),
            "python": platform.python_version()}


# ------------------------------------------------------------------------------------------ spectra
def bench_spectra(calls: int, rounds: int) -> dict:
    import logging

    import weightwatcher as ww

    from rankscope.diagnostics.spectra import matrix_metrics

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    torch.manual_seed(0)
    model, model_b = LlamaLM(CFG).eval(), LlamaLM(CFG).eval()
    mats = [p.detach() for p in model.parameters() if p.ndim == 2]
    mats_b = [p.detach() for p in model_b.parameters() if p.ndim == 2]
    assert len(mats) == 30, len(mats)

    def bare(dtype):
        return lambda: [torch.linalg.svdvals(w.to(dtype)) for w in mats]

    def ours(dtype):
        return lambda: [matrix_metrics(w, dtype) for w in mats]

    def bare_dw():
        return [torch.linalg.svdvals(b - a) for a, b in zip(mats, mats_b)]

    def ours_dw():  # what update_spectra does per matrix: subtraction, metrics, relative norm
        out = []
        for a, b in zip(mats, mats_b):
            m = matrix_metrics(b - a, torch.float32)
            m["rel_fro"] = m["fro"] / float(torch.linalg.vector_norm(a))
            out.append(m)
        return out

    watcher = ww.WeightWatcher(model=model)
    cands = {
        "svdvals_fp32": bare(torch.float32), "rankscope_fp32": ours(torch.float32),
        "svdvals_fp64": bare(torch.float64), "rankscope_fp64": ours(torch.float64),
        "weightwatcher_analyze": lambda: watcher.analyze(),
        "svdvals_dw_fp32": bare_dw, "rankscope_dw_fp32": ours_dw,
    }
    for fn in cands.values():  # warm-up: 2 calls each
        fn(), fn()
    samples: dict[str, list] = {k: [] for k in cands}
    for _ in range(rounds):
        for _ in range(calls):
            for name, fn in cands.items():  # interleaved call by call
                samples[name].append(timed(fn))
    res = {k: summarise(v) for k, v in samples.items()}
    res["ratios"] = {
        f"{a}/{b}_{s}": res[a][s] / res[b][s]
        for a, b in [("rankscope_fp32", "svdvals_fp32"), ("rankscope_fp64", "svdvals_fp64"),
                     ("weightwatcher_analyze", "rankscope_fp32"), ("weightwatcher_analyze", "rankscope_fp64"),
                     ("rankscope_dw_fp32", "svdvals_dw_fp32")]
        for s in ("min", "median")
    }
    return res


# ---------------------------------------------------------------------------------------------- CKA
def _cka_inputs(n_seq: int, seq_len: int):
    torch.manual_seed(0)
    a, b = LlamaLM(CFG).eval(), LlamaLM(CFG).eval()
    ids = torch.randint(0, CFG.vocab_size, (n_seq, seq_len), generator=torch.Generator().manual_seed(1))
    return a, b, ids


def cka_worker(kind: str, n_seq: int, seq_len: int, micro: int) -> dict:
    """One measurement in this (fresh) process: wall time of the comparison and the process's peak RSS."""
    torch.set_num_threads(1)
    a, b, ids = _cka_inputs(n_seq, seq_len)
    with torch.no_grad():  # identical, small warm-up for every tool (a full forward would add a 260 MB
        a.hidden_states(ids[:1]), b.hidden_states(ids[:1])  # logits spike to everyone's peak RSS)
    if kind == "torch_cka":
        import warnings

        from torch.utils.data import DataLoader, TensorDataset
        from torch_cka import CKA

        warnings.simplefilter("ignore")

        def run():
            cka = CKA(a, b, "a", "b", CKA_LAYERS, CKA_LAYERS)
            cka.compare(DataLoader(TensorDataset(ids), batch_size=micro))
            return cka.export()["CKA"]
    else:
        from rankscope.diagnostics.activations import SimilarityAccumulator

        def run():
            acc = SimilarityAccumulator(cross=(kind == "rankscope_cross"))
            upto = len(CKA_LAYERS)
            with torch.inference_mode():
                for i in range(0, n_seq, micro):
                    hx, hy = a.hidden_states(ids[i:i + micro], upto), b.hidden_states(ids[i:i + micro], upto)
                    acc.update([h.flatten(0, 1) for h in hx], [h.flatten(0, 1) for h in hy])
            return acc.results()["act_cka"]

    t = timed(run)
    return {**t, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def bench_cka(repeats: int, n_seq: int, seq_len: int, micro: int) -> dict:
    kinds = ["rankscope_cross", "torch_cka", "rankscope_matched"]
    samples: dict[str, list] = {k: [] for k in kinds}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for _ in range(repeats):
        for kind in kinds:  # alternate fresh processes
            out = subprocess.run([sys.executable, __file__, "--cka-worker", kind, "--n-seq", str(n_seq),
                                  "--seq-len", str(seq_len), "--micro", str(micro)],
                                 check=True, capture_output=True, text=True, env=env)
            samples[kind].append(json.loads(out.stdout.strip().splitlines()[-1]))
    res = {k: {**summarise(v), "maxrss_mb_min": min(s["maxrss_mb"] for s in v),
               "maxrss_mb_median": statistics.median(s["maxrss_mb"] for s in v)} for k, v in samples.items()}
    res["ratios"] = {
        f"{k}/torch_cka_{s}": res[k][s] / res["torch_cka"][s]
        for k in ("rankscope_cross", "rankscope_matched") for s in ("min", "median", "maxrss_mb_median")
    }
    res["setup"] = {"n_seq": n_seq, "seq_len": seq_len, "micro_batch": micro, "layers": CKA_LAYERS,
                    "note": "rankscope_cross: 5x5 token-level CKA grid (fp64 sums, trunk only); "
                            "rankscope_matched: the 5 matched pairs the diagnostic reports; torch_cka: "
                            "CKA.compare, 5x5 sequence-level unbiased HSIC, full forward with autograd"}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer calls and tokens (smoke run)")
    ap.add_argument("--cka-worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--n-seq", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--micro", type=int, default=8)
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default: benchmarks/results/"
                    "spectra_cka.json; --quick writes nothing unless given)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.cka_worker:
        print(json.dumps(cka_worker(args.cka_worker, args.n_seq, args.seq_len, args.micro)))
        return
    calls, rounds, repeats = (2, 1, 1) if args.quick else (5, 3, 3)
    n_seq = 16 if args.quick else args.n_seq
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine_info(),
              "model": CFG.to_dict()}
    result["spectra"] = bench_spectra(calls, rounds)
    print(json.dumps(result["spectra"]["ratios"], indent=1))
    result["cka"] = bench_cka(repeats, n_seq, args.seq_len, args.micro)
    print(json.dumps(result["cka"]["ratios"], indent=1))
    result["machine"]["loadavg_end"] = os.getloadavg()
    out = args.out or (None if args.quick else ROOT / "benchmarks" / "results" / "spectra_cka.json")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
