"""A self-contained HTML report: one file, inline CSS, images as data URIs.

No JavaScript, no external URLs: the file opens the same offline, in a mail
attachment or in a CI artifact viewer. Every piece of text is HTML-escaped.

    r = Report("Persona evaluation")
    r.section("Leaderboard", intro="Higher adherence is better.")
    r.table(rows, caption="per method", highlight_best={"adherence": "max", "loss": "min"})
    r.image(png_bytes, caption="steering sweep")
    r.examples(worst, caption="worst 5 by adherence")
    r.write(layout().eval_report)
"""

from __future__ import annotations

import base64
import html
import json
import math
import numbers
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .storage import write_text

MISSING = "–"  # en dash: what an absent value (None, NaN) looks like

_CSS = """
:root { --fg:#1f2328; --muted:#59636e; --line:#d1d9e0; --bg:#ffffff; --soft:#f6f8fa; --best:#dafbe1; --accent:#0969da; }
* { box-sizing: border-box; }
body { font: 15px/1.5 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: var(--fg);
       background: var(--bg); max-width: 1100px; margin: 0 auto; padding: 24px 32px 64px; }
h1 { font-size: 1.9em; margin: 0.2em 0 0.1em; }
h2 { font-size: 1.35em; margin-top: 2em; padding-bottom: 0.25em; border-bottom: 1px solid var(--line); }
p.subtitle, p.intro, figcaption, caption, .muted { color: var(--muted); }
nav.toc { background: var(--soft); border: 1px solid var(--line); border-radius: 6px; padding: 10px 18px; margin: 18px 0; }
nav.toc ol { margin: 4px 0; padding-left: 22px; }
a { color: var(--accent); text-decoration: none; }
table { border-collapse: collapse; margin: 12px 0 20px; font-size: 0.93em; }
caption { caption-side: top; text-align: left; padding-bottom: 4px; font-style: italic; }
th, td { border: 1px solid var(--line); padding: 4px 10px; vertical-align: top; }
th { background: var(--soft); text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.best { background: var(--best); font-weight: 600; }
figure { margin: 16px 0 24px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
code { background: var(--soft); padding: 0 4px; border-radius: 3px; font-size: 0.92em; }
pre { background: var(--soft); padding: 8px 10px; border-radius: 4px; white-space: pre-wrap; word-break: break-word; margin: 4px 0; }
details { border: 1px solid var(--line); border-radius: 6px; padding: 6px 12px; margin: 8px 0; }
details[open] { background: #fcfcfd; }
summary { cursor: pointer; }
summary .k { color: var(--muted); margin-left: 10px; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 4px 14px; margin: 8px 0; }
dt { color: var(--muted); font-weight: 600; }
dd { margin: 0; min-width: 0; }
.metrics { display: flex; flex-wrap: wrap; gap: 12px; margin: 12px 0 20px; }
.metric { border: 1px solid var(--line); border-radius: 6px; padding: 8px 14px; min-width: 130px; }
.metric .v { font-size: 1.4em; font-weight: 600; font-variant-numeric: tabular-nums; }
.metric .l { color: var(--muted); font-size: 0.85em; }
.turn { margin: 2px 0; }
.turn .role { font-weight: 600; color: var(--muted); margin-right: 6px; }
"""


def esc(value) -> str:
    """HTML-escape any value's text (quotes included, so it is safe in attributes)."""
    return html.escape(str(value), quote=True)


