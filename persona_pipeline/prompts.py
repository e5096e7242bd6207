"""Prompt shapes, in one place so every backend and stage uses the same words.

The teacher prompt is deliberately compact (name, description, three traits,
a few example lines, the first stop rule): the full spec goes to judges and
into SFT prompts, but a small local teacher follows a short "You are X" far
better than a long rubric. The teacher plays the persona with roles flipped: the persona's own lines are
the model's ("assistant") turns and the assistant's replies arrive as "user"
turns. That is the usual way to make a chat model act as a *user* simulator,
and small models follow it far better than a transcript-in-a-prompt.
"""

from __future__ import annotations

from .contracts import PersonaSpec, persona_tag

END_MARK = "[END]"

TEACHER_SYSTEM = """You are {name}, a human user chatting with an AI assistant about: {topic}
{description}
How you write: {traits}
You sound like: {examples}
You are NOT an assistant: never offer help, never say you are an AI. Write only your next short message.
When {stop}, finish your message with {end}."""

OPENING_CUE = "(You start the conversation. Your topic: {topic})"

ASSISTANT_SYSTEM = "You are a helpful, knowledgeable AI assistant. Answer the user clearly and concisely."

SIMULATOR_SYSTEM = """You are a user persona simulator. Your current persona is '{id}'.
[Definition: {definition}]
Write only the persona's next message."""


def teacher_chat(spec: PersonaSpec, topic: str, turns: list[dict]) -> list[dict]:
    """Chat for the teacher to write the persona's next (user-side) line."""
    system = TEACHER_SYSTEM.format(
        name=spec.name.split(",")[0],
        topic=topic,
        description=spec.description,
        traits=" ".join(spec.behavioral_traits[:3]),
        examples=" / ".join(f'"{x}"' for x in spec.example_lines[:4]),
        stop=spec.stop_rules[0][0].lower() + spec.stop_rules[0][1:].rstrip("."),
        end=END_MARK,
    )
    chat = [{"role": "system", "content": system}]
    chat.append({"role": "user", "content": OPENING_CUE.format(topic=topic)})
    return chat + flip(turns)


NEUTRAL_USER_SYSTEM = """You are a human user chatting with an AI assistant about: {topic}
You are NOT an assistant: never offer help, never say you are an AI. Write only your next short message."""


def flip(turns: list[dict]) -> list[dict]:
    """The dialogue seen from the simulated user's side: its own lines become the model's turns."""
    return [{"role": "assistant" if t["role"] == "user" else "user", "content": t["content"]} for t in turns]


def neutral_user_chat(topic: str, turns: list[dict] = ()) -> list[dict]:
    """The teacher's user-simulator chat with no persona in it: what steering alone must turn into the persona."""
    return [
        {"role": "system", "content": NEUTRAL_USER_SYSTEM.format(topic=topic)},
        {"role": "user", "content": OPENING_CUE.format(topic=topic)},
        *flip(list(turns)),
    ]


def assistant_chat(turns: list[dict], system: str = ASSISTANT_SYSTEM) -> list[dict]:
    return [{"role": "system", "content": system}] + [{"role": t["role"], "content": t["content"]} for t in turns]


def render_history(turns: list[dict]) -> str:
    return "\n".join(f"{t['role']}: {t['content']}" for t in turns)


def simulator_prompt(spec_id: str, definition: str, history: list[dict]) -> list[dict]:
    """The unrolled SFT prompt: system definition, then ``[PERSONA: id]`` + history."""
    body = f"{persona_tag(spec_id)}\n[HISTORY]\n{render_history(history) if history else '<empty>'}"
    return [
        {"role": "system", "content": SIMULATOR_SYSTEM.format(id=spec_id, definition=definition)},
        {"role": "user", "content": body},
    ]
