"""Headless Chromium checks of a rendered report: figures decode, no console errors, screenshot.

Why a real browser: a report can be valid HTML and still show broken images (a truncated base64
string decodes to nothing) or log errors; only a browser notices. We drive the distro's Chromium with
command-line modes only (``--dump-dom``, ``--screenshot``), so no extra browser download, no driver and
no Python dependency. A probe script is injected into a temporary *copy* of the page (the report
itself ships no JavaScript); it records console errors and failed loads, counts decoded figure
images, and writes the results as data attributes that ``--dump-dom`` then hands back to us.
Network is blocked by a host-resolver rule, so anything that needs the network shows up as an error.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
INSTALL_HINT = "apt-get update && apt-get install -y chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--host-resolver-rules=MAP * ~NOTFOUND",
]

PROBE = """<script>(function () {
  var errors = [], root = document.documentElement;
  function note(msg) { errors.push(String(msg)); root.dataset.consoleErrors = JSON.stringify(errors); }
  var original = console.error;
  console.error = function () {
    note([].slice.call(arguments).join(" "));
    return original.apply(console, arguments);
  };
  window.addEventListener("error", function (e) {
    var t = e.target || {};
    var what = (t.tagName || "resource") + " " + String(t.src || t.href || "").slice(0, 80);
    note(e.message || ("failed to load " + what));
  }, true);
  window.addEventListener("unhandledrejection", function (e) { note("unhandled rejection: " + e.reason); });
  window.addEventListener("load", function () {
    var imgs = [].slice.call(document.querySelectorAll("figure img"));
    root.dataset.figureElements = document.querySelectorAll("figure").length;
    root.dataset.figuresTotal = imgs.length;
    root.dataset.figuresOk = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
    root.dataset.consoleErrors = JSON.stringify(errors);
    root.dataset.probeDone = "1";
  });
})();</script>"""

CONSOLE_LINE = re.compile(r":CONSOLE(?:\(\d+\))?:?\d*\]\s*(.*)")
BAD_CONSOLE = ("Uncaught", "Failed to load", "Refused", "Not allowed to load", "ERR_")


@dataclass
class PageCheck:
    """What the browser saw: figure counts, errors from the probe and from Chromium's console log."""

    figure_elements: int = 0
    figures_total: int = 0
    figures_ok: int = 0
    probe_ran: bool = False
    console_errors: list[str] = field(default_factory=list)


def find_chromium() -> str | None:
    """Path of a Chromium binary, or None (callers skip with ``INSTALL_HINT``)."""
    for path in CANDIDATES:
        if Path(path).is_file():
            return path
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError(f"Chromium not found; install it with: {INSTALL_HINT}")
    with tempfile.TemporaryDirectory(prefix="rankscope-chromium-") as profile:
        cmd = [binary, *FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"chromium exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


def _attr(dom: str, name: str) -> str | None:
    m = re.search(rf'<html[^>]*\s{re.escape(name)}="([^"]*)"', dom)
    return None if m is None else m.group(1)


def check_page(html_path: str | Path, timeout: float = 120.0) -> PageCheck:
    """Load a copy of ``html_path`` with the probe injected and report what the browser saw."""
    source = Path(html_path).read_text(encoding="utf-8")
    probed = re.sub(r"<head([^>]*)>", lambda m: m.group(0) + PROBE, source, count=1)
    if probed == source:
        probed = PROBE + source
    with tempfile.TemporaryDirectory(prefix="rankscope-probe-") as tmp:
        page = Path(tmp) / "page.html"
        page.write_text(probed, encoding="utf-8")
        proc = _run(["--virtual-time-budget=10000", "--dump-dom", page.as_uri()], timeout)
    dom = proc.stdout
    out = PageCheck(probe_ran=_attr(dom, "data-probe-done") == "1")
    for attr, key in (
        ("data-figure-elements", "figure_elements"),
        ("data-figures-total", "figures_total"),
        ("data-figures-ok", "figures_ok"),
    ):
        value = _attr(dom, attr)
        setattr(out, key, int(value) if value and value.isdigit() else 0)
    raw = _attr(dom, "data-console-errors")
    if raw:
        out.console_errors += json.loads(html.unescape(raw))
    for line in proc.stderr.splitlines():
        m = CONSOLE_LINE.search(line)
        if m and any(word in m.group(1) for word in BAD_CONSOLE):
            out.console_errors.append(m.group(1))
    return out


def screenshot(
    html_path: str | Path, png_path: str | Path, width: int = 1400, height: int = 4000, timeout: float = 120.0
) -> Path:
    """Save a PNG of the top ``width``×``height`` pixels of the page."""
    target = Path(png_path).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    _run(
        [
            f"--screenshot={target}",
            f"--window-size={width},{height}",
            "--virtual-time-budget=10000",
            Path(html_path).resolve().as_uri(),
        ],
        timeout,
    )
    if not target.is_file():
        raise RuntimeError(f"chromium did not write {target}")
    return target
