"""Render a study's report and save a headless-Chromium screenshot of it (for docs/).

    .venv/bin/python scripts/screenshot_report.py out/demo_study docs/report_screenshot.png

Needs the distro Chromium: apt-get update && apt-get install -y chromium
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rankscope.report.browser import INSTALL_HINT, check_page, find_chromium, screenshot
from rankscope.report.render import render_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study_dir", type=Path, help="study folder (study.json, runs/, results/)")
    parser.add_argument("out_png", type=Path, help="where to write the PNG")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=4000)
    parser.add_argument(
        "--report",
        type=Path,
        default=None,
        help="use this existing report.html instead of rendering a fresh one",
    )
    args = parser.parse_args(argv)
    if find_chromium() is None:
        print(f"Chromium not found; install it with: {INSTALL_HINT}", file=sys.stderr)
        return 2
    report = args.report or render_report(args.study_dir)
    seen = check_page(report)
    if seen.figures_ok != seen.figures_total or seen.console_errors:
        print(
            f"warning: {seen.figures_ok}/{seen.figures_total} figures decoded; "
            f"console errors: {seen.console_errors}",
            file=sys.stderr,
        )
    png = screenshot(report, args.out_png, width=args.width, height=args.height)
    print(f"{report} -> {png} ({seen.figures_ok}/{seen.figures_total} figures decoded)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
