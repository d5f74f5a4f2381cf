"""Static HTML for the report: one self-contained page (inline CSS, no scripts, no CDN) that
links PNGs next to it, so the report opens offline from disk."""

import json
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any

STYLE = """
body { font-family: -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; }
h1 { border-bottom: 2px solid #2b6cb0; padding-bottom: .3em; }
h2 { margin-top: 2em; color: #2b6cb0; }
table { border-collapse: collapse; margin: .5em 0 1em; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: left; }
th { background: #edf2f7; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #ddd; margin: .5em 0; }
figure { margin: 0 0 1em; }
figcaption { font-size: 13px; color: #555; }
pre { background: #f7fafc; border: 1px solid #ddd; padding: .8em; overflow-x: auto; font-size: 12px; }
.muted { color: #777; }
.ok { color: #276749; font-weight: bold; }
.bad { color: #c53030; font-weight: bold; }
.warning { border-left: 4px solid #c53030; background: #fff5f5; padding: .3em 1em; margin: .5em 0 1em; }
"""


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f'<td class="num">{value:.3f}</td>'
    if isinstance(value, int) and not isinstance(value, bool):
        return f'<td class="num">{value}</td>'
    return f"<td>{escape('' if value is None else str(value))}</td>"


def table(rows: Iterable[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    rows = list(rows)
    if not rows:
        return '<p class="muted">nothing to show</p>'
    columns = list(columns or rows[0].keys())
    head = "".join(f"<th>{escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(row.get(c)) for c in columns) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def key_values(values: Mapping[str, Any]) -> str:
    return table([{"item": key, "value": value} for key, value in values.items()], ["item", "value"])


def figure(png: str, caption: str) -> str:
    return (f'<figure><img src="{escape(png)}" alt="{escape(caption)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def paragraph(text: str, css_class: str = "") -> str:
    attribute = f' class="{css_class}"' if css_class else ""
    return f"<p{attribute}>{escape(text)}</p>"


def warning(finding: str, reasons: Sequence[str]) -> str:
    """A highlighted finding with a bullet list under it."""
    items = "".join(f"<li>{escape(reason)}</li>" for reason in reasons)
    return f'<div class="warning"><p class="bad">{escape(finding)}</p><ul>{items}</ul></div>'


def json_block(data: Any) -> str:
    return f"<pre>{escape(json.dumps(data, indent=2, default=str, ensure_ascii=False))}</pre>"


def page(title: str, subtitle: str, sections: Sequence[tuple[str, str]]) -> str:
    """sections: (heading, already-escaped HTML body)."""
    toc = "".join(f'<li><a href="#s{i}">{escape(heading)}</a></li>' for i, (heading, _) in enumerate(sections))
    body = "".join(f'<h2 id="s{i}">{escape(heading)}</h2>\n{html}\n' for i, (heading, html) in enumerate(sections))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>"
            f'<p class="muted">{escape(subtitle)}</p><ol>{toc}</ol>\n{body}</body></html>\n')
