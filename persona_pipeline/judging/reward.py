"""Persona scores on the reward scale [-1, 1], and the guard against reward hacking."""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..quality import PERSONA_BREAK
from .base import Judge, JudgeItem, values
from .llm import JsonRewardJudge, LogprobPersonaJudge


def as_judge(judge, method: str | None = None) -> Judge:
    """A protocol judge as is; a bare backend with ``method`` ``logprob`` or ``json`` as that LLM judge."""
    if isinstance(judge, Judge):
        return judge
    if method == "logprob":
        return LogprobPersonaJudge(judge)
    if method == "json":
        return JsonRewardJudge(judge)
    raise ValueError(f"judge method {method!r}: use 'logprob' or 'json' with a backend, or pass a judge object")


def persona_scores(judge, items: Sequence[JudgeItem], method: str | None = None) -> list[float | None]:
    """Persona adherence in [-1, 1] per item (None when the judge gave no usable answer).

    ``judge`` is a protocol judge (e.g. :class:`~.embedding.VoiceJudge`), or a Backend with
    ``method`` ``logprob`` / ``json``.
    """
    return values(as_judge(judge, method).score(list(items)), -1.0, 1.0)


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
