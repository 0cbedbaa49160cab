"""HTML pages of the Markdown tables, the significance table and the study page, for the study's report.

Snakemake's report (`snakemake --report report.html`) shows an HTML result inline, where a Markdown file is only a
download link, so every `.md` that `sslam tables` writes gets an `.html` twin with the same content: its tables,
bold cells, markers, notes and headings rendered by Python-Markdown (`tables`, `fenced_code`). Each page stands
on its own (UTF-8, a small style sheet inside), so it also opens straight from the tables folder.
"""
from __future__ import annotations

import html
from collections.abc import Iterable
from pathlib import Path

from sslam.runtime.io import atomic_write_text

HTML_SUFFIX = ".html"
MARKDOWN_EXTENSIONS = ["tables", "fenced_code", "sane_lists"]
STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 1.5em; color: #222;
       max-width: 80em; line-height: 1.45; }
h1 { font-size: 1.35em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.95em; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.7em; }
th { background: #eef1f5; }
td:empty { border-top-color: transparent; }
tbody tr:nth-child(even) { background: #f8f9fb; }
pre { background: #f5f5f5; padding: 0.8em; overflow-x: auto; font-size: 0.9em; }
li { margin: 0.2em 0; }
"""


def title_of(text: str, default: str) -> str:
    """The first Markdown heading, else `default`."""
    for line in text.splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return default


def render_page(text: str, title: str) -> str:
    """A Markdown document -> one standalone HTML page."""
    import markdown

    body = markdown.markdown(text, extensions=MARKDOWN_EXTENSIONS, output_format="html")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def write_html(markdown_path: str | Path) -> Path:
    """DIR/NAME.md -> DIR/NAME.html (written atomically); returns the new path."""
    markdown_path = Path(markdown_path)
    text = markdown_path.read_text(encoding="utf-8")
    target = markdown_path.with_suffix(HTML_SUFFIX)
    atomic_write_text(target, render_page(text, title_of(text, markdown_path.stem)))
    return target


def html_pages(written: Iterable[str | Path]) -> list[Path]:
    """An `.html` twin of every `.md` among the files `sslam tables` wrote."""
    return [write_html(path) for path in written if Path(path).suffix == ".md"]


__all__ = ["HTML_SUFFIX", "html_pages", "render_page", "write_html"]
