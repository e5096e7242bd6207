"""LLM judges: the persona reward (seed's RL-from-AI-feedback prompt) and logprob scoring.

Two ways to read a judge. ``json``: the judge writes ``{"score": x, ...}`` and we
parse it robustly. ``logprob``: the judge answers with one number and we take
the probability-weighted mean over the number tokens of its top-k next-token
distribution — deterministic, continuous, and usable even with a small local
judge; a reply with < 25 % of its mass on numbers is discarded (None).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .backends import SamplingParams
from .prompts import render_history
from .quality import PERSONA_BREAK

REWARD_SYSTEM = "You are a strict evaluator for an AI persona simulation."

REWARD_USER = """Persona Spec: {spec}
Conversation History: {history}
Candidate Response: {response}
Task: Analyze if this response matches the persona spec given the history.
Score: Provide JSON with "score" from -1.0 (persona-breaking) to +1.0 (persona-perfect) and "reasoning"."""

LOGPROB_USER = """Persona: {spec}
Conversation so far:
{history}
Next message written as this persona: {response}
On a scale from 0 (completely out of character) to 10 (exactly this persona), how well does the next message fit the persona? Answer with a single number."""


@dataclass
class JudgeItem:
    spec: str
    history: list[dict]
    response: str


def reward_chat(item: JudgeItem, template: str = REWARD_USER) -> list[dict]:
    history = render_history(item.history) if item.history else "(start of conversation)"
    return [
        {"role": "system", "content": REWARD_SYSTEM},
        {"role": "user", "content": template.format(spec=item.spec, history=history, response=item.response)},
    ]


_NUMBER = re.compile(r"[-+]?\d*\.?\d+")


def parse_score(text: str, lo: float = -1.0, hi: float = 1.0) -> float | None:
    """A score from JSON (``score`` key), a fenced JSON block, or the first in-range number."""
    for candidate in (text, *re.findall(r"\{.*?\}", text, re.DOTALL)):
        try:
            obj = json.loads(candidate)
        except (json.JSONDecodeError, TypeError):
            continue
        if isinstance(obj, dict) and isinstance(obj.get("score"), (int, float)) and lo <= obj["score"] <= hi:
            return float(obj["score"])
    m = re.search(r'score"?\s*[:=]\s*([-+]?\d*\.?\d+)', text, re.IGNORECASE)
    values = [m.group(1)] if m else _NUMBER.findall(text)
    for v in values:
        x = float(v)
        if lo <= x <= hi:
            return x
    return None


def logprob_score(logprobs: dict[str, float], lo: int = 0, hi: int = 100, min_mass: float = 0.25) -> float | None:
    """Probability-weighted mean of the integer tokens in [lo, hi]; None if they hold < min_mass."""
    import math

    mass, total = 0.0, 0.0
    for tok, lp in logprobs.items():
        if tok.isdigit() and lo <= int(tok) <= hi:
            p = math.exp(lp)
            mass += p
            total += p * int(tok)
    return total / mass if mass >= min_mass else None


def voice_scores(voices: dict[str, list[str]], persona_id: str, lines: list[str]) -> list[float]:
    """0–100 per line: MiniLM similarity to this persona's own words vs the other personas' (first 4 each)."""
    from .trait_judge import embedding_judge

    others = [x for other, own in voices.items() if other != persona_id for x in own[:4]]
    return embedding_judge().score(voices[persona_id], others, lines)


class VoiceJudge:
    """Persona adherence without an LLM: MiniLM similarity of a line to the persona's own voice
    vs every other persona's, mapped to [-1, 1].

    For the small local judge, which cannot grade adherence (its 0–10 answer rarely puts
    25 % of its mass on digits). Keyed by the spec text a :class:`JudgeItem` carries, so
    it drops in wherever :func:`persona_scores` takes a judge (method ``embedding``).
    """

    def __init__(self, voices: dict[str, list[str]], spec_owner: dict[str, str]):
        self.voices, self.spec_owner = voices, spec_owner

    def scores(self, items: list[JudgeItem]) -> list[float | None]:
        out: list[float | None] = [None] * len(items)
        owners = [self.spec_owner.get(i.spec) for i in items]
        for pid in dict.fromkeys(o for o in owners if o is not None):
            idx = [k for k, o in enumerate(owners) if o == pid]
            for k, sc in zip(idx, voice_scores(self.voices, pid, [items[k].response for k in idx])):
                out[k] = round(sc / 50 - 1, 4)
        return out


def persona_scores(judge, items: list[JudgeItem], method: str = "logprob") -> list[float | None]:
    """Persona adherence in [-1, 1] per item (None when the judge gave no usable answer).

    ``judge`` is a Backend for ``logprob`` / ``json``, a :class:`VoiceJudge` for ``embedding``.
    """
    if method == "embedding":
        return judge.scores(items)
    if method == "logprob":
        dists = judge.next_token_logprobs([reward_chat(i, LOGPROB_USER) for i in items], top_k=20)
        return [None if (s := logprob_score(d, 0, 10)) is None else round(s / 5 - 1, 4) for d in dists]
    if method == "json":
        texts = judge.complete([reward_chat(i) for i in items], SamplingParams(max_new_tokens=96, temperature=0))
        return [parse_score(t) for t in texts]
    raise ValueError(f"judge method {method!r}: use 'logprob', 'json' or 'embedding'")


def degeneracy_penalty(text: str, max_words: int = 80) -> float:
    """0 for a natural line, up to 1 for empty, looping, overlong or out-of-character output.

    This is the guard against reward hacking the seed warns about ("Why? Why? Why?").
    """
    words = re.findall(r"\w+", text.lower())
    if not words:
        return 1.0
    penalty = 0.0
    if PERSONA_BREAK.search(text):
        penalty += 0.6
    distinct = len(set(words)) / len(words)
    if len(words) >= 6 and distinct < 0.5:
        penalty += 0.5 * (0.5 - distinct) / 0.5 + 0.25
    if len(words) > max_words:
        penalty += 0.2
    return min(1.0, penalty)
