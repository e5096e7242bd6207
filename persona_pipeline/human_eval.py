"""Blind human evaluation: the rating page and the records it exchanges.

Raters compare the persona's own line with one candidate line per method (prompting,
SFT, RL, steering, CMA-ES…) without knowing which method wrote which: candidates
carry labels A, B, … shuffled per item, and the label→method key never reaches the
browser. ``write_page`` writes the page (``index.html``) and its key (``key.json``)
atomically, side by side; the pydantic records here validate what the page submits.

Ratings come back through ``rating_server`` (``POST /ratings``, joined to methods on
arrival) or as a file saved with the page's "Download JSON" button (labels only);
``human_ratings`` reads both kinds, joins labels to methods and summarises them.
"""

from __future__ import annotations

import hashlib
import html
import json
import random
import re
import string
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .storage import atomic_path, json_text

RATINGS_FORMAT = "persona-pipeline/human-ratings@1"
KEY_FORMAT = "persona-pipeline/human-eval-key@1"
PAGE_FILE = "index.html"
KEY_FILE = "key.json"
LABELS = string.ascii_uppercase
MAX_RATINGS = 10_000  # lines in one submission: far more than one rater rates in a sitting
SCALE = {
    1: "not this person at all",
    2: "unlikely from this person",
    3: "plausible",
    4: "likely this person",
    5: "could be their own line",
}


# --------------------------------------------------------------------------- records


class ChatTurn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: str = Field(min_length=1)
    content: str


class EvalItem(BaseModel):
    """One thing to rate: the context, the person's own line, and each method's line."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    persona_id: str = Field(min_length=1)
    question: str = ""
    history: list[ChatTurn] = Field(default_factory=list)
    reference: str = Field(min_length=1, description="the human / gold line the candidates are judged against")
    candidates: dict[str, str] = Field(min_length=1, description="method name -> that method's line")

    @field_validator("candidates")
    @classmethod
    def _fits_labels(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > len(LABELS):
            raise ValueError(f"{len(v)} candidates: at most {len(LABELS)} fit the labels A–Z")
        if any(not m.strip() for m in v):
            raise ValueError("method names must be non-empty")
        return v


class LineRating(BaseModel):
    """One rating of one blind-labelled line, as the page sends it."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    item_id: str = Field(min_length=1, max_length=200)
    persona_id: str | None = Field(default=None, max_length=200)
    label: str = Field(min_length=1, max_length=2)
    rating: int = Field(strict=True, ge=1, le=5)
    comment: str = Field(default="", max_length=4000)


