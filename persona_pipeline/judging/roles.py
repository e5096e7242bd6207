"""Role adherence 0–3 for role-play rollouts (the Assistant-Axis protocol), behind the judge protocol.

``logprob``: an LLM judge's digit distribution over 0–3 for "how fully is this
written as the role?". ``embedding`` (the small local judge): MiniLM similarity
of the response to its role's description and prompts vs the other roles'.
The protocol score is the 0–3 value / 3; :func:`score_roles` keeps the 0–3 scale
the transcripts and the persona-space filter use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..backends.openai_compat import next_token_logprobs_each
from ..contracts import RoleSpec
from .base import JudgeItem, Score, scaled_each, values
from .embedding import embedding_judge
from .llm import NO_DIGITS, read_logprobs

ROLE_JUDGE = """You are judging a role-play. The model was asked to play this role:
{role}: {description}

Question: {question}
Response: {response}

How fully is the response written as this role? 0 = not at all (a plain assistant answer or a refusal), 1 = an assistant answer with a hint of the role, 2 = mostly in role, 3 = fully in role. Answer with a single digit."""


class RoleJudge:
    """Protocol judge: ``items[i].persona_id`` names the role the response was asked to play."""

    def __init__(self, roles: Mapping[str, RoleSpec], method: str, backend=None):
        if method not in ("embedding", "logprob"):
            raise ValueError(f"role judge method {method!r}: use 'embedding' or 'logprob'")
        if method == "logprob" and backend is None:
            raise ValueError("the logprob role judge needs a judge backend")
        self.roles, self.method, self.backend = dict(roles), method, backend
        self.name = f"role_{method}"
        self.signal = "minilm_exemplar" if method == "embedding" else f"llm_logprob:{getattr(backend, 'name', '?')}"

    def score(self, items: Sequence[JudgeItem]) -> list[Score]:
        items = list(items)
        unknown = sorted({i.persona_id for i in items} - set(self.roles))
        if unknown:
            raise ValueError(f"role judge: unknown role(s) {unknown} (known: {sorted(self.roles)})")
        return self._embedding(items) if self.method == "embedding" else self._logprob(items)

    def _logprob(self, items: list[JudgeItem]) -> list[Score]:
        chats = [
            [
                {
                    "role": "user",
                    "content": ROLE_JUDGE.format(
                        role=i.persona_id,
                        description=self.roles[i.persona_id].description,
                        question=i.question,
                        response=i.response,
                    ),
                }
            ]
            for i in items
        ]
        dists = next_token_logprobs_each(self.backend, chats) if chats else []
        return scaled_each([read_logprobs(d, 0, 3) for d in dists], 0, 3, NO_DIGITS)

    def _embedding(self, items: list[JudgeItem]) -> list[Score]:
        texts = {name: [r.description, *r.system_prompts] for name, r in self.roles.items()}
        out: list[Score | None] = [None] * len(items)
        for name in dict.fromkeys(i.persona_id for i in items):
            idx = [k for k, i in enumerate(items) if i.persona_id == name]
            others = [t for other, ts in texts.items() if other != name for t in ts[:2]]
            raw = embedding_judge().score(texts[name], others, [items[k].response for k in idx])
            for k, v in zip(idx, raw):
                out[k] = Score(round(v / 100, 6))
        return out  # type: ignore[return-value]


def score_roles(judge, rows: list[dict], roles: Mapping[str, RoleSpec], method: str = "logprob") -> list[float | None]:
    """0–3 role adherence per rollout row (``role``, ``question``, ``response``); None where the LLM judge
    put < 25 % of its mass on digits."""
    items = [JudgeItem("", [{"role": "user", "content": r["question"]}], r["response"], r["role"]) for r in rows]
    backend = judge if method == "logprob" else None
    return [None if v is None else round(v, 3) for v in values(RoleJudge(roles, method, backend).score(items), 0, 3)]
