"""The HTML report builder: self-contained, escaped, navigable, written atomically."""

from __future__ import annotations

import base64
import re
import struct
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from persona_pipeline.report import MISSING, Report, best_cells, data_uri, fmt


def tiny_png(width: int = 2, height: int = 2) -> bytes:
    """A valid RGB PNG built by hand (no plotting library needed)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


class _Collector(HTMLParser):
    """Collects tags with attributes and all text, to check structure without regexes on HTML."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self._stack: list[tuple[str, dict]] = []
        self.cells: list[tuple[dict, str]] = []  # (td attrs, td text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        self._stack.append((tag, a))
        if tag == "td":
            self.cells.append((a, ""))

    def handle_endtag(self, tag):
        while self._stack and self._stack.pop()[0] != tag:
            pass

    def handle_data(self, data):
        self.text.append(data)
        if self._stack and self._stack[-1][0] == "td" and self.cells:
            attrs, text = self.cells[-1]
            self.cells[-1] = (attrs, text + data)


def parse(html: str) -> _Collector:
    c = _Collector()
    c.feed(html)
    c.close()
    return c


def sample_report() -> Report:
    r = Report("Persona <eval> & friends", subtitle="run 42")
    r.text("Preamble with **bold**.")
    r.section("Leaderboard", intro="Higher *adherence* is better.")
    r.table(
        [
            {"method": "prompt", "adherence": 0.61234, "loss": 2.5, "n": 120},
            {"method": "sft", "adherence": 0.8, "loss": 1.9, "n": 120},
            {"method": "rl", "adherence": 0.75, "loss": None, "n": 120},
        ],
        caption="per method",
        highlight_best={"adherence": "max", "loss": "min"},
    )
    r.section("Plots")
    r.image(tiny_png(), caption="steering sweep")
    r.section("Worst examples")
    r.examples(
        [
            {
                "persona": "skeptic",
                "score": -0.5,
                "reasoning": "breaks character </details><script>x</script>",
                "history": [{"role": "user", "content": "hi <b>"}, {"role": "assistant", "content": "hello"}],
            },
        ],
        caption="lowest adherence",
    )
    return r


def test_text_is_escaped_everywhere():
    evil = '<script>alert("x")</script>'
    r = Report(f"Title {evil}")
    r.section(f"Section {evil}", intro=evil)
    r.text(f"para {evil} and `code {evil}`")
    r.table([{f"col{evil}": evil, "n": 1}], caption=evil)
    r.image(tiny_png(), caption=evil)
    r.examples([{"k": evil, "long": evil * 20}], caption=evil)
    r.metrics({evil: 0.5})
    html = r.render()
    assert "<script" not in html.lower()
    assert "&lt;script&gt;" in html
    # the escaped text round-trips to the original through an HTML parser
    assert evil in "".join(parse(html).text)


def test_markdownish_text():
    html = Report("t").text("Hello **bold** and *it* and `a<b>`\n\n- one\n- two").render()
    assert "<strong>bold</strong>" in html and "<em>it</em>" in html
    assert "<code>a&lt;b&gt;</code>" in html
    assert "<ul><li>one</li><li>two</li></ul>" in html


def test_image_is_an_inline_data_uri():
    png = tiny_png()
    html = sample_report().render()
    imgs = [a for tag, a in parse(html).tags if tag == "img"]
    assert len(imgs) == 1
    src = imgs[0]["src"]
    assert src.startswith("data:image/png;base64,")
    assert base64.b64decode(src.split(",", 1)[1]) == png
    assert imgs[0]["alt"] == "steering sweep"


def test_image_rejects_non_image_bytes():
    with pytest.raises(ValueError, match="PNG"):
        data_uri(b"not an image")


def test_self_contained_no_external_references():
    html = sample_report().render()
    assert not re.search(r"https?://", html)
    assert not re.search(r"//[a-z0-9.-]+\.[a-z]{2,}/", html, re.IGNORECASE)  # protocol-relative URLs
    c = parse(html)
    assert not [t for t, _ in c.tags if t in ("script", "link", "iframe")]
    for tag, attrs in c.tags:
        for name in ("src", "href"):
            if name in attrs:
                assert attrs[name].startswith(("data:", "#")), (tag, attrs)
    assert "<style>" in html


