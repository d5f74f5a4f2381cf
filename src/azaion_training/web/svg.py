"""Line charts as inline SVG (no JavaScript, nothing loaded from the network)."""

import math
from collections.abc import Mapping, Sequence
from html import escape

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


def line_chart(title: str, x: Sequence[float], series: Mapping[str, Sequence[float]],
               width: int = 520, height: int = 260) -> str:
    """One chart with a polyline per series over a shared x (NaN points skipped) and a legend."""
    return _curves("chart", title, {name: (x, ys) for name, ys in series.items()}, PALETTE, width, height)


def overlay_chart(title: str, series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                  colours: Sequence[str], width: int = 520, height: int = 260) -> str:
    """Several curves with an x axis each (two runs' epochs) on one chart, a legend line per
    curve in its colour."""
    return _curves("chart curves", title, series, colours, width, height)


def _curves(css_class: str, title: str, series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
            colours: Sequence[str], width: int, height: int) -> str:
    left, right, top, bottom = 48, 10, 24, 30
    xs = [v for x, _ in series.values() for v in x if math.isfinite(v)]
    values = [v for _, ys in series.values() for v in ys if math.isfinite(v)]
    if not xs or not values:
        return f'<p class="muted">{escape(title)}: no data yet</p>'
    x_min, x_max = min(xs), max(xs)
    y_min, y_max = min(0.0, min(values)), max(values)
    x_span, y_span = (x_max - x_min) or 1.0, (y_max - y_min) or 1.0

    def point(xv: float, yv: float) -> str:
        px = left + (xv - x_min) / x_span * (width - left - right)
        py = height - bottom - (yv - y_min) / y_span * (height - top - bottom)
        return f"{px:.1f},{py:.1f}"

    parts = [f'<svg class="{css_class}" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'role="img" aria-label="{escape(title)}">',
             f'<text x="{left}" y="16" class="chart-title">{escape(title)}</text>',
             f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" class="axis"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" class="axis"/>',
             f'<text x="{left - 4}" y="{top + 4}" text-anchor="end" class="tick">{y_max:.3g}</text>',
             f'<text x="{left - 4}" y="{height - bottom}" text-anchor="end" class="tick">{y_min:.3g}</text>',
             f'<text x="{left}" y="{height - 12}" class="tick">epoch {x_min:g}</text>',
             f'<text x="{width - right}" y="{height - 12}" text-anchor="end" class="tick">{x_max:g}</text>']
    for number, (name, (x, ys)) in enumerate(series.items()):
        colour = colours[number % len(colours)]
        points = " ".join(point(xv, yv) for xv, yv in zip(x, ys, strict=False) if math.isfinite(yv))
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}" '
                     f'data-series="{escape(name)}"/>')
        parts.append(f'<text x="{width - right - 4}" y="{top + 14 * (number + 1)}" text-anchor="end" '
                     f'fill="{colour}" class="legend">{escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(title: str, labels: Sequence[str], values: Sequence[float], colours: Sequence[str],
              width: int = 520) -> str:
    """Horizontal bars around a zero line (a change: left is worse, right is better), one per
    label in its own colour."""
    if not labels:
        return f'<p class="muted">{escape(title)}: no data</p>'
    row, left, right, top = 18, 150, 60, 24
    height = top + row * len(labels) + 8
    span = max((abs(v) for v in values), default=0.0) or 1.0
    zero = left + (width - left - right) / 2
    scale = (width - left - right) / 2 / span
    parts = [f'<svg class="chart bars" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'role="img" aria-label="{escape(title)}">',
             f'<text x="4" y="16" class="chart-title">{escape(title)}</text>',
             f'<line x1="{zero:.1f}" y1="{top}" x2="{zero:.1f}" y2="{height - 4}" class="axis"/>']
    for number, (label, value, colour) in enumerate(zip(labels, values, colours, strict=True)):
        y = top + number * row
        x = zero if value >= 0 else zero + value * scale
        parts.append(f'<text x="{left - 6}" y="{y + 12}" text-anchor="end" class="tick">{escape(label)}</text>')
        parts.append(f'<rect x="{x:.1f}" y="{y + 2}" width="{max(abs(value) * scale, 1):.1f}" height="{row - 5}" '
                     f'fill="{colour}" data-label="{escape(label)}" data-value="{value:+.4f}"/>')
        parts.append(f'<text x="{width - 4}" y="{y + 12}" text-anchor="end" class="tick">{value:+.4f}</text>')
    parts.append("</svg>")
    return "".join(parts)
