"""Self-contained HTML report pages: inline CSS and SVG, no script, nothing fetched."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

_STYLE = """
body { font-family: sans-serif; margin: 24px; color: #222; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f2f2f2; } td.text, th.text { text-align: left; }
tr.passed td.verdict { color: #137333; } tr.failed td.verdict { color: #b3261e; }
tr.published { font-weight: bold; background: #eef7ee; }
p.note { color: #555; font-size: 13px; max-width: 900px; }
"""


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    row_classes: Sequence[str] = (),
    text_columns: Sequence[int] = (0,),
    table_id: str = "results",
) -> str:
    """An HTML table; every cell is escaped."""

    def cell(tag: str, index: int, value: str) -> str:
        css = ' class="text"' if index in text_columns else ""
        if tag == "td" and headers[index] == "verdict":
            css = ' class="text verdict"'
        return f"<{tag}{css}>{escape(value)}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(headers))
    body = []
    for index, row in enumerate(rows):
        css = f' class="{escape(row_classes[index])}"' if index < len(row_classes) else ""
        body.append(f"<tr{css}>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>")
    rows_html = "".join(body)
    return (
        f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{rows_html}</tbody></table>'
    )


def page(title: str, sections: Sequence[str]) -> str:
    """A complete HTML document; `sections` are already-built HTML fragments."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>\n<body>\n"
        f"<h1>{escape(title)}</h1>\n" + "\n".join(sections) + "\n</body></html>\n"
    )


def note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'