class Submission(BaseModel):
    """What the page POSTs (and what "Download JSON" saves): labels only, no methods."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    format: Literal["persona-pipeline/human-ratings@1"] = RATINGS_FORMAT
    page_id: str = Field(min_length=1, max_length=64)
    rater: str = Field(min_length=1, max_length=100)
    submitted_at: str | None = Field(default=None, max_length=64)
    source: str | None = Field(default=None, max_length=64)
    ratings: list[LineRating] = Field(min_length=1, max_length=MAX_RATINGS)


class RatedLine(LineRating):
    method: str | None = Field(default=None, max_length=200)


class RatingFile(Submission):
    """A rating file on disk: a server-written one (methods joined) or a downloaded one."""

    page_sha256: str | None = Field(default=None, max_length=64)
    client_submitted_at: str | None = Field(default=None, max_length=64)
    ratings: list[RatedLine] = Field(min_length=1, max_length=MAX_RATINGS)


# --------------------------------------------------------------------------- page


def _items(items: Iterable[EvalItem | Mapping]) -> list[EvalItem]:
    parsed = [i if isinstance(i, EvalItem) else EvalItem.model_validate(i) for i in items]
    if not parsed:
        raise ValueError("no items to rate")
    seen: set[str] = set()
    for it in parsed:
        if it.id in seen:
            raise ValueError(f"duplicate item id {it.id!r}")
        seen.add(it.id)
    return parsed


def _page_id(items: list[EvalItem], seed: int) -> str:
    """Content hash of items + seed: the same inputs always give the same page and key."""
    blob = json.dumps({"seed": seed, "items": [i.model_dump(mode="json") for i in items]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _blind_key(items: list[EvalItem], seed: int) -> dict[str, dict[str, str]]:
    """Per-item shuffle seeded by (seed, item id): reproducible, yet different item to item."""
    key = {}
    for it in items:
        methods = sorted(it.candidates)
        random.Random(f"{seed}|{it.id}").shuffle(methods)
        key[it.id] = {LABELS[k]: m for k, m in enumerate(methods)}
    return key


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _render_item(idx: int, n: int, it: EvalItem, labels: dict[str, str]) -> str:
    turns = "".join(
        f'<div class="turn role-{_e(re.sub(r"[^a-z]", "", t.role.lower()))}"><span class="who">{_e(t.role)}</span>'
        f'<div class="text">{_e(t.content)}</div></div>'
        for t in it.history
    )
    history = f'<div class="history">{turns}</div>' if turns else ""
    question = f'<div class="question"><span class="who">question</span>{_e(it.question)}</div>' if it.question else ""
    cards = []
    for label, method in labels.items():
        radios = "".join(
            f'<label title="{_e(SCALE[v])}"><input type="radio" name="r{idx}-{label}" value="{v}">'
            f"<span>{v}</span></label>"
            for v in SCALE
        )
        cards.append(
            f'<fieldset class="cand" data-label="{label}"><legend>Line {label}</legend>'
            f'<blockquote class="line">{_e(it.candidates[method])}</blockquote>'
            f'<div class="scale" role="radiogroup" aria-label="Rating for line {label}">{radios}</div>'
            f'<textarea name="c{idx}-{label}" rows="2" placeholder="Comment (optional)"></textarea></fieldset>'
        )
    return (
        f'<section class="item" id="item-{idx}" data-item-id="{_e(it.id)}" data-persona-id="{_e(it.persona_id)}">'
        f'<h2>Item {idx + 1} of {n} <span class="persona">persona: {_e(it.persona_id)}</span></h2>'
        f"{history}{question}"
        f'<div class="lines"><div class="orig"><div class="tag">Original</div>'
        f'<blockquote class="line">{_e(it.reference)}</blockquote></div>{"".join(cards)}</div></section>'
    )


_CSS = """
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f5f6f8;color:#1d2330}
main{max-width:1280px;margin:0 auto;padding:24px}
h1{margin:0 0 8px;font-size:24px} h2{font-size:16px;margin:0 0 12px}
.persona{font-weight:normal;color:#5b6475;margin-left:8px}
.intro{max-width:860px} .anchors{display:flex;flex-wrap:wrap;gap:6px 18px;padding:0;list-style:none;color:#5b6475}
.rater{margin:16px 0} .rater input{padding:6px 8px;font:inherit;width:260px}
.item{background:#fff;border:1px solid #d9dde5;border-radius:8px;padding:16px;margin:18px 0}
.history{display:flex;flex-direction:column;gap:6px;margin-bottom:10px}
.turn,.question{background:#f0f2f6;border-radius:6px;padding:6px 10px;white-space:pre-wrap}
.role-assistant{background:#eaf3ea} .who{display:block;font-size:12px;color:#5b6475;text-transform:uppercase}
.lines{display:grid;grid-template-columns:repeat(auto-fit,minmax(230px,1fr));gap:12px;margin-top:12px}
.orig,.cand{border-radius:6px;padding:10px;margin:0;min-width:0}
.orig{background:#e7f0fb;border:1px solid #b8cfee} .tag{font-weight:600}
.cand{border:1px solid #d9dde5} .cand legend{font-weight:600;padding:0 4px}
.cand.missing{border-color:#c0392b;box-shadow:0 0 0 1px #c0392b}
.line{margin:6px 0 10px;white-space:pre-wrap;overflow-wrap:anywhere}
.scale{display:flex;gap:4px} .scale label{flex:1;text-align:center;cursor:pointer}
.scale input{display:block;margin:0 auto}
textarea{width:100%;margin-top:8px;font:inherit;font-size:13px}
.actions{display:flex;gap:10px;margin-top:16px} button{font:inherit;padding:8px 16px;cursor:pointer}
#submit{background:#2459c4;color:#fff;border:0;border-radius:5px} #submit[disabled]{opacity:.6}
#status{min-height:1.5em;font-weight:600} #status.ok{color:#1e7a34} #status.error{color:#c0392b}
.hint{color:#5b6475;font-size:13px}
"""

# Reads everything it needs from the DOM (data-* attributes), so the page carries no
# separate data blob that could leak more than what is shown.
_JS = r"""
(function () {
  "use strict";
  var app = document.getElementById("app");
  var statusEl = document.getElementById("status");
  var raterEl = document.getElementById("rater");
  var submitBtn = document.getElementById("submit");
  function say(text, kind) { statusEl.textContent = text; statusEl.className = kind || ""; }
  function slug(s) {
    return s.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 40) || "anon";
  }
  function collect() {
    var ratings = [], missing = [];
    document.querySelectorAll("section.item").forEach(function (sec, i) {
      sec.querySelectorAll("fieldset.cand").forEach(function (fs) {
        var picked = fs.querySelector("input[type=radio]:checked");
        fs.classList.toggle("missing", !picked);
        if (!picked) { missing.push((i + 1) + fs.dataset.label); return; }
        ratings.push({
          item_id: sec.dataset.itemId, persona_id: sec.dataset.personaId, label: fs.dataset.label,
          rating: parseInt(picked.value, 10), comment: fs.querySelector("textarea").value.trim()
        });
      });
    });
    var rater = raterEl.value.trim();
    if (!rater) { say("Please enter your name first.", "error"); raterEl.focus(); return null; }
    if (missing.length) { say("Please rate every line. Still missing: " + missing.join(", "), "error"); return null; }
    return { format: app.dataset.format, page_id: app.dataset.pageId, rater: rater,
             submitted_at: new Date().toISOString(), ratings: ratings };
  }
  function describe(detail) {
    if (Array.isArray(detail)) {
      return detail.map(function (d) {
        return (d.loc || []).filter(function (x) { return x !== "body"; }).join(".") + ": " + d.msg;
      }).join("; ");
    }
    return String(detail);
  }
  submitBtn.addEventListener("click", async function () {
    var payload = collect();
    if (!payload) return;
    submitBtn.disabled = true;
    say("Saving\u2026");
    try {
      var res = await fetch(app.dataset.submitUrl, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(payload)
      });
      var body = await res.json().catch(function () { return {}; });
      if (!res.ok) throw new Error(describe(body.detail || res.status + " " + res.statusText));
      say("Thank you! Saved " + body.n_ratings + " ratings as " + body.file, "ok");
    } catch (err) {
      say("Not saved: " + err.message + ". You can use Download JSON instead.", "error");
    } finally {
      submitBtn.disabled = false;
    }
  });
  document.getElementById("download").addEventListener("click", function () {
    var payload = collect();
    if (!payload) return;
    payload.source = "download";
    var stamp = payload.submitted_at.replace(/[-:]/g, "").replace(/\.\d+/, "");
    var name = "ratings-" + payload.page_id + "-" + slug(payload.rater) + "-" + stamp + ".json";
    var url = URL.createObjectURL(new Blob([JSON.stringify(payload, null, 2)], { type: "application/json" }));
    var a = document.createElement("a");
    a.href = url; a.download = name;
    document.body.appendChild(a); a.click(); a.remove();
    setTimeout(function () { URL.revokeObjectURL(url); }, 10000);
    say("Downloaded " + name + " \u2014 put it in data_assets/human_ratings/.", "ok");
  });
})();
"""


def _csp(submit_url: str) -> str:
    """Nothing may load from outside the page; only the submit endpoint may be contacted."""
    connect = "'self'"
    parts = urlsplit(submit_url)
    if parts.scheme in ("http", "https") and parts.netloc:
        connect += f" {parts.scheme}://{parts.netloc}"
    return (
        "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
        f"connect-src {connect}; base-uri 'none'; form-action 'none'"
    )


def _build(items: Iterable[EvalItem | Mapping], seed: int, submit_url: str):
    parsed = _items(items)
    key = _blind_key(parsed, seed)
    page_id = _page_id(parsed, seed)
    sections = "".join(_render_item(i, len(parsed), it, key[it.id]) for i, it in enumerate(parsed))
    anchors = "".join(f"<li><b>{v}</b> – {_e(t)}</li>" for v, t in SCALE.items())
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{_e(_csp(submit_url))}">
<title>Persona line rating</title>
<style>{_CSS}</style>
</head>
<body>
<main id="app" data-page-id="{page_id}" data-format="{RATINGS_FORMAT}" data-submit-url="{_e(submit_url)}">
<h1>Does this line sound like the person?</h1>
<p class="intro">Each item shows a conversation so far, the line the person actually said next
(<b>Original</b>), and several candidate lines labelled A, B, &hellip; in a random order.
Rate every candidate from 1 to 5: how likely is it that this same person would have said it at
this point? Judge voice, opinions and manner, not grammar. Comments are optional.</p>
<ul class="anchors">{anchors}</ul>
<div class="rater"><label>Your name <input id="rater" name="rater" autocomplete="name" maxlength="100"></label></div>
{sections}
<div class="actions"><button id="submit" type="button">Submit ratings</button>
<button id="download" type="button">Download JSON</button></div>
<p id="status" role="status" aria-live="polite"></p>
<p class="hint">Working offline? Download JSON saves the same ratings; put the file in data_assets/human_ratings/.</p>
</main>
<script>{_JS}</script>
</body>
</html>
"""
    return page, key, page_id, parsed


def build_page(
    items: Iterable[EvalItem | Mapping], seed: int, submit_url: str = "/ratings"
) -> tuple[str, dict[str, dict[str, str]]]:
    """Render the self-contained blind rating page; return it with the key ``{item_id: {label: method}}``.

    The key is returned separately (never embedded) so the page itself stays blind.
    """
    page, key, _, _ = _build(items, seed, submit_url)
    return page, key


def write_page(
    out_dir: str | Path, items: Iterable[EvalItem | Mapping], seed: int, submit_url: str = "/ratings"
) -> dict:
    """Write ``index.html`` and ``key.json`` atomically; return the key document.

    The key document records the page id and the page's sha256, so a server or
    loader can refuse to join ratings with a key from a different build.
    """
    out_dir = Path(out_dir)
    page, key, page_id, parsed = _build(items, seed, submit_url)
    doc = {
        "format": KEY_FORMAT,
        "page_id": page_id,
        "seed": seed,
        "page_sha256": hashlib.sha256(page.encode("utf-8")).hexdigest(),
        "n_items": len(parsed),
        "methods": sorted({m for it in parsed for m in it.candidates}),
        "personas": {it.id: it.persona_id for it in parsed},
        "key": key,
    }
    with atomic_path(out_dir) as tmp:  # page and key are swapped in together: never one build's page with another's key
        tmp.mkdir()
        (tmp / KEY_FILE).write_text(json_text(doc), encoding="utf-8")
        (tmp / PAGE_FILE).write_text(page, encoding="utf-8")
    return doc


def heldout_contexts(hitl: list[dict], per_persona: int, trained_sessions: set[str]) -> list[dict]:
    """Contexts with a human gold line: persona turns (after the opening) of the first path of each HITL
    session the adapters never trained on (``trained_sessions`` comes from the split sft_adapter recorded)."""
    from .contracts import Conversation
    from .splits import base_key

    out, taken = [], {}
    for raw in hitl:
        c = Conversation(**raw)
        if c.metadata.path != 0 or base_key(c.id) in trained_sessions:
            continue
        for i in c.persona_turn_indices():
            if i >= 2 and taken.get(c.persona_id, 0) < per_persona:
                taken[c.persona_id] = taken.get(c.persona_id, 0) + 1
                out.append(
                    {
                        "id": f"{c.id}@{i}",
                        "persona_id": c.persona_id,
                        "topic": c.topic,
                        "history": [{"role": t.role, "content": t.content} for t in c.turns[:i]],
                        "reference": c.turns[i].content,
                    }
                )
    return out


def judge_candidates(items: list, persona_specs: list[dict], judge) -> dict:
    """The judge's adherence for every candidate line, so human ratings can be compared with it."""
    from . import eval_judges as ej
    from .judging import choose

    flat = [
        ej.EvalItem(
            id=f"{it.id}|{m}",
            persona_id=it.persona_id,
            history=[h.model_dump() for h in it.history],
            candidate=line,
            method=m,
        )
        for it in items
        for m, line in it.candidates.items()
    ]
    primary = choose.primary_evaluator(judge, persona_specs)
    scores = primary(flat)
    return {s.item_id: s.adherence for s in scores}
