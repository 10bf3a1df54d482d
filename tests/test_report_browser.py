"""The rendered report in a real headless Chromium: every figure decodes, no console errors.

Needs the distro Chromium (``apt-get install -y chromium``); skipped with that hint when absent.
A second test feeds the probe a deliberately broken page, so a silent probe cannot pass vacuously.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from helpers_report import make_synthetic_study

from rankscope.report.browser import INSTALL_HINT, check_page, find_chromium, screenshot
from rankscope.report.plots import FIGURE_NAMES
from rankscope.report.render import render_report

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        find_chromium() is None, reason=f"headless Chromium not found; install: {INSTALL_HINT}"
    ),
]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    study = make_synthetic_study(tmp_path_factory.mktemp("browser") / "demo", seeds=(0, 1))
    return render_report(study)


def test_figures_decode_without_console_errors(report: Path) -> None:
    seen = check_page(report)
    assert seen.probe_ran, "the probe script did not run; --dump-dom output changed?"
    assert seen.figure_elements == seen.figures_total == len(FIGURE_NAMES)
    assert seen.figures_ok == seen.figures_total
    assert seen.console_errors == []


def test_screenshot(report: Path, tmp_path: Path) -> None:
    png = screenshot(report, tmp_path / "shot.png", width=1400, height=4000)
    header = png.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", header[16:24]) == (1400, 4000)


def test_probe_catches_broken_images_and_errors(tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text(
        "<!DOCTYPE html><html><head><title>x</title></head><body>"
        '<figure data-figure="ok"><img src="data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAAB'
        'CAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="></figure>'
        '<figure data-figure="bad"><img src="data:image/png;base64,AAAA"></figure>'
        "<script>console.error('deliberate'); missingFunction();</script></body></html>"
    )
    seen = check_page(page)
    assert seen.probe_ran and seen.figures_total == 2 and seen.figures_ok == 1
    joined = " | ".join(seen.console_errors)
    assert "deliberate" in joined and "missingFunction" in joined


def test_guided_study_section_renders_in_the_browser(tmp_path: Path) -> None:
    """A synthetic guide study (guided arms in study.json): the section is on the page, figures still decode."""
    from helpers_guide_report import make_guided_study

    page = render_report(make_guided_study(tmp_path / "guided", seeds=(0, 1)))
    html = page.read_text()
    assert 'id="guides"' in html and "sam on galore" in html
    seen = check_page(page)
    assert seen.probe_ran and seen.figures_ok == seen.figures_total == len(FIGURE_NAMES)
    assert seen.console_errors == []
