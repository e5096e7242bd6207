"""Reading a survey answer written by a model: a Likert value, a chosen option, or open text.

The earliest thing a reply commits to wins, so numbers or phrases in the reasoning
that follows cannot override it; an off-scale or ambiguous reply is None (counted
as a parse failure by the scorer, never defaulted).
"""

from __future__ import annotations

import re
from difflib import SequenceMatcher

from .contracts import TAG_RE, SurveyItem


def _scale(item: SurveyItem) -> tuple[int, int]:
    lo, hi = item.scale or (1, 5)
    return int(lo), int(hi)


def _norm(text: str) -> str:
    text = TAG_RE.sub(" ", text.replace("’", "'").lower())
    return re.sub(r"\s+", " ", text).strip()


def _phrase_re(phrase: str) -> str:
    return r"\b" + r"\s+".join(re.escape(w) for w in phrase.lower().split()) + r"\b"


_AGREE_WORDS = {  # offsets from the bottom of the scale, for the standard 5- and 7-point scales
    4: [
        (r"\b(?:strongly|completely|totally|fully|entirely|absolutely) disagree\b", 0),
        (r"\b(?:somewhat|slightly|mildly|partly|mostly|tend to|rather) disagree\b|\bdisagree\b", 1),
        (r"\b(?:do not|don't|dont|would not|wouldn't) (?:really )?agree\b", 1),
        (r"\bneither agree nor disagree\b|\bneutral\b|\bundecided\b|\bon the fence\b|\bambivalent\b", 2),
        (r"\b(?:somewhat|slightly|mildly|partly|mostly|tend to|rather) agree\b|\bagree\b", 3),
        (r"\b(?:strongly|completely|totally|fully|entirely|absolutely) agree\b", 4),
    ],
    6: [
        (r"\b(?:strongly|completely|totally|fully|entirely|absolutely) disagree\b", 0),
        (r"\bdisagree\b|\b(?:do not|don't|dont) (?:really )?agree\b", 1),
        (r"\b(?:somewhat|slightly|mildly|partly) disagree\b", 2),
        (r"\bneither agree nor disagree\b|\bneutral\b|\bundecided\b|\bon the fence\b", 3),
        (r"\b(?:somewhat|slightly|mildly|partly) agree\b", 4),
        (r"\bagree\b", 5),
        (r"\b(?:strongly|completely|totally|fully|entirely|absolutely) agree\b", 6),
    ],
}

_NUM = r"(\d+)(?![\d.,]\d)"
_LEADING = re.compile(
    r"^[\s*#>\"'(\[]*(?:(?:my )?(?:answer|rating|score|response)\s*(?:is|:|=|-)?\s*)?\**"
    + _NUM
    + r"\**(?=\s*$|\s*[.,;:!)\]\-–—(/]|\s+(?:out of|because|since|as)\b)"
)
_STATED = re.compile(
    r"\b(?:(?:rate|give|score|put)\s+(?:it|this|that|myself|me)(?:\s+at)?|rating(?: of| is)?|"
    r"score(?: of| is)?|answer(?: is)?|i'd say|i would say|i'd go with|i choose|i pick)"
    r"\s*:?\s*(?:an?\s+)?\**" + _NUM + r"\b"
)
_FRACTION = re.compile(r"\b" + _NUM + r"\s*(?:/|out of)\s*(\d+)\b")


def _likert_words(item: SurveyItem, text: str) -> tuple[int, int] | None:
    """(position, value) of the earliest label phrase (ties → longest; the item's own labels first)."""
    lo, hi = _scale(item)
    cands: list[tuple[int, int, int, int]] = []  # (start, -length, source rank, value)
    for k, label in enumerate(item.scale_labels or []):
        for m in re.finditer(_phrase_re(label), text):
            cands.append((m.start(), -len(m.group()), 0, lo + k))
    for pattern, offset in _AGREE_WORDS.get(hi - lo, []):
        for m in re.finditer(pattern, text):
            cands.append((m.start(), -len(m.group()), 1, lo + offset))
    if not cands:
        return None
    best = min(cands)
    return best[0], best[3]


