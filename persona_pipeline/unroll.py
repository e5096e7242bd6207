"""Unroll conversations into SFT pairs, exactly as the seed pipeline does.

One pair per persona turn: the prompt is the simulator system prompt with the
persona definition, then ``[PERSONA: id]`` and the history up to that turn; the
completion is only the persona's next utterance (the last one ends with ``[END]`` when the
dialogue ended by a stop rule; the opening prompt names the topic). Conversational
prompt/completion lists are what TRL's SFTTrainer trains on directly
(completion-only loss).
"""

from __future__ import annotations

import json
from pathlib import Path

from .contracts import ChatMessage, Conversation, SftPair
from .prompts import END_MARK, simulator_prompt
from .storage import atomic_path


def unroll(conv: Conversation, definition: str) -> list[SftPair]:
    pairs = []
    history = [{"role": t.role, "content": t.content} for t in conv.turns]
    indices = conv.persona_turn_indices()
    for i in indices:
        prompt = simulator_prompt(conv.persona_id, definition, history[:i], topic=conv.topic)
        line = conv.turns[i].content
        pairs.append(
            SftPair(
                id=f"{conv.id}@{i}",
                persona_id=conv.persona_id,
                source=conv.metadata.source,
                conversation_id=conv.id,
                turn_index=i,
                prompt=[ChatMessage(**m) for m in prompt],
                completion=[ChatMessage(role="assistant", content=ended(line, conv, i == indices[-1]))],
            )
        )
    return pairs


def ended(line: str, conv: Conversation, last: bool) -> str:
    """The persona's last line keeps the end marker when the dialogue ended by a stop rule: the
    simulator learns *when* to end (and ``simulate`` / ``chat`` / ``serve`` stop there)."""
    if last and conv.metadata.ended_by_stop_rule and END_MARK not in line:
        return f"{line.rstrip()} {END_MARK}"
    return line


def export_customjson(pairs: list[SftPair], path: Path) -> int:
    """nanochat CustomJSON: one JSON list of alternating user/assistant messages per line."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for p in pairs:
            system = next(m.content for m in p.prompt if m.role == "system")
            user = "\n\n".join([system] + [m.content for m in p.prompt if m.role == "user"])
            f.write(
                json.dumps(
                    [{"role": "user", "content": user}, {"role": "assistant", "content": p.completion[0].content}],
                    ensure_ascii=False,
                )
                + "\n"
            )
    return len(pairs)
