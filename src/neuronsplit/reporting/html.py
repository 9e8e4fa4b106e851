"""The HTML of the report: one self-contained document, nothing fetched from anywhere.

Every text is escaped (:func:`esc`); every image is a PNG inside the page as a ``data:`` URI
(:func:`figure_img`); the style sheet is inline; there is no script. A Content-Security-Policy
``<meta>`` forbids the browser any load except ``data:`` images, so a report opened offline
shows exactly what it shows online. A report is a list of :class:`Section` (each with an
``id`` the table of contents links to, and nested sections), rendered by :func:`render`.

Examples
--------
>>> doc = render("a <b> report", [Section("summary", "Summary", [table(["x"], [["<1>"]])])])
>>> "&lt;b&gt;" in doc and "&lt;1&gt;" in doc and "<b>" not in doc
True
>>> 'id="summary"' in doc, "http" in doc.split("</head>")[1]
(True, False)
"""

from __future__ import annotations

import base64
import html
import io
import math
import numbers
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from matplotlib.figure import Figure

__all__ = [
    "Raw", "Section", "esc", "fmt", "note", "para", "table", "png_uri", "figure_img",
    "image_strip", "img", "svg_plot",
    "section_id", "render",
]  # fmt: skip

#: resolution of the embedded figures (small files, fast to draw, sharp enough on screen)
DPI = 80

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto;
       max-width: 1200px; padding: 1em 2em; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
