"""Using a trained persona simulator: definitions, next lines, adherence.

Shared by the models-stage checks, the CLI (``chat``, ``simulate``) and the
evaluation stage, so "ask the simulator for persona X's next line" means the
same prompt everywhere: the unrolled SFT prompt.
"""

from __future__ import annotations

import functools
import threading

from .backends import Backend, SamplingParams
from .contracts import PersonaSpec, Survey
from .judging.base import JudgeItem
from .judging.embedding import VoiceJudge
from .judging.reward import persona_scores


def definitions(persona_specs: list[dict], surveys: dict | None = None, compact: bool = True) -> dict[str, str]:
    """Persona id → definition: compact for simulator prompts, full for judges (specs and survey people)."""
    out = {s["id"]: PersonaSpec(**s).definition(compact=compact) for s in persona_specs}
    for sid, raw in (surveys or {}).items():
        p = Survey(**raw).profile
        out[sid] = f"{p.name}, {p.description}. {p.bio} {p.values}"
    return out


def voices(persona_specs: list[dict], surveys: dict | None = None) -> dict[str, list[str]]:
    """Each persona's own words: spec example lines and traits; a survey person's reasons and description."""
    out = {s["id"]: PersonaSpec(**s).voice() for s in persona_specs}
    for sid, raw in (surveys or {}).items():
        survey = Survey(**raw)
        out[sid] = [survey.profile.description, *[i.reasoning for i in survey.items if i.reasoning]][:12]
    return out


def voice_judge(persona_specs: list[dict], surveys: dict | None = None) -> VoiceJudge:
    """The local persona judge, recognising both the compact and the full definition text."""
    owner = {
        text: pid for compact in (True, False) for pid, text in definitions(persona_specs, surveys, compact).items()
    }
    return VoiceJudge(voices(persona_specs, surveys), owner)


def next_lines(backend: Backend, rows: list[dict], params: SamplingParams) -> list[str]:
    """``rows`` carry a ready ``prompt`` (see ``train_rl.rl_prompts``); one batched call."""
    return backend.complete([r["prompt"] for r in rows], params)


def greedy_lines(base_path: str, adapter: str | None, rows: list[dict], tokens: int) -> list[str]:
    """Greedy next lines of the policy (``base_path`` + ``adapter``) for ``rows``, cached per process:
    the SFT/RL before-after reward and the models' checks read the same held-out lines, so a run
    generates them once. A retrained adapter (new weights mtime) is a new cache key."""
    import json
    from pathlib import Path

    weights = Path(adapter) / "adapter_model.safetensors" if adapter else None
    stamp = weights.stat().st_mtime_ns if weights and weights.exists() else 0
    return list(_cached_lines(base_path, adapter, stamp, json.dumps(rows, sort_keys=True), tokens))


@functools.lru_cache(maxsize=4)
def _cached_lines(base_path: str, adapter: str | None, _stamp: int, rows_json: str, tokens: int) -> tuple[str, ...]:
    import json

    from .policy import policy_backend

    backend = policy_backend(base_path, adapter, exact=True)  # base and adapter lines are compared
    return tuple(next_lines(backend, json.loads(rows_json), SamplingParams(max_new_tokens=tokens, temperature=0)))


def adherence(judge, rows: list[dict], lines: list[str], method: str = "logprob") -> tuple[float, list[float | None]]:
    """Mean judge persona score in [-1, 1] of ``lines`` (failed judgements excluded, and returned)."""
    import json

    items = [JudgeItem(r["spec"], json.loads(r["history"]), line) for r, line in zip(rows, lines)]
    scores = persona_scores(judge, items, method)
    valid = [s for s in scores if s is not None]
    return (sum(valid) / len(valid) if valid else float("nan")), scores


class PersonaBackend:
    """A Backend that answers *as the persona*: the chat it gets is the dialogue so far
    seen from the assistant's side (``user`` = the persona's earlier lines), and it
    returns the persona's next line via the unrolled simulator prompt.

    This is what ``serve`` exposes as ``persona-simulator:<id>``.
    """

    def __init__(
        self, inner: Backend, persona_id: str, definition: str, name: str | None = None, topic: str | None = None
    ):
        self.inner, self.persona_id, self.definition = inner, persona_id, definition
        self.name = name or f"persona-simulator:{persona_id}"
        self.topic = topic  # what the opening line is about (``simulate --topic``); None: the persona picks

    def model_chat(self, chat: list[dict]) -> list[dict]:
        """The simulator prompt the inner model sees for ``chat`` (``serve`` counts its tokens)."""
        from .prompts import simulator_prompt

        history = [m for m in chat if m["role"] in ("user", "assistant")]
        return simulator_prompt(self.persona_id, self.definition, history, topic=self.topic)

    def complete(self, chats: list[list[dict]], params: SamplingParams) -> list[str]:
        return self.inner.complete([self.model_chat(c) for c in chats], params)

    def next_token_logprobs(self, chats: list[list[dict]], top_k: int = 20) -> list[dict[str, float]]:
        return self.inner.next_token_logprobs([self.model_chat(c) for c in chats], top_k)


class LazyBackend:
    """Loads the wrapped backend on first use, so a server with many models starts instantly."""

    def __init__(self, factory, name: str):
        self._factory, self._backend, self.name = factory, None, name
        self._loading = threading.Lock()

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            with self._loading:  # server threads may ask at once: load one copy, not one per thread
                if self._backend is None:
                    self._backend = self._factory()
        return self._backend

    def complete(self, chats, params):
        return self.backend.complete(chats, params)

    def next_token_logprobs(self, chats, top_k: int = 20):
        return self.backend.next_token_logprobs(chats, top_k)