def test_table_of_contents_lists_every_section_in_order():
    r = Report("t")
    for title in ("Leaderboard", "Plots", "Plots", "Worst <examples>"):
        r.section(title)
    c = parse(r.render())
    toc_links = [a["href"] for t, a in c.tags if t == "a"]
    ids = [a["id"] for t, a in c.tags if t == "section"]
    assert len(toc_links) == 4 and len(set(ids)) == 4  # duplicate titles get distinct anchors
    assert toc_links == [f"#{i}" for i in ids]
    text = "".join(c.text)
    assert text.index("Leaderboard") < text.index("Plots") < text.index("Worst <examples>")


def test_highlight_marks_the_best_cell_per_column():
    c = parse(sample_report().render())
    best = [(attrs.get("class", ""), text) for attrs, text in c.cells if "best" in attrs.get("class", "").split()]
    assert sorted(text for _, text in best) == ["0.8", "1.9"]  # max adherence, min loss (None ignored)
    assert all("num" in cls.split() for cls, _ in best)


def test_highlight_ties_and_errors():
    rows = [{"a": 1, "b": "x"}, {"a": 3}, {"a": 3.0}, {"a": None}, {"a": float("nan")}]
    assert best_cells(rows, {"a": "max"}) == {(1, "a"), (2, "a")}
    assert best_cells(rows, {"a": "min"}) == {(0, "a")}
    assert best_cells(rows, {"b": "max"}) == set()  # no numbers, nothing marked
    with pytest.raises(ValueError, match="max' or 'min"):
        best_cells(rows, {"a": "best"})
    with pytest.raises(ValueError, match="not in the table"):
        Report("t").table(rows, highlight_best={"nope": "max"})


def test_number_formatting():
    assert fmt(None) == MISSING == "–"
    assert fmt(float("nan")) == MISSING
    assert fmt(0.123456) == "0.123"
    assert fmt(45.678) == "45.7"
    assert fmt(1.0) == "1"
    assert fmt(12345.6) == "12,346"
    assert fmt(1.2e7) == "1.2e+07"
    assert fmt(4.56e-5) == "4.56e-05"
    assert fmt(120) == "120"
    assert fmt(True) == "yes"
    assert fmt({"a": 1}) == '{"a": 1}'
    html = sample_report().render()
    cells = [text for _, text in parse(html).cells]
    assert "0.612" in cells and MISSING in cells


def test_examples_are_collapsible_with_transcripts():
    c = parse(sample_report().render())
    assert [t for t, _ in c.tags].count("details") == 1
    assert "summary" in [t for t, _ in c.tags]
    text = "".join(c.text)
    assert "breaks character </details><script>x</script>" in text  # shown as text, not markup
    assert "hi <b>" in text and "assistant:" in text


def test_write_is_atomic(tmp_path: Path, monkeypatch):
    out = tmp_path / "reports" / "eval_report.html"
    r = sample_report()
    assert r.write(out) == out
    first = out.read_text(encoding="utf-8")
    assert first == r.render()
    assert sorted(p.name for p in out.parent.iterdir()) == ["eval_report.html"]  # no temp file left

    # a write that dies half-way leaves the previous report intact and no debris
    def torn_write(self, data, *args, **kwargs):
        with open(self, "w", encoding="utf-8") as f:
            f.write(data[:10])
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", torn_write)
    with pytest.raises(OSError, match="disk full"):
        Report("second").write(out)
    monkeypatch.undo()
    assert out.read_text(encoding="utf-8") == first
    assert sorted(p.name for p in out.parent.iterdir()) == ["eval_report.html"]


def test_empty_pieces_render():
    html = Report("empty").table([], caption="nothing").examples([]).render()
    assert "no rows" in html and "no examples" in html
    assert "<nav" not in html  # no sections, no table of contents
