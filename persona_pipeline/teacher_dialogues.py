"""Teacher-written dialogues: the persona (user side) and an assistant, turn by turn.

All dialogues of a run advance together — one batched teacher call for every
persona line of a step, one batched assistant call for every reply — so the
cost is (turns × batched calls), not (dialogues × turns) single calls.

Progress is checkpointed after every step in a small work cache keyed by a
fingerprint of the inputs: a killed run resumes where it stopped, finished
dialogues are never regenerated and never duplicated.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .backends import Backend, SamplingParams
from .contracts import Conversation, ConversationMetadata, PersonaSpec, Topic, Turn
from .prompts import assistant_chat, split_end, teacher_chat
from .quality import PERSONA_BREAK
from .storage import write_json


@dataclass
class DialogueSettings:
    min_turns: int = 8
    max_turns: int = 10
    persona_max_new_tokens: int = 48
    assistant_max_new_tokens: int = 64
    temperature: float = 0.8
    max_line_retries: int = 2
    full_spec: bool = False  # the whole spec in the teacher prompt (capable endpoint teachers)
    seed: int = 0


@dataclass
class Dialogue:
    id: str
    persona_id: str
    topic: str
    scenario_type: str
    turns: list[dict] = field(default_factory=list)
    done: bool = False
    ended_by_stop_rule: bool = False


def plan_dialogues(
    spec: PersonaSpec, topics: list[Topic], n: int, seed: int = 0, split: str = "train"
) -> list[Dialogue]:
    """Pick ``n`` topics of one split for a persona, favouring its scenario affinity, deterministically.

    Evaluation stages ask for ``split="heldout"``: topics no training data ever used.
    """
    train = [t for t in topics if t.split == split]
    if not train:
        raise ValueError(f"no {split} topics: the topic list has none with split={split!r}")
    rng = random.Random(f"{seed}:{spec.id}")
    preferred = [t for t in train if t.scenario_type in spec.scenario_affinity]
    others = [t for t in train if t.scenario_type not in spec.scenario_affinity]
    rng.shuffle(preferred)
    rng.shuffle(others)
    ordered = preferred[: (n * 3 + 3) // 4] + others  # ~75% on-affinity, the rest for variety
    ordered += [t for t in preferred if t not in ordered]
    chosen = ordered[:n]
    return [
        Dialogue(
            id=f"{spec.id}-{hashlib.sha1(t.text.encode()).hexdigest()[:8]}",
            persona_id=spec.id,
            topic=t.text,
            scenario_type=t.scenario_type,
        )
        for t in chosen
    ]


_LABEL = re.compile(r"^\s*(user|persona|me|human|[A-Z][a-z]+)\s*:\s*", re.IGNORECASE)


def clean_persona_line(text: str, name: str) -> tuple[str, bool]:
    """Strip labels/quotes, keep the first paragraph; report whether the stop mark was used."""
    text, ended = split_end(text)
    text = text.strip().split("\n\n")[0]
    first = name.split()[0] if name else ""
    if first and text.lower().startswith(first.lower() + ":"):
        text = text[len(first) + 1 :]
    text = _LABEL.sub("", text, count=1) if _LABEL.match(text) and len(text.split(":")[0]) < 12 else text
    return text.strip().strip('"').strip(), ended


def line_ok(text: str) -> bool:
    return bool(text.strip()) and not PERSONA_BREAK.search(text)


class WorkCache:
    """Per-persona checkpoint of dialogues in flight, keyed by that persona's input fingerprint.

    Editing one persona's spec changes only its fingerprint, so only its
    dialogues are regenerated.
    """

    def __init__(self, root: Path, fingerprints: dict[str, str]):
        self.root, self.fingerprints = root, fingerprints

    def _path(self, persona_id: str) -> Path:
        return self.root / persona_id / f"{self.fingerprints[persona_id]}.json"

    def load(self, persona_id: str) -> dict[str, Dialogue]:
        path = self._path(persona_id)
        if not path.exists():
            return {}
        return {d["id"]: Dialogue(**d) for d in json.loads(path.read_text())["dialogues"]}

    def save(self, dialogues: list[Dialogue]) -> None:
        by_persona: dict[str, list[dict]] = {}
        for d in dialogues:
            by_persona.setdefault(d.persona_id, []).append(asdict(d))
        for pid, rows in by_persona.items():
            write_json(self._path(pid), {"fingerprint": self.fingerprints[pid], "dialogues": rows})


def fingerprint(*parts) -> str:
    blob = json.dumps(
        parts, sort_keys=True, default=lambda o: o.model_dump() if hasattr(o, "model_dump") else asdict(o)
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def simulate(
    dialogues: list[Dialogue],
    specs: dict[str, PersonaSpec],
    teacher: Backend,
    assistant: Backend,
    cfg: DialogueSettings,
    cache: WorkCache | None = None,
    on_step=None,
) -> list[Conversation]:
    """Advance every unfinished dialogue until it ends; return them all as Conversations."""
    if cache:
        for d in dialogues:
            saved = cache.load(d.persona_id).get(d.id)
            if saved:
                d.turns, d.done, d.ended_by_stop_rule = saved.turns, saved.done, saved.ended_by_stop_rule
    step = 0
    while active := [d for d in dialogues if not d.done]:
        persona_side = [d for d in active if len(d.turns) % 2 == 0]
        assistant_side = [d for d in active if len(d.turns) % 2 == 1]
        if persona_side:
            _persona_step(persona_side, specs, teacher, cfg, step)
        if assistant_side:
            _assistant_step(assistant_side, assistant, cfg, step)
        step += 1
        if cache:
            cache.save(dialogues)
        if on_step:
            on_step(step, dialogues)
    return [to_conversation(d, teacher.name) for d in dialogues]


def _persona_step(batch: list[Dialogue], specs, teacher: Backend, cfg: DialogueSettings, step: int) -> None:
    chats = [teacher_chat(specs[d.persona_id], d.topic, d.turns, cfg.full_spec) for d in batch]
    params = SamplingParams(
        max_new_tokens=cfg.persona_max_new_tokens, temperature=cfg.temperature, seed=cfg.seed + step
    )
    raw = teacher.complete(chats, params)
    lines = [clean_persona_line(r, specs[d.persona_id].name) for r, d in zip(raw, batch)]
    for attempt in range(cfg.max_line_retries):  # resample only the lines that broke character
        bad = [i for i, (text, _) in enumerate(lines) if not line_ok(text)]
        if not bad:
            break
        retry = SamplingParams(
            max_new_tokens=cfg.persona_max_new_tokens,
            temperature=min(1.3, cfg.temperature + 0.2 * (attempt + 1)),
            seed=cfg.seed + 1000 * (attempt + 1) + step,
        )
        again = teacher.complete([chats[i] for i in bad], retry)
        for i, r in zip(bad, again):
            lines[i] = clean_persona_line(r, specs[batch[i].persona_id].name)
    for d, (text, ended) in zip(batch, lines):
        d.turns.append({"role": "user", "content": text})
        if (ended and len(d.turns) >= cfg.min_turns) or len(d.turns) >= cfg.max_turns:
            d.done, d.ended_by_stop_rule = True, ended


def _assistant_step(batch: list[Dialogue], assistant: Backend, cfg: DialogueSettings, step: int) -> None:
    params = SamplingParams(max_new_tokens=cfg.assistant_max_new_tokens, temperature=0.7, seed=cfg.seed + 500 + step)
    replies = assistant.complete([assistant_chat(d.turns) for d in batch], params)
    for d, reply in zip(batch, replies):
        d.turns.append({"role": "assistant", "content": reply.strip()})
        if len(d.turns) >= cfg.max_turns:
            d.done = True


def to_conversation(d: Dialogue, model_name: str) -> Conversation:
    return Conversation(
        id=d.id,
        persona_id=d.persona_id,
        topic=d.topic,
        persona_role="user",
        turns=[Turn(role=t["role"], content=t["content"]) for t in d.turns],
        metadata=ConversationMetadata(
            scenario_type=d.scenario_type,
            source="synthetic",
            generation_model=model_name,
            ended_by_stop_rule=d.ended_by_stop_rule,
        ),
    )


__all__ = ["Dialogue", "DialogueSettings", "WorkCache", "fingerprint", "plan_dialogues", "simulate"]


def converse(
    dialogues: list[Dialogue],
    personas: dict[str, Backend],
    assistant: Backend,
    turns: int,
    persona_tokens: int = 48,
    assistant_tokens: int = 96,
    temperature: float = 0.7,
    seed: int = 0,
    source: str = "simulated",
    model_name: str = "persona-simulator",
    params: SamplingParams | None = None,
) -> list[Conversation]:
    """Dialogues between trained persona simulators (``PersonaBackend``) and an assistant.

    Every step is one batched call per persona backend plus one for the
    assistant; the persona speaks first and the dialogue runs ``turns`` turns, or
    ends earlier where the persona writes the end marker (its learned stop rule).
    ``params`` (temperature, top-p, repetition penalty) applies to the persona's lines.
    """
    base = params or SamplingParams(temperature=temperature)
    for step in range(turns):
        active = [d for d in dialogues if not d.done]
        if not active:
            break
        if step % 2 == 0:
            persona = base.model_copy(update={"max_new_tokens": persona_tokens, "seed": seed + step})
            for pid in sorted({d.persona_id for d in active}):
                group = [d for d in active if d.persona_id == pid]
                lines = personas[pid].complete([d.turns for d in group], persona)
                for d, line in zip(group, lines):
                    text, ended = clean_persona_line(line, "")
                    d.turns.append({"role": "user", "content": text})
                    d.done = d.ended_by_stop_rule = ended
        else:
            reply = SamplingParams(max_new_tokens=assistant_tokens, temperature=0.7, seed=seed + step)
            replies = assistant.complete([assistant_chat(d.turns) for d in active], reply)
            for d, answer in zip(active, replies):
                d.turns.append({"role": "assistant", "content": answer.strip()})
    convs = [to_conversation(d, model_name) for d in dialogues]
    for c in convs:
        c.metadata.source = source
    return convs
