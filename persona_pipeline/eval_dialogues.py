"""Held-out test dialogues for every way of making a persona, advanced in lockstep batches.

A *contestant* is (method, persona): which loaded model writes the persona's
lines (base / sft / rl), how its prompt is built from the dialogue so far, and
an optional steering vector. Each step, every contestant sharing a model speaks
in ONE batched call (per-row steering vectors at each row's layer; other rows get
zeros there), then the assistant answers every dialogue in one call.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .backends import Backend, SamplingParams
from .contracts import Conversation, ConversationMetadata, Turn
from .hooks import Steer
from .prompts import assistant_chat
from .teacher_dialogues import clean_persona_line

PromptFn = Callable[[str, list[dict]], list[dict]]  # (topic, turns so far) -> chat for the persona's next line


@dataclass
class Contestant:
    method: str
    persona_id: str
    model: str
    prompt: PromptFn
    vector: torch.Tensor | None = None
    layer: int | None = None


@dataclass
class _Dialogue:
    who: Contestant
    topic: str
    turns: list[dict]
    ended_at: int | None = None  # the persona turn (1-based) where it first wrote the end marker

    @property
    def id(self) -> str:
        return f"{self.who.method}-{self.who.persona_id}-{hashlib.sha1(self.topic.encode()).hexdigest()[:8]}"


def _speak(group: list[_Dialogue], backend: Backend, params: SamplingParams) -> None:
    chats = [d.who.prompt(d.topic, d.turns) for d in group]
    layers = sorted({d.who.layer for d in group if d.who.vector is not None})
    if layers:  # one Steer per layer; a row that is not steered there gets a zero vector (adds nothing)
        hidden = next(d.who.vector for d in group if d.who.vector is not None).shape[-1]
        steers = [
            Steer(
                vector=torch.stack(
                    [
                        d.who.vector if d.who.vector is not None and d.who.layer == layer else torch.zeros(hidden)
                        for d in group
                    ]
                ),
                layer=layer,
                coef=1.0,
            )
            for layer in layers
        ]
        with backend.steered(steers):
            lines = backend.complete(chats, params)
    else:
        lines = backend.complete(chats, params)
    for d, line in zip(group, lines):
        text, ended = clean_persona_line(line, "")
        d.turns.append({"role": "user", "content": text})
        if ended and d.ended_at is None:  # the test dialogue runs on (turns 8-10 are measured); the end is recorded
            d.ended_at = len(d.turns) // 2 + 1


def _groups(dialogues: list[_Dialogue]) -> list[list[_Dialogue]]:
    """Dialogues that share one batched call: the same model (steered rows carry their own layer and vector)."""
    groups: dict[str, list[_Dialogue]] = {}
    for d in dialogues:
        groups.setdefault(d.who.model, []).append(d)
    return [groups[k] for k in sorted(groups)]


def next_lines(
    contestants: list[Contestant],
    contexts: list[dict],
    backends: dict[str, Backend],
    max_new_tokens: int = 40,
    seed: int = 0,
) -> dict[str, dict[str, str]]:
    """Every contestant's next line for the same contexts ({id, persona_id, topic, history}): {context id: {method: line}}."""
    dialogues, owner = [], []
    for ctx in contexts:
        for c in (c for c in contestants if c.persona_id == ctx["persona_id"]):
            dialogues.append(_Dialogue(c, ctx["topic"], [dict(t) for t in ctx["history"]]))
            owner.append(ctx["id"])
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.7, seed=seed)
    for group in _groups(dialogues):
        _speak(group, backends[group[0].who.model], params)
    out: dict[str, dict[str, str]] = {}
    for cid, d in zip(owner, dialogues):
        out.setdefault(cid, {})[d.who.method] = d.turns[-1]["content"]
    return out


def run_dialogues(
    contestants: list[Contestant],
    topics: dict[str, list[str]],
    backends: dict[str, Backend],
    assistant: Backend,
    turns: int,
    persona_tokens: int = 40,
    assistant_tokens: int = 64,
    temperature: float = 0.7,
    seed: int = 0,
) -> list[Conversation]:
    """``turns`` turns per dialogue (persona first) for every contestant × its persona's topics."""
    dialogues = [_Dialogue(c, t, []) for c in contestants for t in topics[c.persona_id]]
    groups = _groups(dialogues)
    for step in range(turns):
        tokens = persona_tokens if step % 2 == 0 else assistant_tokens
        params = SamplingParams(max_new_tokens=tokens, temperature=temperature, seed=seed + step)
        if step % 2 == 0:
            for group in groups:
                _speak(group, backends[group[0].who.model], params)
        else:
            replies = assistant.complete([assistant_chat(d.turns) for d in dialogues], params)
            for d, reply in zip(dialogues, replies):
                d.turns.append({"role": "assistant", "content": reply.strip()})
    return [_conversation(d) for d in dialogues]


def _conversation(d: _Dialogue) -> Conversation:
    return Conversation(
        id=d.id,
        persona_id=d.who.persona_id,
        topic=d.topic,
        persona_role="user",
        turns=[Turn(role=t["role"], content=t["content"]) for t in d.turns],
        metadata=ConversationMetadata(
            scenario_type="eval",
            source="simulated",
            generation_model=d.who.method,
            split="test",
            ended_by_stop_rule=d.ended_at is not None,
            extra=json.dumps({"ended_at_turn": d.ended_at}) if d.ended_at is not None else None,
        ),
    )


def endings(convs: list[Conversation]) -> list[dict]:
    """Per method: how many test dialogues the persona ended by its stop rule (wrote ``[END]``), and at which turn."""
    rows = []
    for method in sorted({c.metadata.generation_model for c in convs}):
        mine = [c for c in convs if c.metadata.generation_model == method]
        at = sorted(json.loads(c.metadata.extra)["ended_at_turn"] for c in mine if c.metadata.ended_by_stop_rule)
        rows.append(
            {
                "method": method,
                "dialogues": len(mine),
                "ended_by_stop_rule": round(len(at) / len(mine), 3),
                "end_turns": ", ".join(map(str, at)) or "none",
            }
        )
    return rows


def persona_turns(conv: Conversation) -> list[dict]:
    """Every persona line with the history before it and its 1-based persona-turn index."""
    turns = [t.model_dump() for t in conv.turns]
    return [
        {
            "conversation_id": conv.id,
            "persona_id": conv.persona_id,
            "method": conv.metadata.generation_model,
            "turn": k // 2 + 1,
            "history": turns[:k],
            "line": t["content"],
        }
        for k, t in enumerate(turns)
        if t["role"] == conv.persona_role
    ]
