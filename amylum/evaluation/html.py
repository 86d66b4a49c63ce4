"""Small helpers for offline HTML: escaping, embedded media, and inline SVG line charts.

Everything is embedded (data URIs, inline SVG and CSS), so a page opens from disk, in an email
or an archive, with no server and no network.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
         ".webp": "image/webp", ".bmp": "image/bmp", ".wav": "audio/wav", ".flac": "audio/flac",
         ".mp3": "audio/mpeg", ".ogg": "audio/ogg"}
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")

CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 16px}
h1{font-size:24px}h2{font-size:19px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f7f7f7;padding:8px;overflow:auto;max-height:360px;font-size:12px}
.na{color:#999;font-style:italic}.warn{color:#b00020;font-weight:600}.small{color:#666;font-size:12px}
.charts{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}.chart{border:1px solid #eee;padding:4px}
.card{border:1px solid #ddd;border-radius:6px;padding:10px;margin:10px 0}
.card img{image-rendering:pixelated;height:96px;margin-right:6px;border:1px solid #ccc}
.badge{display:inline-block;padding:0 6px;border-radius:8px;background:#eef;font-size:12px;margin-right:4px}
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def data_uri(path: str | Path) -> str | None:
    """The file as a ``data:`` URI, or None if it is missing or of an unknown type."""
    p = Path(path)
    mime = _MIME.get(p.suffix.lower())
    if mime is None or not p.is_file():
        return None
    return f"data:{mime};base64," + base64.b64encode(p.read_bytes()).decode("ascii")


def media_html(path: str | Path) -> str:
    uri = data_uri(path)
    if uri is None:
        return f'<span class="na">missing: {esc(Path(path).name)}</span>'
    if uri.startswith("data:audio"):
        return f'<audio controls src="{uri}"></audio>'
    return f'<img alt="{esc(Path(path).name)}" src="{uri}">'


def page(title: str, body: str, script: str = "") -> str:
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body>{body}{f'<script>{script}</script>' if script else ''}</body></html>")


def table(headers: list[str], rows: list[list[object]], numeric: set[int] = frozenset()) -> str:
    # A key/value table (all headers empty) gets no empty header row.
    head = "".join(f"<th>{esc(h)}</th>" for h in headers) if any(headers) else ""
    body = "".join(
        "<tr>" + "".join(f'<td{" class=num" if i in numeric else ""}>{c}</td>' for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table>{f'<tr>{head}</tr>' if head else ''}{body}</table>"


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '<span class="na">n/a</span>'
    return f"{value:.{digits}f}"


def line_chart(title: str, series: dict[str, list[tuple[float, float]]], *, width: int = 420, height: int = 240,
               y_range: tuple[float, float] | None = None) -> str:
    """An inline SVG line chart: one polyline (with point markers) per series, a legend below."""
    series = {k: sorted(v) for k, v in series.items() if v}
    if not series:
        return ""
    xs = [x for v in series.values() for x, _ in v]
    ys = [y for v in series.values() for _, y in v]
    x0, x1 = min(xs), max(xs)
    y0, y1 = y_range or (min(ys), max(ys))
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    left, right, top, bottom = 44, 10, 22, 26
    pw, ph = width - left - right, height - top - bottom
    sx = lambda x: left + (x - x0) / (x1 - x0) * pw  # noqa: E731
    sy = lambda y: top + (1 - (y - y0) / (y1 - y0)) * ph  # noqa: E731
    parts = [f'<text x="{width / 2}" y="15" text-anchor="middle" font-size="13" font-weight="600">{esc(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#ccc"/>']
    for k in range(5):
        y = y0 + (y1 - y0) * k / 4
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#eee"/>'
                     f'<text x="{left - 4}" y="{sy(y) + 4:.1f}" text-anchor="end" font-size="10">{y:.3g}</text>')
    # Few points (evaluation steps): label each; many (loss curves): first, middle, last.
    distinct = sorted(set(xs))
    for x in (distinct if len(distinct) <= 8 else (x0, (x0 + x1) / 2, x1)):
        parts.append(f'<text x="{sx(x):.1f}" y="{height - 10}" text-anchor="middle" font-size="10">{x:.0f}</text>')
    legend = []
    for i, (name, pts) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{coords}"/>')
        parts += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{color}"><title>{esc(name)}: step {x:.0f}, '
                  f'{y:.4g}</title></circle>' for x, y in pts]
        legend.append(f'<span style="color:{color}">■</span> {esc(name)}')
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
           f'aria-label="{esc(title)}">{"".join(parts)}</svg>')
    return f'<div class="chart">{svg}<div class="small">{" &nbsp; ".join(legend)}</div></div>'
