"""Line charts as inline SVG (no JavaScript, nothing loaded from the network)."""

import math
from collections.abc import Mapping, Sequence
from html import escape

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


def line_chart(title: str, x: Sequence[float], series: Mapping[str, Sequence[float]],
               width: int = 520, height: int = 260) -> str:
    """One chart with a polyline per series (NaN points skipped) and a legend."""
    left, right, top, bottom = 48, 10, 24, 30
    values = [v for ys in series.values() for v in ys if math.isfinite(v)]
    if not x or not values:
        return f'<p class="muted">{escape(title)}: no data yet</p>'
    x_min, x_max = min(x), max(x)
    y_min, y_max = min(0.0, min(values)), max(values)
    x_span, y_span = (x_max - x_min) or 1.0, (y_max - y_min) or 1.0

    def point(xv: float, yv: float) -> str:
        px = left + (xv - x_min) / x_span * (width - left - right)
        py = height - bottom - (yv - y_min) / y_span * (height - top - bottom)
        return f"{px:.1f},{py:.1f}"

    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'role="img" aria-label="{escape(title)}">',
             f'<text x="{left}" y="16" class="chart-title">{escape(title)}</text>',
             f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" class="axis"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" class="axis"/>',
             f'<text x="{left - 4}" y="{top + 4}" text-anchor="end" class="tick">{y_max:.3g}</text>',
             f'<text x="{left - 4}" y="{height - bottom}" text-anchor="end" class="tick">{y_min:.3g}</text>',
             f'<text x="{left}" y="{height - 12}" class="tick">epoch {x_min:g}</text>',
             f'<text x="{width - right}" y="{height - 12}" text-anchor="end" class="tick">{x_max:g}</text>']
    for number, (name, ys) in enumerate(series.items()):
        colour = PALETTE[number % len(PALETTE)]
        points = " ".join(point(xv, yv) for xv, yv in zip(x, ys, strict=False) if math.isfinite(yv))
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}" '
                     f'data-series="{escape(name)}"/>')
        parts.append(f'<text x="{width - right - 4}" y="{top + 14 * (number + 1)}" text-anchor="end" '
                     f'fill="{colour}" class="legend">{escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)
