"""Render a study's report and save a headless-Chromium screenshot of it (for docs/).

    .venv/bin/python scripts/screenshot_report.py study_out/demo docs/demo_report.png \
        --report study_out/demo/report.html --height 30000 --fit     # how docs/demo_report.png was made

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
    parser.add_argument("--fit", action="store_true",
                        help="crop the blank bottom, halve the size and use a 128-colour palette (for docs/)")
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
    if args.fit:
        _fit(Path(png))
    print(f"{report} -> {png} ({seen.figures_ok}/{seen.figures_total} figures decoded)")
    return 0


def _fit(png: Path) -> None:
    """Crop to the content, downscale 2x and quantize: a whole report in ~0.4 MB instead of ~3 MB."""
    import numpy as np
    from PIL import Image

    image = Image.open(png).convert("RGB")
    ink = np.flatnonzero(np.asarray(image.convert("L")).min(axis=1) < 250)
    bottom = int(ink.max()) + 40 if ink.size else image.height
    image = image.crop((0, 0, image.width, min(bottom, image.height)))
    image = image.resize((image.width // 2, image.height // 2), Image.LANCZOS)
    image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(png, optimize=True)


if __name__ == "__main__":
    raise SystemExit(main())
