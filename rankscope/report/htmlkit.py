"""Tiny HTML helpers: escaping, number formatting, tables, figures and the page's inline CSS.

No template engine: the report is a handful of tables and images, and building it from escaped
strings keeps it dependency-free and makes "every piece of text is escaped" easy to check.
"""

from __future__ import annotations

import html
import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any

from rankscope.report.plots_common import Figure

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       margin: 0 auto; max-width: 1300px; padding: 1rem 2rem 4rem; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2rem; }
h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2rem; margin-top: 2.2rem; }
table { border-collapse: collapse; margin: 0.6rem 0 1rem; font-size: 0.9rem; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.55rem; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1rem 0 1.6rem; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.88rem; color: #444; max-width: 1000px; }
.verdict { font-weight: 600; padding: 0.05rem 0.45rem; border-radius: 0.3rem; white-space: nowrap; }
.v-holds { background: #d8f3dc; color: #1b5e20; } .v-fails { background: #ffe0e0; color: #8e1b1b; }
.v-inconclusive { background: #fff3cd; color: #6d5200; }
.finding { border: 1px solid #ddd; border-radius: 0.4rem; padding: 0.4rem 1rem 0.6rem; margin: 0.8rem 0; }
.note, .missing { color: #666; font-size: 0.88rem; } .missing { font-style: italic; }
.summary td:first-child { font-weight: 600; }
"""


class Html(str):
    """Markup built from escaped parts (e.g. a linked metric name): ``table`` puts it into a cell as is."""


def esc(text: Any) -> str:
    """Escape anything for HTML text or attribute context."""
    return html.escape(str(text), quote=True)


def fmt(value: Any, digits: int = 4) -> str:
    """Readable number: ints with separators, floats to ``digits`` significant digits, NaN as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    if isinstance(value, numbers.Real):
        value = float(value)
        if not math.isfinite(value):
            return "–"
        if value == int(value) and abs(value) >= 1000:
            return f"{int(value):,}"
        return f"{value:.{digits}g}"
    return str(value)


def fmt_interval(lo: float, hi: float) -> str:
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return "–"
    return f"[{fmt(lo)}, {fmt(hi)}]"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], cls: str = "") -> str:
    """An escaped table; numeric cells are right-aligned and formatted with ``fmt``."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for cell in row:
            numeric = isinstance(cell, numbers.Real) and not isinstance(cell, bool)
            if isinstance(cell, Html):
                cells.append(f"<td>{cell}</td>")
                continue
            cells.append(
                f'<td class="num">{esc(fmt(cell))}</td>' if numeric else f"<td>{esc(fmt(cell))}</td>"
            )
        body.append("<tr>" + "".join(cells) + "</tr>")
    cls_attr = f' class="{esc(cls)}"' if cls else ""
    return f"<table{cls_attr}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def verdict_badge(verdict: str) -> str:
    cls = {"holds": "v-holds", "does not hold": "v-fails"}.get(verdict, "v-inconclusive")
    return f'<span class="verdict {cls}">{esc(verdict)}</span>'


def figure(fig: Figure) -> str:
    """A drawn figure as <figure data-figure=NAME>; an absent one as a short italic note."""
    if not fig.uri:
        return f'<p class="missing">Figure “{esc(fig.title)}” not drawn: {esc(fig.missing)}.</p>'
    return (
        f'<figure data-figure="{esc(fig.name)}"><img src="{esc(fig.uri)}" alt="{esc(fig.title)}">'
        f"<figcaption><b>{esc(fig.title)}.</b> {esc(fig.caption)}</figcaption></figure>"
    )


def bullet_list(items: Iterable[str], cls: str = "") -> str:
    items = list(items)
    if not items:
        return ""
    cls_attr = f' class="{esc(cls)}"' if cls else ""
    return f"<ul{cls_attr}>" + "".join(f"<li>{esc(i)}</li>" for i in items) + "</ul>"


def page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{esc(title)}</title>'
        f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n"
    )
