"""Heuristic quality score, safety flags and de-duplication for conversations.

Cheap and deterministic, so every conversation gets a score even offline; an
LLM judge can be blended in by the caller. The score is a product of
penalties in [0, 1] so one bad property cannot be averaged away.
"""

from __future__ import annotations

import re
from collections import Counter

from .contracts import Conversation

PERSONA_BREAK = re.compile(
    r"\b(as an ai|an ai (language )?model|language model|i am an ai|i'm an ai|i'?m (just )?an? (ai|assistant|chatbot|bot)"
    r"|as a (helpful )?assistant|how (can|may) i (help|assist) you( today)?|i'?m here to (help|assist)|(happy|glad) to (help|assist)|if you have any (other |more |further )?questions|let me know if you need|i do not have personal)\b",
    re.IGNORECASE,
)

SAFETY_PATTERNS = {
    "self_harm": r"\b(kill (myself|yourself)|suicide|self[- ]harm|end my life)\b",
    "violence": r"\b(build a bomb|make a weapon|shoot (him|her|them)|murder)\b",
    "pii": r"\b(\d{3}-\d{2}-\d{4}|\d{4}[ -]\d{4}[ -]\d{4}[ -]\d{4}|password is)\b",
    "hate": r"\b(subhuman|vermin)\b",
    "sexual": r"\b(explicit sex|porn)\b",
}


def persona_breaks(conv: Conversation) -> list[int]:
    """Indices of persona turns that step out of character."""
    return [i for i in conv.persona_turn_indices() if PERSONA_BREAK.search(conv.turns[i].content)]


def safety_flags(conv: Conversation) -> list[str]:
    return text_safety_flags("\n".join(t.content for t in conv.turns))


def text_safety_flags(text: str) -> list[str]:
    return sorted(name for name, pat in SAFETY_PATTERNS.items() if re.search(pat, text, re.IGNORECASE))


def _ngrams(text: str, n: int = 3) -> list[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def repetition(conv: Conversation) -> float:
    """Share of repeated word trigrams across persona turns (0 = none repeated)."""
    grams = [g for i in conv.persona_turn_indices() for g in _ngrams(conv.turns[i].content)]
    if not grams:
        return 0.0
    counts = Counter(grams)
    return sum(c - 1 for c in counts.values()) / len(grams)


def quality_score(conv: Conversation, min_turns: int = 8, max_words: int = 120) -> tuple[float, list[str]]:
    """Return (score in [0,1], reasons) — reasons name every penalty applied."""
    score, reasons = 1.0, []
    persona_lines = [conv.turns[i].content for i in conv.persona_turn_indices()]
    if len(conv.turns) < min_turns:
        score *= len(conv.turns) / min_turns
        reasons.append(f"short:{len(conv.turns)}<{min_turns}")
    if breaks := persona_breaks(conv):
        score *= 0.3 ** len(breaks)
        reasons.append(f"persona_break:{len(breaks)}")
    if any(not t.content.strip() for t in conv.turns):
        score *= 0.2
        reasons.append("empty_turn")
    rep = repetition(conv)
    if rep > 0.2:
        score *= max(0.0, 1 - rep)
        reasons.append(f"repetition:{rep:.2f}")
    long = [len(line.split()) for line in persona_lines if len(line.split()) > max_words]
    if long:
        score *= 0.8
        reasons.append(f"too_long:{max(long)}w")
    if persona_lines and len(set(persona_lines)) < len(persona_lines):
        score *= 0.5
        reasons.append("repeated_line")
    return round(score, 4), reasons


def normalise(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def shingles(conv: Conversation, n: int = 5) -> set[tuple[str, ...]]:
    words = normalise(" ".join(t.content for t in conv.turns)).split()
    return {tuple(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}


def dedupe(convs: list[Conversation], near_threshold: float = 0.8) -> tuple[list[Conversation], dict[str, str]]:
    """Drop exact duplicates and near-duplicates (Jaccard of word 5-gram shingles).

    Returns (kept, {dropped_id: reason}). Earlier conversations win, so pass
    gold sources (HITL, survey) first.
    """
    kept, dropped, seen_exact, kept_sh = [], {}, {}, []
    family = lambda cid: cid.split("#")[0]
    for conv in convs:
        key = normalise(" ".join(t.content for t in conv.turns))
        if key in seen_exact:
            dropped[conv.id] = f"exact_duplicate_of:{seen_exact[key]}"
            continue
        sh = shingles(conv)
        near = next(
            (
                cid
                for cid, other in kept_sh
                if family(cid) != family(conv.id) and len(sh & other) / max(1, len(sh | other)) >= near_threshold
            ),
            None,
        )
        if near:
            dropped[conv.id] = f"near_duplicate_of:{near}"
            continue
        seen_exact[key] = conv.id
        kept_sh.append((conv.id, sh))
        kept.append(conv)
    return kept, dropped
