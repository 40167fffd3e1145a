"""The dashboard: one self-contained HTML file (inline CSS, plotly.js embedded once, no
network), so it works from ``file://`` or any static host (GitHub Pages, S3)."""

from __future__ import annotations

import html
from pathlib import Path

from scripts.report.tables import Table

CSS = """
body{font-family:system-ui,sans-serif;margin:2rem;max-width:1250px;color:#222}
table{border-collapse:collapse;margin:.5rem 0;font-size:.85rem}
th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:1rem}
code{background:#f6f6f6;padding:.1rem .3rem} .verdict{font-size:1.05rem;margin:.2rem 0}
details{margin:1rem 0}
"""

# Marks the page for the headless-browser test: every plot drawn, every table filled.
CHECK = """
window.addEventListener('load', function () {
  var plots = document.querySelectorAll('.plot');
  var drawn = Array.prototype.filter.call(plots, function (p) {
    return p.querySelector('.main-svg') !== null; }).length;
  var rows = document.querySelectorAll('table tbody tr').length;
  var ok = (drawn === plots.length && plots.length > 0 && rows > 0);
  document.body.setAttribute('data-rendered', ok ? 'ok' : 'broken');
  document.body.setAttribute('data-plots', drawn + '/' + plots.length);
  document.body.setAttribute('data-rows', String(rows));
});
"""


def write_dashboard(
    out: Path,
    title: str,
    command: str,
    provenance: str,
    sections: list[tuple[str, list[str], list[Table], list[Table], list[str]]],
    links: list[tuple[str, str]] | None = None,
) -> Path:
    """``sections``: (name, verdict lines, main tables, detail tables, plot divs) per group;
    ``links``: (text, relative URL) of other pages (a study's experiments)."""
    import plotly.offline

    body = []
    if links:
        items = "".join(
            f'<li><a href="{html.escape(u)}">{html.escape(t)}</a></li>' for t, u in links
        )
        body.append(f"<section><h2>Experiments</h2><ul>{items}</ul></section>")
    for name, verdicts, main, details, plots in sections:
        body.append(f"<section><h2>{html.escape(name)}</h2>")
        body += [f'<p class="verdict">{html.escape(v)}</p>' for v in verdicts]
        body += [f"<h3>{html.escape(t.title)}</h3>{t.html()}" for t in main]
        body.append(
            '<div class="plots">'
            + "".join(f'<div class="plot">{p}</div>' for p in plots)
            + "</div>"
        )
        for t in details:
            body.append(f"<details><summary>{html.escape(t.title)}</summary>{t.html()}</details>")
        body.append("</section>")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{CSS}</style>
<script>{plotly.offline.get_plotlyjs()}</script>
</head>
<body data-rendered="pending">
<h1>{html.escape(title)}</h1>
<p>Produced by <code>{html.escape(command)}</code>.</p>
<p>{html.escape(provenance)}</p>
<p>Terms: an iteration is one optimizer step; wall-clock is training time only (device
synchronised; evaluation, checkpoints and warm-up excluded); the target is an eval loss.
Intervals are mean ± sample standard deviation over seeds; a saving marked * (significant)
has intervals that do not overlap.</p>
{"".join(body)}
<script>{CHECK}</script>
</body></html>
"""
    d = out / "dashboard"
    d.mkdir(parents=True, exist_ok=True)
    path = d / "index.html"
    path.write_text(page)
    return path
