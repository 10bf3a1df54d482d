"""The trainer's glibc setting: freed blocks are reused, not unmapped and faulted in again next step."""

import platform
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is a glibc feature")

# A training step in miniature: allocate and write 112 MiB of tensors, free them, repeat; report the fewest
# minor page faults of the later rounds (glibc's memalign padding may grow the heap for a round or two first).
PROBE = textwrap.dedent("""
    import resource, sys, torch
    from rankscope.allocator import retain_freed_memory
    applied = retain_freed_memory() if sys.argv[1] == "retain" else False
    def faults_per_round():
        out = []
        for _ in range(6):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            step = [torch.ones(n * 1024 * 1024) for n in (16, 4, 8)]  # 64 + 16 + 32 MiB, written in full
            del step
            out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        return out
    print(applied, min(faults_per_round()[2:]))
""")


def probe(mode: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout
    applied, faults = out.split()
    return applied == "True", int(faults)


def test_retained_memory_is_reused_without_page_faults():
    applied, retained = probe("retain")
    _, system = probe("system")
    assert applied
    pages = 112 * 1024 * 1024 // 4096
    assert system > pages // 2  # glibc's default: every round maps fresh pages and faults them in
    assert retained < pages // 50  # retained: later rounds reuse the pages of earlier ones


def test_retain_is_idempotent():
    from rankscope.allocator import retain_freed_memory

    assert retain_freed_memory() == retain_freed_memory()