h3 { margin-top: 1.6em; } h4 { margin: 1em 0 0.3em; color: #333; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 0.2em 0.5em; text-align: right; vertical-align: top; }
th { background: #f3f3f3; } td.text, th.text { text-align: left; }
tr.fail td { background: #fde8e8; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: 0.3em 0.7em;
        margin: 0.4em 0; font-size: 0.9em; }
.figures { display: flex; flex-wrap: wrap; gap: 0.8em; align-items: flex-start; }
.figures > p { flex-basis: 100%; margin: 0.2em 0; }
figure { margin: 0; } figcaption { font-size: 0.8em; color: #555; }
nav { font-size: 0.9em; } nav ul ul { display: inline; padding-left: 0.6em; }
nav ul ul li { display: inline; margin-right: 0.8em; } .muted { color: #666; font-size: 0.85em; }
"""

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


class Raw(str):
    """HTML that is already safe (built here): :func:`table` and :func:`render` keep it as is."""


def esc(value: Any) -> Raw:
    """``value`` as escaped HTML text (``Raw`` fragments pass unchanged).

    Examples
    --------
    >>> esc('<a href="x">&')
    '&lt;a href=&quot;x&quot;&gt;&amp;'
    """
    if isinstance(value, Raw):
        return value
    return Raw(html.escape(str(value), quote=True))


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: floats to ``digits`` significant digits, NaN and None as ``-``.

    Examples
    --------
    >>> fmt(0.123456), fmt(float("nan")), fmt(None), fmt((1, 2)), fmt(True)
    ('0.123', '-', '-', '1, 2', 'yes')
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    if isinstance(value, (tuple, list)):
        return ", ".join(fmt(v, digits) for v in value)
    return str(value)


def note(text: str) -> Raw:
    """A highlighted remark (why something is missing or undefined)."""
    return Raw(f'<p class="note">{esc(text)}</p>')


def para(text: str, cls: str | None = None) -> Raw:
    """A paragraph of escaped text."""
    attr = f' class="{esc(cls)}"' if cls else ""
    return Raw(f"<p{attr}>{esc(text)}</p>")


def table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], *, text_columns: int = 0,
    row_classes: Sequence[str] | None = None,
) -> Raw:  # fmt: skip
    """A table; cells are escaped (via :func:`fmt`) unless they are :class:`Raw`.

    The first ``text_columns`` columns are left-aligned (names), the others right-aligned.
    """

    def cell(tag: str, i: int, value: Any) -> str:
        cls = ' class="text"' if i < text_columns else ""
        return f"<{tag}{cls}>{value if isinstance(value, Raw) else esc(fmt(value))}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(headers))
    body = []
    for r, row in enumerate(rows):
        cls = f' class="{esc(row_classes[r])}"' if row_classes and row_classes[r] else ""
        body.append(f"<tr{cls}>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>")
    return Raw(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


def png_uri(data: bytes) -> str:
    """PNG bytes as a ``data:image/png;base64,...`` URI."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure_img(fig: Figure, caption: str = "", *, dpi: int = DPI) -> Raw:
    """``fig`` drawn as an embedded PNG inside a ``<figure>`` with an escaped caption."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    alt = esc(caption or "figure")
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return Raw(f'<figure><img src="{png_uri(buf.getvalue())}" alt="{alt}">{cap}</figure>')


def image_strip(images: Sequence[Any], *, height: int = 72, gap: int = 2) -> bytes:
    """Images side by side as PNG bytes, each scaled (nearest neighbour) to ``height`` pixels.

    ``images`` are ``(H, W)`` or ``(H, W, 3)`` arrays in [0, 1]
    (:func:`~neuronsplit.plots.as_display_image`). One PNG per row of a grid is far quicker
    than a matplotlib figure with one axes per image, and keeps small images sharp.

    Examples
    --------
    >>> png = image_strip([np.zeros((8, 8)), np.ones((8, 8, 3))], height=16)
    >>> png[:4] == b"\\x89PNG"
    True
    """
    from PIL import Image

    tiles = []
    for img in images:
        arr = np.asarray(img, dtype=np.float64)
        arr = np.repeat(arr[..., None], 3, axis=2) if arr.ndim == 2 else arr
        tile = Image.fromarray((np.clip(arr, 0, 1) * 255).round().astype(np.uint8))
        width = max(1, round(tile.width * height / tile.height))
        tiles.append(tile.resize((width, height), Image.NEAREST))
    total = sum(t.width for t in tiles) + gap * max(len(tiles) - 1, 0)
    strip = Image.new("RGB", (max(total, 1), height), (255, 255, 255))
    x = 0
    for t in tiles:
        strip.paste(t, (x, 0))
        x += t.width + gap
    buf = io.BytesIO()
    strip.save(buf, format="PNG")
    return buf.getvalue()


def img(data: bytes, alt: str) -> Raw:
    """PNG bytes as an ``<img>`` (with escaped ``alt`` text)."""
    return Raw(f'<img src="{png_uri(data)}" alt="{esc(alt)}">')


#: matplotlib's default colour cycle, for lines drawn without matplotlib
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
          "#7f7f7f", "#bcbd22", "#17becf")  # fmt: skip


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    """About ``n`` round tick values covering ``[lo, hi]``: none if an end is not finite, the
    two ends if ``hi - lo`` overflows (``math.log10`` of either would raise).

    Examples
    --------
    >>> _ticks(0.0, 1.0), _ticks(0.0, float("inf")), _ticks(-1e308, 1e308)
    ([0.0, 0.25, 0.5, 0.75, 1.0], [], [-1e+308, 1e+308])
    """
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    span = hi - lo or abs(hi) or 1.0
    if not math.isfinite(span):
        return [lo, hi]
    raw = span / n
    step = min(m * 10 ** math.floor(math.log10(raw)) for m in (1, 2, 2.5, 5, 10)
                if m * 10 ** math.floor(math.log10(raw)) >= raw)  # fmt: skip
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _finite_runs(x: Sequence[float], vals: Sequence[float]) -> list[list[tuple[float, float]]]:
    """The points of one line with finite coordinates, split where a non-finite one was left
    out (a line drawn across the gap would show values that were never there).

    Examples
    --------
    >>> _finite_runs([0, 1, 2, 3], [1.0, float("nan"), 2.0, 3.0])
    [[(0.0, 1.0)], [(2.0, 2.0), (3.0, 3.0)]]
    """
    runs: list[list[tuple[float, float]]] = [[]]
    for a, b in zip(x, vals, strict=True):
        a, b = float(a), float(b)
        if math.isfinite(a) and math.isfinite(b):
            runs[-1].append((a, b))
        elif runs[-1]:
            runs.append([])
    return [r for r in runs if r]


def svg_plot(
    x: Sequence[float], lines: Sequence[tuple[str, Sequence[float] | float]], *, title: str = "",
    xlabel: str = "", ylim: tuple[float, float] | None = None, vline: float | None = None,
    legend: bool = True, width: int = 230, height: int = 180,
) -> Raw:  # fmt: skip
    """A small line plot as inline SVG: no image to encode, a few hundred bytes, drawn in
    microseconds (a matplotlib figure takes a few hundred milliseconds).

    Points with a non-finite coordinate (inf, NaN) are left out and break their line; a line
    without a finite point is not drawn and its legend entry says so. A ``ylim`` that is not
    finite is ignored (the finite values set the range). A line given as one number is a
    vertical mark at that ``x`` in the line's colour: a point mass (the density of a value that
    never varies).

    Examples
    --------
    >>> svg = svg_plot([0, 1, 2], [("a<b", [0.0, 1.0, 4.0])], title="t", vline=1.0)
    >>> svg.startswith("<svg") and "a&lt;b" in svg and svg.count("<polyline") == 1
    True
    >>> svg = svg_plot([0, 1, 2], [("a", [0.0, float("inf"), 4.0]), ("b", [float("nan")] * 3)])
    >>> "inf" in svg or "nan" in svg, svg.count("<circle"), "b (no finite value)" in svg
    (False, 2, True)
    >>> "c (constant 1.5)" in svg_plot([0, 1, 2], [("c", 1.5)])
    True
    """
    marks = {i: float(v) for i, (_, v) in enumerate(lines) if isinstance(v, numbers.Real)}
    runs = [[] if i in marks else _finite_runs(x, v) for i, (_, v) in enumerate(lines)]  # type: ignore[arg-type]
    ys = [b for line in runs for run in line for _, b in run]
    if ylim is None or not all(math.isfinite(v) for v in ylim):
        ylim = (min(ys, default=0.0), max(ys, default=1.0))
    lo, hi = ylim
    if hi - lo < 1e-12:  # a flat line: a band around it (wide enough not to vanish in rounding)
        pad = max(0.5, abs(hi) * 1e-3)
        big = 1.7976931348623157e308  # the largest float: the band must stay finite
        lo, hi = max(lo - pad, -big), min(hi + pad, big)
    xs = [a for a in (float(v) for v in x) if math.isfinite(a)]
    x0, x1 = min(xs, default=0.0), max(xs, default=1.0)
    left, right, top, bottom = 38, 6, 18 if title else 6, 28
    pw, ph = width - left - right, height - top - bottom

    # halves: hi - lo overflows for ends near the largest float, hi / 2 - lo / 2 does not
    def px(v: float) -> float:
        return left + (v / 2 - x0 / 2) / ((x1 / 2 - x0 / 2) or 1.0) * pw

    def py(v: float) -> float:
        return top + (hi / 2 - v / 2) / (hi / 2 - lo / 2) * ph

    # inline SVG in HTML needs no xmlns: the document names no URL at all
    out = [f'<svg width="{width}" height="{height}" '
           f'font-size="9" font-family="sans-serif" role="img" aria-label="{esc(title)}">',
           f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>']  # fmt: skip
    if title:
        out.append(f'<text x="{left + pw / 2}" y="12" text-anchor="middle">{esc(title)}</text>')
    for t in _ticks(lo, hi):
        out.append(f'<text x="{left - 3}" y="{py(t) + 3:.1f}" text-anchor="end">{t:.3g}</text>')
    for t in _ticks(x0, x1, 2):
        out.append(f'<text x="{px(t):.1f}" y="{top + ph + 11}" text-anchor="middle">{t:.3g}'
                   "</text>")  # fmt: skip
    if xlabel:
        out.append(f'<text x="{left + pw / 2}" y="{height - 3}" text-anchor="middle">'
                   f"{esc(xlabel)}</text>")  # fmt: skip
    if vline is not None and math.isfinite(vline):
        out.append(f'<line x1="{px(vline):.1f}" x2="{px(vline):.1f}" y1="{top}" y2="{top + ph}" '
                   'stroke="#888" stroke-dasharray="2,2"/>')  # fmt: skip
    for i, ((name, _), line) in enumerate(zip(lines, runs, strict=True)):
        color = COLORS[i % len(COLORS)]
        if i in marks and math.isfinite(marks[i]):
            out.append(f'<line x1="{px(marks[i]):.1f}" x2="{px(marks[i]):.1f}" y1="{top}" '
                       f'y2="{top + ph}" stroke="{color}" stroke-width="1.5">'
                       f"<title>{esc(name)} = {marks[i]:.3g}</title></line>")  # fmt: skip
        for run in line:
            if len(run) == 1:  # a point between two gaps: a dot, a polyline would not show
                a, b = run[0]
                out.append(f'<circle cx="{px(a):.1f}" cy="{py(b):.1f}" r="1.5" fill="{color}">'
                           f"<title>{esc(name)}</title></circle>")  # fmt: skip
                continue
            pts = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in run)
            out.append(f'<polyline points="{pts}" fill="none" stroke="{color}" '
                       f'stroke-width="1.5"><title>{esc(name)}</title></polyline>')  # fmt: skip
        if legend:
            y = top + 10 + 10 * i
            label = name if line else f"{name} (no finite value)"
            if i in marks and math.isfinite(marks[i]):
                label = f"{name} (constant {marks[i]:.3g})"
            out.append(f'<text x="{left + 4}" y="{y}" fill="{color}">{esc(label)}</text>')
    return Raw("".join(out) + "</svg>")


def section_id(*parts: Any) -> str:
    """An HTML id from ``parts``: lower case, runs of other characters as one ``-``.

    Examples
    --------
    >>> section_id("vit", "unit", "blocks.0.mlp.fc1", 4)
    'vit-unit-blocks-0-mlp-fc1-4'
    """
    text = "-".join(str(p) for p in parts).lower()
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "section"


@dataclass
class Section:
    """One part of the report: an ``id`` (anchor), a title, HTML fragments and sub-sections."""

    id: str
    title: str
    body: list[Raw] = field(default_factory=list)
    children: list[Section] = field(default_factory=list)

    def html(self, level: int = 2) -> str:
        """The section as HTML, its title as ``<h{level}>`` and its children one level deeper."""
        h = min(level, 6)
        parts = [f'<section id="{esc(self.id)}"><h{h}>{esc(self.title)}</h{h}>']
        parts += [str(b) if isinstance(b, Raw) else para(b) for b in self.body]
        parts += [c.html(level + 1) for c in self.children]
        return "".join(parts) + "</section>\n"


def _toc(sections: Sequence[Section], depth: int) -> str:
    if depth == 0 or not sections:
        return ""
    items = "".join(
        f'<li><a href="#{esc(s.id)}">{esc(s.title)}</a>{_toc(s.children, depth - 1)}</li>'
        for s in sections
    )
    return f"<ul>{items}</ul>"


def render(title: str, sections: Sequence[Section], *, subtitle: str = "") -> str:
    """The whole document: head (charset, CSP, inline CSS), title, contents, sections."""
    sub = para(subtitle, "muted") if subtitle else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head>\n<body>"
        f'<h1 id="top">{esc(title)}</h1>{sub}'
        f'<nav id="contents"><h2>Contents</h2>{_toc(sections, 2)}</nav>\n'
        + "".join(s.html() for s in sections)
        + "</body></html>\n"
    )
