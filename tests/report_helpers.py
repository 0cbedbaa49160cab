"""Reading the study's HTML pages back: the cells of the Markdown tables, the cells of the HTML tables, and the
HTML pages a Snakemake report embeds (as base64 data URIs)."""
from __future__ import annotations

import base64
import html.parser
import re


def markdown_table_cells(text: str) -> list[list[str]]:
    """The cells of every pipe table in a Markdown text, row by row (alignment rows left out, ** removed)."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("|") or re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", line):
            continue
        rows.append([cell.strip().replace("**", "") for cell in line.strip("|").split("|")])
    return rows


class _Cells(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.cell: list[str] | None = None
        self.title = ""
        self.pre: list[str] = []
        self._in = ""

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self.cell = []
        elif tag in ("title", "pre"):
            self._in = tag

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append("".join(self.cell).strip())
            self.cell = None
        elif tag in ("title", "pre"):
            self._in = ""

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)
        if self._in == "title":
            self.title += data
        elif self._in == "pre":
            self.pre.append(data)


def parse_page(page: str) -> _Cells:
    """A page's title, table cells (row by row, as rendered text) and preformatted text."""
    parser = _Cells()
    parser.feed(page)
    return parser


def embedded_html_pages(report: str) -> list[str]:
    """Every text/html result a Snakemake report embeds, decoded."""
    found = re.findall(r"data:text/html[^,\"']*;base64,([A-Za-z0-9+/=]+)", report)
    return [base64.b64decode(data).decode("utf-8") for data in found]
