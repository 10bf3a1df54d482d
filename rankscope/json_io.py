"""Reading a JSON object the user supplied (a config or sidecar file), with errors that say how to fix it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rankscope.errors import UserError


def read_json_object(path: Path, fix: str, expected: str) -> dict[str, Any]:
    """The object in ``path``; a UserError naming the file with ``fix`` (unreadable) or ``expected`` (not an object)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); {fix}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} holds a {type(data).__name__}, expected {expected}")
    return data
