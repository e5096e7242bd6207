"""LLM judges: the seed's RL-from-AI-feedback JSON reward prompt and logprob scoring.

Two ways to read an LLM judge. ``json``: the judge writes ``{"score": x, ...}``
and we parse it robustly. ``logprob``: the judge answers with one number and we
take the probability-weighted mean over the number tokens of its top-k
next-token distribution — deterministic, continuous, and usable even with a
small local judge; a reply with < 25 % of its mass on numbers is a failure.

Tokenizers that split numbers into digits (SmolLM2, Llama-2) cannot emit "100"
as one token, so for them a 0–100 prompt asks for one digit 0–9 and the
expectation is rescaled — same protocol, a coarser scale.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from ..backends import Backend, BackendError, SamplingParams
from ..backends.openai_compat import NoLogprobs, complete_each, next_token_logprobs_each
from ..prompts import render_history
from ..verdicts import VerdictError, parse_score, read_score  # noqa: F401  (parse_score re-exported)
from .base import JudgeItem, Score, scaled_each

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

DIGIT_SCALE = (
    "\n\nAnswer format for this judge: reply with ONE digit from 0 (not at all) to 9 (completely) "
    "instead of a number from 0 to 100."
)


def reward_chat(item: JudgeItem, template: str = REWARD_USER) -> list[dict]:
    history = render_history(item.history) if item.history else "(start of conversation)"
    return [
        {"role": "system", "content": REWARD_SYSTEM},
        {"role": "user", "content": template.format(spec=item.spec, history=history, response=item.response)},
    ]


def _reasoning(text: str) -> str:
    m = re.search(r'"reasoning"\s*:\s*"([^"]*)"', text)
    return m.group(1) if m else ""


def logprob_score(logprobs: dict[str, float], lo: int = 0, hi: int = 100, min_mass: float = 0.25) -> float | None:
    """Probability-weighted mean of the integer tokens in [lo, hi]; None if they hold < min_mass."""
    mass, total = 0.0, 0.0
    for tok, lp in logprobs.items():
        if tok.isdigit() and lo <= int(tok) <= hi:
            p = math.exp(lp)
            mass += p
            total += p * int(tok)
    return total / mass if mass >= min_mass else None


NO_DIGITS = "the judge put < 25 % of its next-token mass on numbers"


def without_logprobs(judge: str, n: int, e: NoLogprobs) -> list[Score]:
    """Every item failed, naming the missing feature: an endpoint that sends no logprobs cannot be a
    logprob judge, and scoring anyway (a default, a guess) would be a silent lie."""
    why = f"{judge} not scored: the endpoint lacks next-token logprobs, which this judge reads; use judge_method=json"
    return [Score(None, error=f"{why} ({e})") for _ in range(n)]


class LogprobPersonaJudge:
    """Persona adherence 0–10 read from the judge's next-token distribution (the default endpoint reward)."""

    def __init__(self, backend: Backend, name: str = "persona_logprob"):
        self.backend, self.name = backend, name
        self.signal = f"llm_logprob:{getattr(backend, 'name', type(backend).__name__)}"

    def score(self, items: Sequence[JudgeItem]) -> list[Score]:
        if not items:
            return []
        try:
            dists = next_token_logprobs_each(self.backend, [reward_chat(i, LOGPROB_USER) for i in items], top_k=20)
        except NoLogprobs as e:
            return without_logprobs(self.name, len(items), e)
        return scaled_each([read_logprobs(d, 0, 10) for d in dists], 0, 10, NO_DIGITS)


class JsonRewardJudge:
    """The seed's RL-from-AI-feedback prompt: JSON ``score`` in [-1, 1] with reasoning."""

    def __init__(self, backend: Backend, name: str = "persona_json_reward"):
        self.backend, self.name = backend, name
        self.signal = f"llm_json_reward:{getattr(backend, 'name', type(backend).__name__)}"

    def score(self, items: Sequence[JudgeItem]) -> list[Score]:
        if not items:
            return []
        chats = [reward_chat(i) for i in items]
        return [
            _reward(text)
            for text in complete_each(self.backend, chats, SamplingParams(max_new_tokens=96, temperature=0))
        ]


def _reward(text: str | BackendError) -> Score:
    """One reply as a 0–1 score, or a failure that says why (backend error, or no labelled score in [-1, 1])."""
    if isinstance(text, BackendError):
        return Score(None, error=f"backend error: {text}")
    try:
        return Score(round((read_score(text) + 1) / 2, 6), reasoning=_reasoning(text))
    except VerdictError as e:
        return Score(None, error=f"no score in [-1, 1] in the reply {text[:80]!r}: {e}")


def number_tokens(backend: Backend) -> int:
    """Largest N such that every integer 0..N is a single token for this backend (100 for endpoints)."""
    tok = getattr(backend, "tok", None)
    if tok is None:
        return 100
    n = 0
    while n < 100 and len(tok(str(n + 1), add_special_tokens=False)["input_ids"]) == 1:
        n += 1
    return n


def read_logprobs(dist: dict[str, float] | BackendError, lo: int, hi: int) -> float | None | BackendError:
    """:func:`logprob_score` of one item's distribution; a failed item passes its error through."""
    return dist if isinstance(dist, BackendError) else logprob_score(dist, lo, hi)


def score_prompts_each(backend: Backend, prompts: list[str], top_k: int = 20) -> list[float | None | BackendError]:
    """0–100 per judge prompt (None where the judge put < 25 % of its mass on numbers; the item's
    BackendError where its call failed for good)."""
    top = number_tokens(backend)
    digits = top < 100
    chats = [[{"role": "user", "content": p + (DIGIT_SCALE if digits else "")}] for p in prompts]
    hi = 9 if digits else 100
    out = []
    for d in next_token_logprobs_each(backend, chats, top_k=top_k):
        s = read_logprobs(d, 0, hi)
        out.append(s if s is None or isinstance(s, BackendError) else round(s * 100 / hi, 3))
    return out


def score_prompts(backend: Backend, prompts: list[str], top_k: int = 20) -> list[float | None]:
    """:func:`score_prompts_each` for callers that need every item: the first failed item raises."""
    out = score_prompts_each(backend, prompts, top_k)
    if errors := [v for v in out if isinstance(v, BackendError)]:
        raise errors[0]
    return out  # type: ignore[return-value]


class LogprobPromptJudge:
    """Protocol judge for a 0–100 ``{question}``/``{answer}`` prompt (the persona-vectors trait and
    coherence judges)."""

    def __init__(self, backend: Backend, template: str, name: str):
        self.backend, self.template, self.name = backend, template, name
        self.signal = f"llm_logprob:{getattr(backend, 'name', type(backend).__name__)}"

    def score(self, items: Sequence[JudgeItem]) -> list[Score]:
        prompts = [self.template.format(question=i.question, answer=i.response) for i in items]
        try:
            raw = score_prompts_each(self.backend, prompts) if prompts else []
        except NoLogprobs as e:
            return without_logprobs(self.name, len(prompts), e)
        return scaled_each(raw, 0, 100, NO_DIGITS)
