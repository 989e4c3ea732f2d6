"""HTML tables: one builder (``html_table``) for every table tunewise shows or writes,
and the formats of the tables it shows (``phase_table_html``: the seed's case format).

Cells are escaped, except in the columns named ``raw`` (links someone built already).
"""

from __future__ import annotations

import html
from typing import Any, Callable, Iterable, Mapping, Sequence

from tunewise import units
from tunewise.errors import is_number


def html_table(
    rows: Sequence[Mapping[str, Any]],
    *,
    columns: Iterable[str] | None = None,
    headers: Mapping[str, str] | None = None,
    cell: Callable[[str, Any], str] | None = None,
    caption: str = "",
    css_class: str | None = None,
    raw: Iterable[str] = (),
    align_numbers: bool = False,
) -> str:
    """A ``<table>`` of ``rows`` (dicts), one column per key of ``columns`` (default: every
    key in the rows, in first-seen order), headed by ``headers[key]`` (default: the key),
    each cell ``cell(key, value)`` (default: ``str``, None empty), then escaped unless its
    column is in ``raw``. ``align_numbers``: a column of numbers only gets class 'num' (right
    aligned by the caller's style), any other column none."""
    columns = list(columns) if columns is not None else list(dict.fromkeys(k for row in rows for k in row))
    headers = headers or {}
    cell = cell or _plain
    raw = set(raw)

    numeric = {k for k in columns if align_numbers
               and all(is_number(row.get(k), finite=False) for row in rows if row.get(k) is not None)}

    def attr(key: str) -> str:
        return " class='num'" if key in numeric else ""

    def td(key: str, value: Any) -> str:
        text = cell(key, value)
        return f"<td{attr(key)}>{text if key in raw else html.escape(text)}</td>"

    head = "".join(f"<th{attr(k)}>{html.escape(str(headers.get(k, k)))}</th>" for k in columns)
    body = "".join("<tr>" + "".join(td(k, row.get(k)) for k in columns) + "</tr>" for row in rows)
    cls = f' class="{css_class}"' if css_class else ""
    cap = f"<caption style='text-align:left'><b>{html.escape(caption)}</b></caption>" if caption else ""
    return f"<table{cls}>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _plain(key: str, value: Any) -> str:
    return "" if value is None else str(value)


# --- the post-mortem's phase table ---------------------------------------------------------

PHASE_COLUMNS = {  # key: (header, format)
    "study": ("study", "{}"),
    "phase": ("phase", "{}"),
    "baseline": ("before (baseline)", "{:.4f}"),
    "best": ("after (best)", "{:.4f}"),
    "trials": ("trials", "{}"),
    "time_h": ("time", units.hours),
    "gain": ("gain", "{:+.4f}"),
    "gain_pct": ("gain (%)", "{:+.1f}%"),
    "roi_per_h": ("ROI (gain per hour)", "{:+.4f}"),
}


def phase_table_html(rows: list[dict[str, Any]]) -> str:
    """A small HTML table of ``postmortem.phase_table`` rows (known columns formatted, others as is)."""
    return html_table(rows, headers={k: h for k, (h, _) in PHASE_COLUMNS.items()}, cell=_phase_cell,
                      css_class="tunewise-table")


def _phase_cell(key: str, value: Any) -> str:
    if value is None:
        return "–"
    fmt = PHASE_COLUMNS.get(key, (key, "{}"))[1]
    if callable(fmt):
        return fmt(value)
    return fmt.format(value) if isinstance(value, (int, float)) else str(value)
