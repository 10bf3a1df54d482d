"""Check a finished study folder: every job done or skipped and report.html written (CI's smoke gate).

    .venv-run/bin/python scripts/check_study.py study_out/smoke

Exits 1 naming each job that is not finished (with the first line of its error). Stdlib only, so it runs
in the runtime-only venv. The study's own exit code already says "a job failed"; this second look keeps a
regression in that exit code from hiding a failure in CI.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def problems(study: Path) -> list[str]:
    status = study / "status.json"
    if not status.is_file():
        return [f"{status} is missing: the study did not start"]
    bad = [f"{j['id']}: {j['state']}: {(j.get('error') or '').strip().splitlines()[:1]}"
           for j in json.loads(status.read_text())["jobs"] if j["state"] not in ("done", "skipped")]
    if not (study / "report.html").is_file():
        bad.append(f"{study / 'report.html'} was not written")
    return bad


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: check_study.py STUDY_DIR", file=sys.stderr)
        return 2
    study = Path(sys.argv[1])
    bad = problems(study)
    for line in bad:
        print(f"study check failed: {line}", file=sys.stderr)
    if not bad:
        print(f"study {study}: every job done, report written")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