def fmt(value) -> str:
    """A value as a person wants to read it (not yet escaped).

    ``None`` and NaN → "–"; bools → yes/no; ints as they are; floats to 3
    significant digits (thousands to whole numbers with separators, very
    large or very small numbers in scientific notation); containers as JSON.
    """
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        v = float(value)
        if math.isnan(v):
            return MISSING
        if math.isinf(v):
            return "∞" if v > 0 else "−∞"
        if v == 0:
            return "0"
        if 1e3 <= abs(v) < 1e6:  # 12,346 reads better than 1.23e+04
            return f"{v:,.0f}"
        return f"{v:.3g}"  # 0.123, 45.7, 1.23e+07, 4.56e-05
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def _is_number(value) -> bool:
    """A real number that can be compared (bools and NaN are not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return not math.isnan(float(value))


_MIME = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"))


def data_uri(image: bytes) -> str:
    """``data:image/png;base64,…`` for PNG (or JPEG/GIF) bytes; anything else is an error."""
    for magic, mime in _MIME:
        if image.startswith(magic):
            return f"data:{mime};base64," + base64.b64encode(image).decode("ascii")
    raise ValueError(f"image: expected PNG (or JPEG/GIF) bytes, got something else (starts with {image[:8]!r})")


_INLINE = [
    (re.compile(r"\*\*(.+?)\*\*"), r"<strong>\1</strong>"),
    (re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])"), r"<em>\1</em>"),
]


def _inline(text: str) -> str:
    """Escape, then apply `code`, **bold** and *italic* (code spans are left alone)."""
    out = []
    for i, part in enumerate(re.split(r"(`[^`]+`)", text)):
        if i % 2:
            out.append(f"<code>{esc(part[1:-1])}</code>")
            continue
        s = esc(part)
        for pattern, repl in _INLINE:
            s = pattern.sub(repl, s)
        out.append(s)
    return "".join(out)


_BULLET = re.compile(r"^\s*[-*]\s+")


def markdownish(text: str) -> str:
    """Paragraphs split by blank lines; ``- `` / ``* `` lines become a list; inline code/bold/italic."""
    blocks = []
    for para in re.split(r"\n\s*\n", text.strip()):
        lines = [ln.rstrip() for ln in para.splitlines() if ln.strip()]
        if lines and all(_BULLET.match(ln) for ln in lines):
            items = "".join("<li>" + _inline(_BULLET.sub("", ln)) + "</li>" for ln in lines)
            blocks.append(f"<ul>{items}</ul>")
        elif lines:
            blocks.append("<p>" + "<br>\n".join(_inline(ln) for ln in lines) + "</p>")
    return "\n".join(blocks)


def _slug(title: str, taken: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"
    slug, n = base, 2
    while slug in taken:
        slug, n = f"{base}-{n}", n + 1
    taken.add(slug)
    return slug


def _columns(rows: Sequence[Mapping]) -> list[str]:
    cols: dict[str, None] = {}
    for row in rows:
        cols.update(dict.fromkeys(row))
    return list(cols)


def best_cells(rows: Sequence[Mapping], highlight_best: Mapping[str, str] | None) -> set[tuple[int, str]]:
    """(row index, column) of the best numeric value per column; ties are all best."""
    marked: set[tuple[int, str]] = set()
    for col, how in (highlight_best or {}).items():
        if how not in ("max", "min"):
            raise ValueError(f"highlight_best[{col!r}] must be 'max' or 'min', got {how!r}")
        values = [(i, float(r[col])) for i, r in enumerate(rows) if _is_number(r.get(col))]
        if not values:
            continue
        target = (max if how == "max" else min)(v for _, v in values)
        marked.update((i, col) for i, v in values if v == target)
    return marked


def _value_html(value) -> str:
    """A value inside an example: chats as turns, long text as a wrapped block."""
    if isinstance(value, list) and value and all(isinstance(t, Mapping) and "content" in t for t in value):
        return "".join(
            f'<div class="turn"><span class="role">{esc(t.get("role", "?"))}:</span>{esc(fmt(t["content"]))}</div>'
            for t in value
        )
    text = fmt(value)
    if "\n" in text or len(text) > 120:
        return f"<pre>{esc(text)}</pre>"
    return esc(text)


@dataclass
class _Section:
    title: str
    anchor: str
    blocks: list[str] = field(default_factory=list)


class Report:
    """Build an HTML report block by block; ``render()`` returns the page, ``write()`` saves it atomically.

    Blocks added before the first ``section()`` appear above the table of contents.
    Every method returns the report, so calls can be chained.
    """

    def __init__(self, title: str, subtitle: str | None = None):
        self.title = title
        self.subtitle = subtitle
        self._preamble: list[str] = []
        self._sections: list[_Section] = []
        self._anchors: set[str] = set()

    # -- building ---------------------------------------------------------
    def _add(self, block: str) -> Report:
        (self._sections[-1].blocks if self._sections else self._preamble).append(block)
        return self

    def section(self, title: str, intro: str | None = None) -> Report:
        self._sections.append(_Section(title, _slug(title, self._anchors)))
        if intro:
            self._add(f'<div class="intro muted">{markdownish(intro)}</div>')
        return self

    def text(self, paragraph: str) -> Report:
        """Markdown-ish text: blank-line paragraphs, ``- `` lists, `code`, **bold**, *italic*."""
        return self._add(markdownish(paragraph))

    def metrics(self, values: Mapping[str, object], caption: str | None = None) -> Report:
        """Headline numbers as a row of cards."""
        cards = "".join(
            f'<div class="metric"><div class="v">{esc(fmt(v))}</div><div class="l">{esc(k)}</div></div>'
            for k, v in values.items()
        )
        cap = f'<p class="muted">{esc(caption)}</p>' if caption else ""
        return self._add(f'{cap}<div class="metrics">{cards}</div>')

    def table(
        self,
        rows: Sequence[Mapping],
        caption: str | None = None,
        highlight_best: Mapping[str, str] | None = None,
        columns: Sequence[str] | None = None,
    ) -> Report:
        """A table of records; ``highlight_best={"col": "max"|"min"}`` marks the best cell(s) per column."""
        rows = list(rows)
        cols = list(columns) if columns else _columns(rows)
        missing = [c for c in (highlight_best or {}) if c not in cols]
        if missing:
            raise ValueError(f"highlight_best names columns not in the table: {missing}; columns: {cols}")
        best = best_cells(rows, highlight_best)
        head = "".join(f'<th scope="col">{esc(c)}</th>' for c in cols)
        body = []
        for i, row in enumerate(rows):
            cells = []
            for c in cols:
                v = row.get(c)
                classes = (["num"] if _is_number(v) else []) + (["best"] if (i, c) in best else [])
                attr = f' class="{" ".join(classes)}"' if classes else ""
                title = ' title="best"' if (i, c) in best else ""
                cells.append(f"<td{attr}{title}>{esc(fmt(v))}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        if not rows:
            body.append(f'<tr><td class="muted" colspan="{max(len(cols), 1)}">no rows</td></tr>')
        cap = f"<caption>{esc(caption)}</caption>" if caption else ""
        return self._add(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")

    def image(self, png: bytes, caption: str | None = None, alt: str | None = None) -> Report:
        """An image embedded as a base64 data URI (no file next to the report)."""
        alt_text = alt or caption or "figure"
        cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
        return self._add(f'<figure><img src="{data_uri(png)}" alt="{esc(alt_text)}">{cap}</figure>')

    def examples(
        self,
        rows: Iterable[Mapping],
        caption: str | None = None,
        summary_keys: Sequence[str] | None = None,
        open_first: bool = False,
    ) -> Report:
        """Records as collapsible ``<details>``: a one-line summary, every field inside.

        ``summary_keys`` picks the fields shown on the closed line; by default the
        first four short scalar fields (numbers, strings ≤ 60 chars).
        """
        items = []
        for n, row in enumerate(rows, 1):
            keys = (
                list(summary_keys)
                if summary_keys is not None
                else [
                    k
                    for k, v in row.items()
                    if v is None
                    or isinstance(v, numbers.Real)
                    or (isinstance(v, str) and len(v) <= 60 and "\n" not in v)
                ][:4]
            )
            summary = "".join(f'<span class="k">{esc(k)}: {esc(fmt(row.get(k)))}</span>' for k in keys)
            fields = "".join(f"<dt>{esc(k)}</dt><dd>{_value_html(v)}</dd>" for k, v in row.items())
            opened = " open" if open_first and n == 1 else ""
            items.append(
                f"<details{opened}><summary><strong>#{n}</strong>{summary}</summary><dl>{fields}</dl></details>"
            )
        if not items:
            items.append('<p class="muted">no examples</p>')
        cap = f'<p class="muted">{esc(caption)}</p>' if caption else ""
        return self._add(cap + "".join(items))

    # -- output -------------------------------------------------------------
    def render(self) -> str:
        toc = ""
        if self._sections:
            links = "".join(f'<li><a href="#{s.anchor}">{esc(s.title)}</a></li>' for s in self._sections)
            toc = f'<nav class="toc" aria-label="Contents"><strong>Contents</strong><ol>{links}</ol></nav>'
        sub = f'<p class="subtitle">{esc(self.subtitle)}</p>' if self.subtitle else ""
        sections = "\n".join(
            f'<section id="{s.anchor}"><h2>{esc(s.title)}</h2>\n' + "\n".join(s.blocks) + "\n</section>"
            for s in self._sections
        )
        return (
            "<!DOCTYPE html>\n"
            '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{esc(self.title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            f"<header><h1>{esc(self.title)}</h1>{sub}</header>\n"
            + "\n".join(self._preamble)
            + f"\n{toc}\n{sections}\n</body>\n</html>\n"
        )

    def write(self, path: str | Path) -> Path:
        """Write the page atomically (temp file + rename): never a half-written report."""
        path = Path(path)
        write_text(path, self.render())
        return path
