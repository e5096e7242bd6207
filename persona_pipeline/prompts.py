"""Prompt shapes, in one place so every backend and stage uses the same words.

The teacher prompt is compact by default (name, description, three traits,
a few example lines, the first stop rule): a small local teacher follows a short
"You are X" far better than a long rubric. A capable (endpoint) teacher gets the
whole spec instead (``teacher_chat(full=True)``: constraints, every stop rule, edge
cases, example lines); ``synthetic_conversations`` picks by teacher kind. The teacher plays the persona with roles flipped: the persona's own lines are
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

TEACHER_FULL_SYSTEM = """You are {name}, a human user chatting with an AI assistant about: {topic}
{description}
How you write:
{traits}
Rules you always keep:
{constraints}
You end the conversation as soon as any of these happens, and then finish your message with {end}:
{stops}
Edge cases, and how you handle them:
{edges}
Lines that sound like you:
{examples}
You are NOT an assistant: never offer help, never say you are an AI. Write only your next message."""

OPENING_CUE = "(You start the conversation. Your topic: {topic})"

ASSISTANT_SYSTEM = "You are a helpful, knowledgeable AI assistant. Answer the user clearly and concisely."

SIMULATOR_SYSTEM = """You are a user persona simulator. Your current persona is '{id}'.
[Definition: {definition}]
Write only the persona's next message."""


def split_end(text: str) -> tuple[str, bool]:
    """(the line without the end marker, whether the persona ended the dialogue with it).

    Text after the marker is dropped (a model that wrote ``[END]`` is done), unless nothing
    came before it.
    """
    if END_MARK not in text:
        return text, False
    before, _, after = text.partition(END_MARK)
    return (before if before.strip() else after.replace(END_MARK, " ")).strip(), True


def teacher_chat(spec: PersonaSpec, topic: str, turns: list[dict], full: bool = False) -> list[dict]:
    """Chat for the teacher to write the persona's next (user-side) line.

    ``full``: the whole spec (every constraint, stop rule, edge case and example line) for a
    capable (endpoint) teacher; otherwise the compact form the embedded 135M model follows.
    """
    if full:
        bullets = lambda xs: "\n".join(f"- {x}" for x in xs)
        system = TEACHER_FULL_SYSTEM.format(
            name=spec.name.split(",")[0],
            topic=topic,
            description=spec.description,
            traits=bullets(spec.behavioral_traits),
            constraints=bullets(spec.constraints),
            stops=bullets(spec.stop_rules),
            edges=bullets(spec.edge_case_boundaries),
            examples=bullets(f'"{x}"' for x in spec.example_lines),
            end=END_MARK,
        )
        return [
            {"role": "system", "content": system},
            {"role": "user", "content": OPENING_CUE.format(topic=topic)},
            *flip(turns),
        ]
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


def simulator_prompt(spec_id: str, definition: str, history: list[dict], topic: str | None = None) -> list[dict]:
    """The unrolled SFT prompt: system definition, then ``[PERSONA: id]`` (+ ``[TOPIC: ...]``) + history.

    The topic is given for the opening line only (empty history): that is where the persona
    must bring its subject up; later lines follow the dialogue itself.
    """
    tag = persona_tag(spec_id) + (f"\n[TOPIC: {topic}]" if topic and not history else "")
    body = f"{tag}\n[HISTORY]\n{render_history(history) if history else '<empty>'}"
    return [
        {"role": "system", "content": SIMULATOR_SYSTEM.format(id=spec_id, definition=definition)},
        {"role": "user", "content": body},
    ]
