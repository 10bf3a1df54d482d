"""The package imports only its runtime dependencies, except optional extras imported lazily where used.

`make demo` runs in a venv without the test extra; scikit-learn once slipped into the eval stage that way
(issue 12). This static check keeps every other import honest in the test venv too; CI's `make smoke` proves
the main job end to end with runtime dependencies only.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Distribution name -> import name, where they differ.
IMPORT_NAME = {"pyyaml": "yaml"}
# Optional extras: imported only inside the function that needs them, which turns ImportError into a UserError
# naming the extra to install.
OPTIONAL = {"datasets", "transformers", "lm_eval", "submitit", "accelerate"}
NEVER = {"sklearn", "pytest", "galore_torch", "fira", "weightwatcher", "torch_cka", "loss_landscapes"}


def runtime_modules() -> set[str]:
    text = (ROOT / "pyproject.toml").read_text()  # no tomllib: Python 3.10 is supported
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
    deps = re.findall(r'"([^"]+)"', block)
    names = {re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].strip().lower() for d in deps}
    return {IMPORT_NAME.get(n, n.replace("-", "_")) for n in names}


def imports(path: Path) -> list[tuple[str, bool, int]]:
    """(top-level module, imported at module level?, line) for every absolute import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top_level = {id(node) for node in tree.body}
    for node in tree.body:  # `if TYPE_CHECKING:` / try blocks at module level count as module level
        if isinstance(node, (ast.If, ast.Try)):
            top_level |= {id(n) for n in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        out += [(n.split(".")[0], id(node) in top_level, node.lineno) for n in names]
    return out


def test_every_import_is_runtime_stdlib_or_a_lazy_optional_extra():
    allowed = runtime_modules() | set(sys.stdlib_module_names) | {"rankscope", "typing_extensions"}
    bad = []
    for path in sorted((ROOT / "rankscope").rglob("*.py")):
        rel = path.relative_to(ROOT)
        for mod, module_level, line in imports(path):
            if mod in allowed:
                continue
            if mod in NEVER:
                bad.append(f"{rel}:{line}: {mod} is a test-only package")
            elif mod not in OPTIONAL:
                bad.append(f"{rel}:{line}: {mod} is not a runtime dependency (pyproject.toml)")
            elif module_level:
                bad.append(f"{rel}:{line}: optional {mod} imported at module level (import it where used)")
    assert not bad, "\n".join(bad)


def test_the_check_sees_a_bad_import(tmp_path):
    bad = tmp_path / "m.py"
    bad.write_text("import os\nfrom sklearn.linear_model import X\n\ndef f():\n    import datasets\n")
    assert imports(bad) == [("os", True, 1), ("sklearn", True, 2), ("datasets", False, 5)]
    assert {"torch", "scipy", "yaml", "safetensors"} <= runtime_modules()
