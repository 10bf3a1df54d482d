"""Shared timing helpers for the benchmarks that follow performance.md §8 (bench_train, bench_memory).

* :func:`system_info` — what §8.4 asks every result to record: CPU model and flags (AMX or not), torch version,
  BLAS/LAPACK backend (parsed from ``torch.__config__.show()``), intra-op threads, allocator (``LD_PRELOAD``),
  load average.
* :class:`Interval` — wall time of a block plus the share of the machine's CPU used by *other* processes during
  it (system-wide busy time from ``/proc/stat`` minus this process's own CPU time, ÷ wall × CPUs).
* :class:`ContentionSampler` — the same quantity for intervals that are only known afterwards (e.g. the
  trainer's logged steps): a daemon thread samples the counters every ``period`` seconds against wall-clock
  time and :meth:`ContentionSampler.share` interpolates them over any ``[t0, t1]``.
* :func:`summarize` — minimum over clean intervals (contention ≤ 5 %), medians, counts.
* :func:`gemm_ceiling` — best-of-N fp32 ``torch.mm`` with a preallocated output (performance.md §1).
* :func:`write_json` — atomic, indented JSON.

``/proc/stat`` counts in jiffies (1/100 s), so a contention share over an interval of length ``w`` seconds is
uncertain by about ``0.02 / (w · CPUs)``: ±0.5 % at 2 s, ±3 % at 0.3 s on 2 CPUs.
"""

from __future__ import annotations

import bisect
import json
import os
import platform
import re
import statistics
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

CLEAN_LIMIT = 0.05  # performance.md §8.3: intervals where others used > 5 % of the machine are flagged


