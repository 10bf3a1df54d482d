"""``make gpu-check``: its CPU parts (no-CUDA exit, GEMM ceiling, JSON/table, the check logic on the smoke
preset) run everywhere; the real thing runs under the ``gpu`` marker on a CUDA machine."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from rankscope.errors import UserError
from rankscope.gpu_check import checks
from rankscope.gpu_check.ceiling import measure_gemm_ceiling, mfu
from rankscope.gpu_check.main import main
from rankscope.gpu_check.output import SCHEMA, format_table, measured_mfu, read_json, write_outputs

CPU_SMOKE = dict(model="smoke", seq_len=64, micro_batch_size=2, precision="fp32", device="cpu", eval_tokens=1024)


def test_without_cuda_exits_0_with_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["--out", str(tmp_path / "g")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0]
    assert not (tmp_path / "g").exists()  # nothing written, nothing run


def test_ceiling_is_the_best_shape_and_counts_2mkn(one_thread):
    shapes = {"small": (32, 48, 40), "big": (128, 128, 128)}
    res = measure_gemm_ceiling(shapes, "cpu", torch.float32, calls=5, warmup=1)
    assert set(res["shapes"]) == set(shapes) and res["dtype"] == "float32"
    best = max(res["shapes"], key=lambda k: res["shapes"][k]["flops_best"])
    assert res["shape"] == best and res["flops"] == res["shapes"][best]["flops_best"]
    for name, (m, k, n) in shapes.items():
        row = res["shapes"][name]
        assert row["calls"] == 5 and row["flops_best"] == pytest.approx(2 * m * k * n / row["seconds_best"])
    assert mfu(1000.0, 3e6, 6e9) == pytest.approx(0.5)


def _result():
    return {"device": {"name": "Fake H100", "count": 1, "torch": "x", "cuda": "12"},
            "ceiling": {"flops": 7.0e14, "shape": "square 8192"}, "seconds": 12.0, "ok": True,
            "checks": [{"check": "fused_adamw", "ok": True, "detail": "fused"}],
            "throughput": [
                {"method": "galore", "model": "60m", "status": "ok", "tokens_per_s": 1e6, "mfu": 0.31, "peak_mib": 900.0,
                 "params": 58_000_000},
                {"method": "galore", "model": "350m", "status": "ok", "tokens_per_s": 2e5, "mfu": 0.42, "peak_mib": 5e3,
                 "params": 368_000_000},
                {"method": "cola", "model": "60m", "status": "ok", "tokens_per_s": 1e6, "mfu": 0.20, "peak_mib": 700.0,
                 "params": 43_000_000},
                {"method": "cola", "model": "1b", "status": "oom"}]}


def test_json_and_table_round_trip(tmp_path):
    js, md = write_outputs(tmp_path, _result())
    data = read_json(js)
    assert data["schema"] == SCHEMA and data["throughput"][0]["mfu"] == 0.31
    table = md.read_text()
    assert "Fake H100" in table and "700.0 TFLOP/s" in table
    assert "| galore | 350m | ok | 200,000 | 0.420 | 5,000 |" in table and "| cola | 1b | oom | - | - | - |" in table
    assert format_table(data) == table


def test_measured_mfu_prefers_the_exact_row_then_the_method_then_the_median():
    data = _result()
    assert measured_mfu(data, "galore", "350m") == (0.42, "measured (galore, 350m)")
    assert measured_mfu(data, "galore", "130m")[0] == 0.42  # largest measured size of the method
    assert measured_mfu(data, "relora", "60m") == (0.31, "measured (median over methods)")
    assert measured_mfu({"throughput": []}, "galore", "60m")[0] is None


def test_read_json_rejects_other_files(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"schema": "something else"}))
    with pytest.raises(UserError, match="not a gpu-check result"):
        read_json(tmp_path / "x.json")
    with pytest.raises(UserError, match="cannot read"):
        read_json(tmp_path / "missing.json")


def test_checkpoint_comparison_measures_the_relative_distance(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    w = torch.ones(4, 4)
    save_file({"w": w}, tmp_path / "a" / "model.safetensors")
    save_file({"w": w + 0.01}, tmp_path / "b" / "model.safetensors")
    exact, close, rel = checks.compare_checkpoints(tmp_path / "a", tmp_path / "b", rtol=1e-3)
    assert not exact and not close and rel == pytest.approx(0.01, rel=1e-6)
    assert checks.compare_checkpoints(tmp_path / "a", tmp_path / "a", rtol=0.0) == (True, True, 0.0)


@pytest.mark.parametrize("method", ["full_rank", "galore"])
def test_train_resume_and_analyze_checks_on_cpu(tmp_path, one_thread, method):
    """The GPU check's logic on the smoke preset on CPU: fp32 resume is bit-exact, CPU-vs-CPU tables agree."""
    got = checks.train_and_resume(method, tmp_path, steps=8, **CPU_SMOKE)
    assert [c["check"] for c in got] == ["train_60m_bf16", "resume_60m_bf16"]
    assert all(c["ok"] for c in got), got
    assert got[1]["bit_exact"] and len(got[0]["losses"]) == 8
    verdict = checks.analyze_gpu_vs_cpu(tmp_path / f"{method}_straight", tmp_path, devices=("cpu", "cpu"),
                                        n_tokens=512)
    assert verdict["ok"], verdict


# --- on a CUDA machine --------------------------------------------------------------------------------------
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@needs_cuda
def test_gpu_check_two_methods_end_to_end(tmp_path):
    rc = main(["--out", str(tmp_path), "--methods", "full_rank,galore", "--sizes", "60m"])
    data = read_json(tmp_path / "gpu_check.json")
    assert rc == 0, format_table(data)
    assert {c["check"] for c in data["checks"]} >= {"fused_adamw", "train_60m_bf16", "resume_60m_bf16",
                                                     "analyze_gpu_vs_cpu", "ddp_nccl"}
    assert all(r["status"] == "ok" and 0 < r["mfu"] < 1 for r in data["throughput"])


@pytest.mark.gpu
@needs_cuda
def test_gpu_ceiling_is_plausible():
    res = measure_gemm_ceiling({"sq": (4096, 4096, 4096)}, "cuda", torch.bfloat16, calls=5)
    assert 1e12 < res["flops"] < 1e16
