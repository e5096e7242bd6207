"""Cheap local consistency scorers for a persona's lines (MiniLM similarity plus heuristics, no NLI model).

The three measures of Abdulhai et al. (2025), made cheap enough to score every
GRPO completion on a CPU:

- **prompt-to-line**: does the line agree with the spec? Highest MiniLM cosine of
  the line with any sentence of the persona's *full* spec (description, traits,
  constraints, edge cases), rescaled to 0–1. It reads the spec text, not the
  example lines the voice judge compares with, so it is a different signal.
- **line-to-line**: does the line contradict (or just repeat) the persona's own
  earlier lines? A contradiction is guessed without an NLI model: an earlier line
  on the same subject (cosine ≥ ``SAME_SUBJECT``) whose negation polarity differs
  ("I have a car" / "I don't have a car"). A near-verbatim repeat is a loop.
  Both cost up to 1; the score is 1 minus the worse.
- **Q&A**: asked the same probe question about themselves, does the persona answer
  the same way after the dialogue as it did before it? Cosine of the two answers.

All are 0–1 (1 = consistent). They are heuristics: a paraphrased contradiction
with no negation word slips through; the documentation and metadata say so.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

PROBES = (
    "Before we go on: tell me a little about yourself.",
    "What matters most to you when you ask for help like this?",
    "How would you describe the way you usually talk?",
)
SAME_SUBJECT = 0.55
NEAR_REPEAT = 0.92
_NEGATION = re.compile(r"\b(no|not|never|none|nothing|nobody|neither|nor|cannot)\b|n't\b", re.IGNORECASE)


def _encode(texts: Sequence[str]):
    from .judging.embedding import encode

    return encode([t or " " for t in texts])


def spec_sentences(spec) -> list[str]:
    """The checkable claims of a spec (``PersonaSpec``): description sentences, traits, constraints, edge cases."""
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", spec.description) if s.strip()]
    return [*sentences, *spec.behavioral_traits, *spec.constraints, *spec.edge_case_boundaries]


def prompt_to_line(claims: Sequence[str], lines: Sequence[str], floor: float = 0.05, ceil: float = 0.55) -> list[float]:
    """0–1 per line: best cosine with any spec claim, ``floor`` → 0 and ``ceil`` → 1."""
    if not lines:
        return []
    emb = _encode([*claims, *lines])
    best = (emb[len(claims) :] @ emb[: len(claims)].T).max(dim=1).values
    return [round(min(1.0, max(0.0, (float(b) - floor) / (ceil - floor))), 6) for b in best]


def negated(text: str) -> bool:
    return bool(_NEGATION.search(text))


def line_to_line(earlier: Sequence[Sequence[str]], lines: Sequence[str]) -> list[float]:
    """0–1 per line: 1 minus the worse of a guessed contradiction and a near-verbatim repeat of an earlier line."""
    out = []
    for before, line in zip(earlier, lines):
        before = [b for b in before if b.strip()]
        if not before or not line.strip():
            out.append(1.0 if line.strip() else 0.0)
            continue
        emb = _encode([*before, line])
        sims = (emb[:-1] @ emb[-1]).tolist()
        clash = max((s for b, s in zip(before, sims) if s >= SAME_SUBJECT and negated(b) != negated(line)), default=0.0)
        repeat = max(0.0, (max(sims) - NEAR_REPEAT) / (1 - NEAR_REPEAT))
        out.append(round(1.0 - min(1.0, max(clash, repeat)), 6))
    return out


def qa_stability(reference: Sequence[str], answers: Sequence[str]) -> list[float]:
    """0–1 per pair: cosine of the probe answer before the dialogue with the one after it (negative → 0)."""
    if not answers:
        return []
    emb = _encode([*reference, *answers])
    n = len(reference)
    return [round(max(0.0, float(emb[i] @ emb[n + i])), 6) for i in range(n)]
