"""Markdown and HTML from one list of blocks (headings, paragraphs, tables, figures).

Both documents say the same thing. The HTML page is static and self-contained apart from the
images beside it (inline CSS, no script, nothing fetched).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Sequence

__all__ = ["Block", "render_html", "render_markdown"]


@dataclass
class Block:
    """One piece of a document; ``rows`` for tables, ``src`` for images (``text`` is their caption)."""

    kind: str  # "h1" | "h2" | "h3" | "p" | "table" | "img"
    text: str = ""
    rows: Sequence[dict[str, str]] = ()
    src: str = ""


def _md_table(rows: Sequence[dict[str, str]]) -> str:
    if not rows:
        return "_no runs_\n"
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r[h].replace("|", "\\|") for h in header) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def render_markdown(blocks: Sequence[Block]) -> str:
    out = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out += ["#" * int(b.kind[1]) + " " + b.text, ""]
        elif b.kind == "p":
            out += [b.text, ""]
        elif b.kind == "table":
            out += [_md_table(b.rows)]
        elif b.kind == "img":
            out += [f"![{b.text}]({b.src})", ""]
    return "\n".join(out)


def _inline(text: str) -> str:
    """Escape, then the two markdown marks the reports use: **bold** and `code`."""
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


_CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2430; margin: 0 auto;
       max-width: 1180px; padding: 1.5em 2em 4em; background: #fff; }
h1 { font-size: 1.7em; margin-bottom: .2em; } h2 { margin-top: 2em; border-bottom: 1px solid #d8dde6; }
h3 { margin-top: 1.5em; }
p { max-width: 80em; } code { background: #f1f3f6; padding: 0 .25em; border-radius: 3px; }
.table-wrap { overflow-x: auto; margin: .6em 0 1.2em; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #d8dde6; padding: .3em .6em; text-align: left; vertical-align: top; }
th { background: #eef1f6; } tr:nth-child(even) td { background: #f8f9fb; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
figure { margin: 1em 0 1.5em; } figure img { max-width: 100%; height: auto; border: 1px solid #e3e6eb; }
figcaption { font-size: 13px; color: #586170; }
nav ul { columns: 2; font-size: 14px; }
"""

_NUMERIC = re.compile(r"^[\s\d.,±x∞—\-+e/]+(steps)?$")


def render_html(blocks: Sequence[Block], title: str) -> str:
    body, toc = [], []
    for b in blocks:
        if b.kind == "h1":
            body.append(f"<h1>{_inline(b.text)}</h1>")
        elif b.kind in ("h2", "h3"):
            anchor = f"s{len(toc)}"
            if b.kind == "h2":
                toc.append(f'<li><a href="#{anchor}">{_inline(b.text)}</a></li>')
            else:
                toc.append("")
            body.append(f'<{b.kind} id="{anchor}">{_inline(b.text)}</{b.kind}>')
        elif b.kind == "p":
            body.append(f"<p>{_inline(b.text)}</p>")
        elif b.kind == "table":
            if not b.rows:
                body.append("<p><em>no runs</em></p>")
                continue
            header = list(b.rows[0])
            head = "".join(f'<th scope="col">{html.escape(h)}</th>' for h in header)
            lines = []
            for r in b.rows:
                cells = "".join(
                    f'<td class="num">{html.escape(r[h])}</td>' if _NUMERIC.match(r[h]) else
                    f"<td>{html.escape(r[h])}</td>" for h in header)
                lines.append(f"<tr>{cells}</tr>")
            body.append(f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead>'
                        f'<tbody>{"".join(lines)}</tbody></table></div>')
        elif b.kind == "img":
            body.append(f'<figure><img src="{html.escape(b.src)}" alt="{html.escape(b.text)}">'
                        f"<figcaption>{_inline(b.text)}</figcaption></figure>")
    nav = f'<nav><ul>{"".join(t for t in toc if t)}</ul></nav>' if toc else ""
    if body and body[0].startswith("<h1"):
        body.insert(1, nav)
    else:
        body.insert(0, nav)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")
