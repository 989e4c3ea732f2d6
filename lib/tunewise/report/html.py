"""Executed notebooks as self-contained HTML reports to share.

The page opens from a file or an e-mail attachment with no network: nbconvert's lab
template minus everything it would fetch from a CDN, plotly.js embedded once in the
head, and every plotly output (JupyterLab's `application/vnd.plotly.v1+json`) turned
into a div that script draws, so the charts stay interactive.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter
from nbconvert.preprocessors import Preprocessor, TagRemovePreprocessor

from tunewise.atomic import write_text_atomic

PLOTLY_MIME = "application/vnd.plotly.v1+json"
TEMPLATES = Path(__file__).parent / "templates"


class PlotlyToHTML(Preprocessor):
    """Give every plotly output an HTML form that draws with the embedded plotly.js."""

    def preprocess_cell(self, cell, resources, index):
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if PLOTLY_MIME in data:
                data["text/html"] = figure_div(data.pop(PLOTLY_MIME))
        return cell, resources


def figure_div(spec: dict) -> str:
    div_id = f"tw-{uuid.uuid4().hex[:12]}"
    payload = json.dumps({"data": spec.get("data", []), "layout": spec.get("layout", {}), "config": {"responsive": True}})
    # `</` must not end the script early when a label contains "</script>".
    payload = payload.replace("</", "<\\/")
    return (
        f'<div id="{div_id}" class="tunewise-plot" style="width:100%;min-height:420px"></div>'
        f'<script type="text/javascript">(function(){{var s={payload};'
        f'Plotly.newPlot("{div_id}", s.data, s.layout, s.config);}})();</script>'
    )


def has_plotly(nb: nbformat.NotebookNode) -> bool:
    return any(PLOTLY_MIME in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def notebook_html(nb: nbformat.NotebookNode) -> str:
    from plotly.offline import get_plotlyjs

    exporter = HTMLExporter(template_name="tunewise_report", extra_template_basedirs=[str(TEMPLATES)])
    exporter.register_preprocessor(PlotlyToHTML(), enabled=True)
    # papermill's injected cell lists every parameter (~60 lines) at the top of a shared
    # page; the notebook's own parameter table says what matters. The .ipynb keeps it.
    exporter.register_preprocessor(TagRemovePreprocessor(remove_cell_tags={"injected-parameters"}), enabled=True)
    plotly_js = get_plotlyjs() if has_plotly(nb) else ""  # 4.6 MB: only where a chart needs it
    body, _ = exporter.from_notebook_node(nb, resources={"plotly_js": plotly_js})
    return body


def write_html(notebook_path: str | Path, html_path: str | Path) -> Path:
    """Render `notebook_path` to `html_path` atomically."""
    nb = nbformat.read(str(notebook_path), as_version=4)
    return write_text_atomic(Path(html_path), notebook_html(nb))


DEFAULTS_NOTE = (
    "# The notebook's committed DEFAULTS, not the values this run used: `tunewise run` injected those\n"
    "# (the 'injected-parameters' cell of the .ipynb) and the 'Run inputs' table below lists them.\n"
)


def label_defaults(notebook_path: str | Path) -> None:
    """Mark an executed notebook's parameters cell as the defaults it is, so neither the
    notebook nor its HTML report presents them as the run's values."""
    nb = nbformat.read(str(notebook_path), as_version=4)
    for cell in nb.cells:
        if "parameters" in cell.get("metadata", {}).get("tags", []) and not cell.source.startswith(DEFAULTS_NOTE):
            cell.source = DEFAULTS_NOTE + cell.source
    write_text_atomic(Path(notebook_path), nbformat.writes(nb))
