"""The one protocol every judge follows: items in, one :class:`Score` per item out.

A score is a number on ONE scale, 0 (not at all) to 1 (completely), an optional
reasoning, and an explicit failure: ``value`` None with an ``error`` that says
why. Nothing defaults a failed judgement to a number; the caller decides what a
failure means (the CMA-ES fitness counts it as the worst, the leaderboard leaves
it out and counts it).

``signal`` names what a judge's number is computed from. Two judges with the
same signal are not independent: a method optimised against one must not be
evaluated with the other (see :mod:`persona_pipeline.judging.choose`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass
class JudgeItem:
    """One line to judge: who should have written it (spec text and/or persona id) and the dialogue before it.

    Trait, coherence and role judges read the question as the last user message of ``history``.
    """

    spec: str
    history: list[dict]
    response: str
    persona_id: str | None = None

    @property
    def question(self) -> str:
        return next((m["content"] for m in reversed(self.history) if m["role"] == "user"), "")


@dataclass(frozen=True)
class Score:
    """0–1 (None = failed, with ``error``); ``details`` holds judge-specific extras (e.g. JSON verdict fields)."""

    value: float | None
    reasoning: str = ""
    error: str | None = None
    details: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.value is None and not self.error:
            raise ValueError("a failed score needs an error that says why")
        if self.value is not None and not 0.0 <= self.value <= 1.0:
            raise ValueError(f"score {self.value!r} is outside 0..1")

    @property
    def failed(self) -> bool:
        return self.value is None


@runtime_checkable
class Judge(Protocol):
    name: str
    signal: str

    def score(self, items: Sequence[JudgeItem]) -> list[Score]: ...


def scaled(values: Sequence[float | None], lo: float, hi: float, why: str) -> list[Score]:
    """Raw judge numbers on [lo, hi] as 0–1 scores; None becomes a failure saying ``why``."""
    return [
        Score(None, error=why) if v is None else Score(round(min(1.0, max(0.0, (v - lo) / (hi - lo))), 6))
        for v in values
    ]


def scaled_each(values: Sequence, lo: float, hi: float, why: str) -> list[Score]:
    """:func:`scaled` where an item may be an exception (its backend call failed): that item alone fails."""
    out = scaled([None if isinstance(v, Exception) else v for v in values], lo, hi, why)
    return [Score(None, error=f"backend error: {v}") if isinstance(v, Exception) else s for v, s in zip(values, out)]


def values(scores: Sequence[Score], lo: float = 0.0, hi: float = 1.0) -> list[float | None]:
    """Scores mapped back onto [lo, hi] (e.g. the [-1, 1] reward scale, 0–100 trait scores); failures stay None."""
    return [None if s.failed else round(lo + s.value * (hi - lo), 6) for s in scores]
