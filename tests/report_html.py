"""Read back what a browser would show: the tables of an HTML page, the items of a Snakemake
report (shared by the report-table and workflow tests)."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser
from pathlib import Path


class _Tables(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self.cell))
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def html_tables(text: str) -> list[list[list[str]]]:
    """Every ``<table>`` of an HTML page as rows of cell texts (header row first)."""
    parser = _Tables()
    parser.feed(text)
    return parser.tables


def report_items(report: Path) -> dict[str, dict]:
    """``{path: item}`` of a self-contained Snakemake report: each item's caption (HTML),
    mime type, job parameters and wildcards as its info panel shows them, and its content
    decoded from the embedded data URI (``content``)."""
    text = report.read_text()
    found = re.search(r'<script id="results">\s*var results = (.*?);\s*</script>', text, re.S)
    items = json.loads(found.group(1))
    for item in items.values():
        item["content"] = base64.b64decode(item["data_uri"].split(",", 1)[1])
    return items


def info_panel_bytes(item: dict) -> int:
    """Size of an item's info panel: its caption, rule, wildcards and job parameters."""
    job = item["job_properties"]
    return len((item["caption"] + job["rule"] + job["wildcards"] + job["params"]).encode())


def render_caption(
    name: str,
    params: dict | None = None,
    config: dict | None = None,
    wildcards: dict | None = None,
) -> str:
    """The report caption ``workflow/report/<name>.rst`` as Snakemake renders its Jinja template
    for a job with ``params``, ``config`` and ``wildcards`` (the reStructuredText, before it
    becomes HTML)."""
    from types import SimpleNamespace

    from jinja2 import Environment, StrictUndefined

    text = (Path(__file__).parents[1] / "workflow" / "report" / f"{name}.rst").read_text()
    env = Environment(trim_blocks=True, lstrip_blocks=True, undefined=StrictUndefined)
    snakemake = SimpleNamespace(
        params=SimpleNamespace(**(params or {})),
        config=config or {},
        wildcards=SimpleNamespace(**(wildcards or {})),
    )
    return env.from_string(text).render(snakemake=snakemake)
