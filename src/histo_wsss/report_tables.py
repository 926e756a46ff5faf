"""The workflow's CSV and JSON results as self-contained HTML tables for the Snakemake report.

Snakemake's report shows an HTML item on screen (in a frame) but only offers other files for
download, so every table the report holds is rendered here: a page with the table, numbers to
4 decimals, empty cells where a value is missing or undefined, the source file's name, and a
header that sorts the rows (a few lines of inline script, nothing fetched) when there are many.
A JSON result becomes one table with a row per metric and a column per split (:func:`json_table`),
and so does a short, wide CSV such as the metrics table (:func:`turned`). The first column stays
in view when a wide table scrolls sideways.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from histo_wsss.io import atomic_path

#: Keys of a JSON result that name a split: they become the table's columns.
SPLITS = ("train", "val", "test", "all")
#: Tables with more rows than this get sortable columns.
SORTABLE_ROWS = 10
#: A CSV with at most this many rows and more columns than :data:`WIDE_COLUMNS` is shown turned
#: (one row per column, one column per row: e.g. a metric per row, a split per column), so that
#: its few rows fit the report's pane side by side instead of scrolling off it.
TURNED_ROWS = 4
WIDE_COLUMNS = 8

_STYLE = """
body { font: 13px/1.4 system-ui, sans-serif; margin: 12px; color: #1e293b; }
h1 { font-size: 15px; margin: 0 0 4px; }
p.source { color: #64748b; margin: 0 0 10px; }
dl { margin: 0 0 10px; } dt { display: inline; font-weight: 600; }
dd { display: inline; margin: 0 12px 0 4px; }
table { border-collapse: collapse; }
th, td { border: 1px solid #cbd5e1; padding: 3px 8px; white-space: nowrap; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
thead th { position: sticky; top: 0; background: #e2e8f0; }
td:first-child { position: sticky; left: 0; background: #fff; }
thead th:first-child { left: 0; z-index: 1; }
table.sortable thead th { cursor: pointer; }
table.sortable thead th::after { content: " \\2195"; color: #94a3b8; }
tbody tr:nth-child(even), tbody tr:nth-child(even) td:first-child { background: #f8fafc; }
"""

# Click a header to sort by that column (numbers as numbers, empty cells last), again to reverse.
_SORT_SCRIPT = """
document.querySelectorAll("table.sortable thead th").forEach(function (th, col) {
  th.addEventListener("click", function () {
    var body = th.closest("table").tBodies[0], rows = Array.from(body.rows);
    var dir = th.dataset.dir === "asc" ? -1 : 1;
    th.closest("tr").querySelectorAll("th").forEach(function (o) { delete o.dataset.dir; });
    th.dataset.dir = dir === 1 ? "asc" : "desc";
    rows.sort(function (a, b) {
      var x = a.cells[col].textContent, y = b.cells[col].textContent;
      if (x === "" || y === "") return (x === "") - (y === "");
      var u = parseFloat(x), v = parseFloat(y);
      return dir * (isNaN(u) || isNaN(v) ? x.localeCompare(y) : u - v);
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


def _cell(value: object) -> tuple[str, bool]:
    """A value as the table shows it, and whether it is a number (right-aligned)."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "", False
    if isinstance(value, bool):
        return str(value), False
    if isinstance(value, int):
        return str(value), True
    if isinstance(value, float):
        return f"{value:.4f}", True
    return str(value), False


def table_html(table: pd.DataFrame) -> str:
    """``table`` as an HTML ``<table>`` (index left out), sortable when it has many rows."""
    sortable = len(table) > SORTABLE_ROWS
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    rows = []
    for values in table.astype(object).itertuples(index=False):
        cells = []
        for value in values:
            text, number = _cell(value.item() if hasattr(value, "item") else value)
            klass = ' class="n"' if number else ""
            cells.append(f"<td{klass}>{html.escape(text)}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    klass = ' class="sortable"' if sortable else ""
    return (
        f"<table{klass}><thead><tr>{head}</tr></thead>\n<tbody>\n"
        + "\n".join(rows)
        + "\n</tbody></table>"
    )


def page(title: str, source: str, table: pd.DataFrame, facts: Mapping | None = None) -> str:
    """A self-contained HTML page: ``title``, the ``source`` file's name, ``facts`` (a few
    name: value pairs above the table) and the table."""
    items = "".join(
        f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(_cell(v)[0])}</dd>"
        for k, v in (facts or {}).items()
    )
    body = table_html(table)
    script = f"<script>{_SORT_SCRIPT}</script>" if 'class="sortable"' in body else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>\n"
        f'<h1>{html.escape(title)}</h1><p class="source">{html.escape(source)}</p>\n'
        + (f"<dl>{items}</dl>\n" if items else "")
        + f"{body}\n{script}</body></html>\n"
    )


def _leaves(data: object, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], object]]:
    if isinstance(data, Mapping):
        return [leaf for k, v in data.items() for leaf in _leaves(v, (*path, str(k)))]
    return [(path, data)]


def json_table(data: Mapping) -> tuple[dict, pd.DataFrame]:
    """A nested JSON result as ``(facts, table)``: the table has a row per metric (its keys
    below the split, joined by " "; e.g. ``truth pooled iou``) and a column per split (a key in
    :data:`SPLITS`, in that order); values under no split are the facts."""
    facts: dict[str, object] = {}
    rows: dict[str, dict[str, object]] = {}
    columns: list[str] = []
    for path, value in _leaves(data):
        at = next((i for i, key in enumerate(path) if key in SPLITS), None)
        if at is None:
            facts[" ".join(path)] = value
            continue
        split, metric = path[at], " ".join(path[:at] + path[at + 1 :])
        if split not in columns:
            columns.append(split)
        rows.setdefault(metric, {})[split] = value
    columns.sort(key=SPLITS.index)
    table = pd.DataFrame(
        [[metric, *(values.get(s) for s in columns)] for metric, values in rows.items()],
        columns=["metric", *columns],
        dtype=object,  # a row's counts stay integers beside another row's scores
    )
    return facts, table


def turned(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` turned: a row per column after the first, a column per row headed by that row's
    first cell, and the first column's name over the column names (``split``: the columns are
    splits)."""
    first = table.columns[0]
    body = table.astype(object).set_index(first).T  # counts stay integers beside scores
    body.columns = [str(c) for c in body.columns]
    return body.rename_axis(first).reset_index()


def write_table_page(source: str | os.PathLike, path: str | os.PathLike, title: str) -> None:
    """Render the CSV or JSON file ``source`` as :func:`page` ``title`` into ``path``
    (atomically). A ``.json`` file goes through :func:`json_table`; anything else is read as a
    CSV (:func:`turned` when short and wide), less its ``seconds`` column (a job's wall time
    per row: it differs from run to run, and the report's tables, like every other result, are
    byte-identical across runs)."""
    source = Path(source)
    if source.suffix == ".json":
        facts, table = json_table(json.loads(source.read_text()))
    else:
        facts, table = {}, pd.read_csv(source).drop(columns="seconds", errors="ignore")
        if len(table) <= TURNED_ROWS and len(table.columns) > WIDE_COLUMNS:
            table = turned(table)
    text = page(title, source.as_posix(), table, facts)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