def parse_likert(item: SurveyItem, text: str) -> int | None:
    """Likert value from the earliest commitment in the reply.

    A leading number ("4.", "Rating: 4") wins outright; otherwise the earliest of a
    fraction over our own scale ("4/5", "4 out of 5"), a stated number ("I'd give it 4")
    or a label phrase ("somewhat agree", the item's scale_labels) decides, so a number
    or phrase in the reasoning that follows cannot override the answer. A committed value
    off the scale gives None. A lone number in a terse reply is the last resort.
    """
    lo, hi = _scale(item)
    t = _norm(text)
    if not t:
        return None

    def valid(v: int) -> int | None:
        return v if lo <= v <= hi else None

    # Fractions over another denominator ("9 out of 10 people") are not ratings on this scale.
    t = _FRACTION.sub(lambda f: f.group() if int(f.group(2)) == hi else " " * len(f.group()), t)
    m = _LEADING.search(t)
    if m:
        return valid(int(m.group(1)))
    cands: list[tuple[int, int | None]] = [(f.start(), valid(int(f.group(1)))) for f in _FRACTION.finditer(t)]
    t_nofrac = _FRACTION.sub(lambda f: " " * len(f.group()), t)
    for s in _STATED.finditer(t_nofrac):
        cands.append((s.start(), valid(int(s.group(1)))))
    words = _likert_words(item, t)
    if words:
        cands.append(words)
    if cands:
        return min(cands, key=lambda c: c[0])[1]
    # Last resort, for terse replies only ("probably 4"): in a long reply a lone number is a fact, not a rating.
    numbers = {int(n) for n in re.findall(r"(?<![\d.,])\d+(?![\d.,]\d)", t_nofrac)}
    if len(numbers) == 1 and len(t.split()) <= 6:
        return valid(next(iter(numbers)))
    return None


_STOP = {
    "the",
    "and",
    "for",
    "with",
    "that",
    "this",
    "them",
    "they",
    "you",
    "your",
    "are",
    "was",
    "its",
    "from",
    "into",
    "than",
    "then",
    "but",
    "not",
    "all",
    "any",
    "can",
    "has",
    "have",
    "our",
    "out",
    "until",
}


def _stem(word: str) -> str:
    for suffix in ("ingly", "ing", "ly", "ed", "es", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def _content(text: str) -> list[str]:
    return [_stem(w) for w in re.findall(r"[a-z0-9']+", text) if len(w) >= 3 and w not in _STOP]


def _token_hit(token: str, pool: set[str]) -> bool:
    return token in pool or (len(token) >= 5 and any(SequenceMatcher(None, token, p).ratio() >= 0.85 for p in pool))


def parse_choice(item: SurveyItem, text: str) -> str | None:
    """The option meant: exact reply, then earliest verbatim mention, then a unique best fuzzy match."""
    options = item.options or []
    t = _norm(text)
    bare = t.strip(" .!\"'*")
    for o in options:
        if bare == _norm(o):
            return o
    hits = []
    for o in options:
        m = re.search(r"(?<!\w)" + r"\s+".join(re.escape(w) for w in _norm(o).split()) + r"(?!\w)", t)
        if m:
            hits.append((m.start(), -len(o), o))
    if hits:
        return min(hits)[2]
    pool = set(_content(t))
    if not pool:
        return None
    scored = []
    for o in options:
        toks = _content(_norm(o))
        recall = (sum(_token_hit(w, pool) for w in toks) / len(toks)) if toks else 0.0
        scored.append((recall, SequenceMatcher(None, _norm(o), t).ratio(), o))
    scored.sort(reverse=True)
    best = scored[0]
    runner = scored[1] if len(scored) > 1 else (0.0, 0.0, None)
    if best[0] >= 0.5 and best[0] > runner[0]:  # equal recall is ambiguous: no answer, not a guess
        return best[2]
    return None


def parse_answer(item: SurveyItem, text: str | None) -> int | str | None:
    """Likert value, chosen option, or cleaned open text; None when the reply says nothing usable."""
    if text is None:
        return None
    if item.kind == "likert":
        return parse_likert(item, text)
    if item.kind == "choice":
        return parse_choice(item, text)
    cleaned = re.sub(r"\s+", " ", TAG_RE.sub(" ", text)).strip()
    return cleaned if re.search(r"[A-Za-z]{2,}", cleaned) else None