# --- CPU counters -------------------------------------------------------------------------------------------
def machine_busy_seconds() -> float:
    """Busy CPU seconds of the whole machine, summed over CPUs (user+nice+system+irq+softirq+steal)."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    busy = sum(vals[:8]) - vals[3] - vals[4]  # guest time is already inside user
    return busy / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds of this process (all threads) plus its finished, waited-for children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def n_cpus() -> int:
    return os.cpu_count() or 1


class Interval:
    """``with Interval() as iv: ...`` then ``iv.wall`` (s) and ``iv.contention`` (share of machine CPU)."""

    def __enter__(self) -> Interval:
        self.busy0, self.own0 = machine_busy_seconds(), own_cpu_seconds()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> bool:
        self.wall = time.perf_counter() - self.t0
        other = (machine_busy_seconds() - self.busy0) - (own_cpu_seconds() - self.own0)
        self.contention = max(0.0, other) / (max(self.wall, 1e-9) * n_cpus())
        return False


class ContentionSampler:
    """Background sampler of (wall time, machine busy s, own CPU s) for intervals known only afterwards.

    Intervals are given in ``time.time()`` seconds (the clock the trainer's metrics.jsonl uses).
    """

    def __init__(self, period: float = 0.05) -> None:
        self.period = period
        self._t: list[float] = []
        self._busy: list[float] = []
        self._own: list[float] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="contention-sampler", daemon=True)

    def _sample(self) -> None:
        t, busy, own = time.time(), machine_busy_seconds(), own_cpu_seconds()
        with self._lock:
            self._t.append(t)
            self._busy.append(busy)
            self._own.append(own)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self._sample()

    def __enter__(self) -> ContentionSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> bool:
        self._stop.set()
        self._thread.join()
        self._sample()
        return False

    def _at(self, t: float) -> tuple[float, float]:
        with self._lock:
            ts, busy, own = list(self._t), list(self._busy), list(self._own)
        i = bisect.bisect_left(ts, t)
        if i <= 0:
            return busy[0], own[0]
        if i >= len(ts):
            return busy[-1], own[-1]
        w = (t - ts[i - 1]) / max(ts[i] - ts[i - 1], 1e-9)
        return busy[i - 1] + w * (busy[i] - busy[i - 1]), own[i - 1] + w * (own[i] - own[i - 1])

    def share(self, t0: float, t1: float) -> float:
        """Share of the machine's CPU used by other processes over wall-clock ``[t0, t1]``."""
        b0, o0 = self._at(t0)
        b1, o1 = self._at(t1)
        return max(0.0, (b1 - b0) - (o1 - o0)) / (max(t1 - t0, 1e-9) * n_cpus())


# --- statistics ---------------------------------------------------------------------------------------------
def summarize(walls: Iterable[float], contentions: Iterable[float], limit: float = CLEAN_LIMIT) -> dict[str, Any]:
    """min over clean intervals (falls back to all, flagged), medians, contention range."""
    walls, contentions = list(walls), list(contentions)
    clean = [w for w, c in zip(walls, contentions) if c <= limit]
    return {
        "n": len(walls),
        "n_clean": len(clean),
        "min": min(clean) if clean else min(walls),
        "min_is_clean": bool(clean),
        "min_all": min(walls),
        "median": statistics.median(walls),
        "median_clean": statistics.median(clean) if clean else None,
        "contention_min": min(contentions),
        "contention_median": statistics.median(contentions),
        "contention_max": max(contentions),
    }


# --- environment --------------------------------------------------------------------------------------------
def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", platform.processor(), platform.machine()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return model, flags


def blas_info() -> dict[str, Any]:
    import torch

    show = torch.__config__.show()
    def grab(key: str) -> str | None:
        m = re.search(rf"{key}=([^,\s]+)", show)
        return m.group(1) if m else None
    mkl = re.search(r"Math Kernel Library Version ([^\s]+)", show)
    dnn = re.search(r"MKL-DNN v([^\s]+)", show)
    cap = re.search(r"CPU capability usage: (\S+)", show)
    return {"blas": grab("BLAS_INFO"), "lapack": grab("LAPACK_INFO"), "mkl_version": mkl.group(1) if mkl else None,
            "onednn_version": dnn.group(1) if dnn else None, "cpu_capability": cap.group(1) if cap else None}


def system_info() -> dict[str, Any]:
    import torch

    model, flags = _cpuinfo()
    return {
        "cpu_model": model,
        "cpu_count": n_cpus(),
        "amx": any(f.startswith("amx") for f in flags),
        "avx512f": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "avx2": "avx2" in flags,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        **blas_info(),
        "threads": torch.get_num_threads(),
        "allocator": os.environ.get("LD_PRELOAD") or "glibc malloc (no LD_PRELOAD)",
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "loadavg_start": list(os.getloadavg()),
        "time_start": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# --- GEMM ceiling (performance.md §1) -----------------------------------------------------------------------
def gemm_ceiling(shapes: dict[str, tuple[int, int, int]], calls: int = 20, warmup: int = 3,
                 min_block_s: float = 0.5) -> dict[str, Any]:
    """Best-of-``calls`` (at least; more until the block lasts ``min_block_s``) fp32 GFLOP/s of ``torch.mm(A[M,K], B[K,N], out=C)`` per named shape.

    Contention is recorded per shape block (one call is shorter than the /proc/stat resolution).
    """
    import torch

    out: dict[str, Any] = {}
    for name, (m, k, n) in shapes.items():
        a, b, c = torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)
        for _ in range(warmup):
            torch.mm(a, b, out=c)
        times: list[float] = []
        with Interval() as block:  # at least min_block_s long, so the /proc/stat share means something
            while len(times) < calls or sum(times) < min_block_s:
                t0 = time.perf_counter()
                torch.mm(a, b, out=c)
                times.append(time.perf_counter() - t0)
        flops = 2.0 * m * k * n
        out[name] = {"shape": [m, k, n], "gflops_best": flops / min(times) / 1e9,
                     "gflops_median": flops / statistics.median(times) / 1e9, "calls": len(times),
                     "contention": block.contention}
    return out


# --- output -------------------------------------------------------------------------------------------------
def write_json(path: str | Path, obj: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


def rss_now_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """ru_maxrss of this process (KiB on Linux) in bytes."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
