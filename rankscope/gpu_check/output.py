"""The gpu-check result: one JSON (machine-readable, read back by the study's cost estimate) and a table.

The JSON's ``throughput`` rows are ``{method, model, status, tokens_per_s, mfu, peak_mib, ...}``;
:func:`measured_mfu` is how other code reads an MFU back out of it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

SCHEMA = "rankscope.gpu_check/1"


def write_json(path: str | Path, result: dict[str, Any]) -> Path:
    """Atomic write (temp name, then rename) with the schema tag, so a killed check never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"schema": SCHEMA, **result}, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


def read_json(path: str | Path) -> dict[str, Any]:
    from rankscope.errors import UserError

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read gpu-check JSON {path}: {exc}. Pass the file `make gpu-check` wrote "
                        f"(gpu_check/gpu_check.json by default).") from None
    if data.get("schema") != SCHEMA:
        raise UserError(f"{path} is not a gpu-check result (schema {data.get('schema')!r}, expected {SCHEMA!r}); "
                        f"pass the gpu_check.json written by `make gpu-check`.")
    return data


def measured_mfu(data: dict[str, Any], method: str, model: str) -> tuple[float | None, str]:
    """MFU for (method, model) from a gpu-check result: that row, else the method at the largest measured
    model, else the median over all rows; ``(None, reason)`` when nothing was measured."""
    rows = [r for r in data.get("throughput", []) if r.get("status") == "ok" and _finite(r.get("mfu"))]
    exact = [r for r in rows if r["method"] == method and r["model"] == model]
    if exact:
        return float(exact[0]["mfu"]), f"measured ({method}, {model})"
    same = [r for r in rows if r["method"] == method]
    if same:
        r = max(same, key=lambda r: r.get("params", 0))
        return float(r["mfu"]), f"measured ({method}, {r['model']})"
    if rows:
        values = sorted(float(r["mfu"]) for r in rows)
        return values[len(values) // 2], "measured (median over methods)"
    return None, "no measured rows"


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _fmt(x: Any, spec: str) -> str:
    return format(x, spec) if _finite(x) else "-"


def format_table(result: dict[str, Any]) -> str:
    """Markdown: the device line, the check verdicts, then tokens/s, MFU and peak memory per method × model."""
    dev = result.get("device", {})
    ceiling = result.get("ceiling", {})
    lines = [f"# gpu-check: {dev.get('name', '?')} × {dev.get('count', '?')} (torch {dev.get('torch', '?')}, "
             f"CUDA {dev.get('cuda', '?')})", "",
             f"bf16 GEMM ceiling: {_fmt(ceiling.get('flops', float('nan')) / 1e12, '.1f')} TFLOP/s "
             f"({ceiling.get('shape', '-')})", "", "| check | method | ok | detail |", "|---|---|---|---|"]
    for c in result.get("checks", []):
        lines.append(f"| {c['check']} | {c.get('method', '')} | {'yes' if c['ok'] else 'NO'} | {c.get('detail', '')} |")
    lines += ["", "| method | model | status | tokens/s | MFU | peak MiB |", "|---|---|---|---|---|---|"]
    for r in result.get("throughput", []):
        lines.append(f"| {r['method']} | {r['model']} | {r['status']} | {_fmt(r.get('tokens_per_s'), ',.0f')} | "
                     f"{_fmt(r.get('mfu'), '.3f')} | {_fmt(r.get('peak_mib'), ',.0f')} |")
    lines += ["", f"total {_fmt(result.get('seconds'), '.0f')} s; all checks passed: {result.get('ok')}"]
    return "\n".join(lines) + "\n"


def write_outputs(out_dir: str | Path, result: dict[str, Any]) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    js = write_json(out_dir / "gpu_check.json", result)
    table = out_dir / "gpu_check.md"
    table.write_text(format_table(result))
    return js, table
