"""Pydantic contracts for every record that crosses a stage boundary.

Loaders validate input files against these models and the Parquet IO manager
stores their ``model_dump(mode="json")`` form, so a record means the same thing
in every stage. Field names follow the seed pipeline's JSONL layout.
"""

from __future__ import annotations

import re
import string
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ID_PATTERN = r"^[a-z0-9][a-z0-9_\-]*$"
Role = Literal["system", "user", "assistant"]
Source = Literal["synthetic", "hitl", "survey", "simulated"]


class Strict(BaseModel):
    """Base for input contracts: unknown keys are typos, not extensions."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def check_template(text: str, fields: tuple[str, ...], what: str) -> str:
    """``text`` is filled with ``str.format``: it must name exactly ``fields`` and nothing else.

    Checked with ``string.Formatter`` at load time, so a stray brace fails here, not after
    every answer has been generated.
    """
    try:
        found = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as e:
        raise ValueError(f"{what} is not a valid template ({e}); write literal braces as {{{{ and }}}}") from None
    missing = [f"{{{f}}}" for f in fields if f not in found]
    if missing:
        raise ValueError(f"{what} must contain the placeholders {missing}")
    other = sorted(found - set(fields))
    if other:
        raise ValueError(
            f"{what} has the template field(s) {['{' + o + '}' for o in other]}; only {['{' + f + '}' for f in fields]} "
            "are filled: write literal braces as {{ and }}"
        )
    return text


def _non_empty(values: list[str], what: str) -> list[str]:
    if not values or any(not v.strip() for v in values):
        raise ValueError(f"{what} must be a non-empty list of non-empty strings")
    return values


class PersonaSpec(Strict):
    """A simulated user: who they are, how they talk and when they stop."""

    id: str = Field(pattern=ID_PATTERN)
    name: str = Field(min_length=1)
    description: str = Field(min_length=10)
    behavioral_traits: list[str]
    constraints: list[str]
    stop_rules: list[str]
    edge_case_boundaries: list[str]
    example_lines: list[str]
    scenario_affinity: list[str] = Field(default_factory=list)

    @field_validator("behavioral_traits", "constraints", "stop_rules", "edge_case_boundaries", "example_lines")
    @classmethod
    def _lists(cls, v: list[str], info) -> list[str]:
        return _non_empty(v, info.field_name)

    def definition(self, compact: bool = False) -> str:
        """The persona definition for system prompts.

        ``compact`` (who + traits) is what the simulator is trained on: short
        prompts train faster and a small model attends to them better. The full
        form (constraints, stop rules, edge cases, examples) goes to judges.
        """
        bullets = lambda xs: "\n".join(f"- {x}" for x in xs)
        if compact:
            return f"{self.name}: {self.description}\nTraits:\n{bullets(self.behavioral_traits)}"
        return (
            f"{self.name}: {self.description}\n"
            f"Traits:\n{bullets(self.behavioral_traits)}\n"
            f"Constraints:\n{bullets(self.constraints)}\n"
            f"Ends the conversation when:\n{bullets(self.stop_rules)}\n"
            f"Edge cases:\n{bullets(self.edge_case_boundaries)}\n"
            f"Sounds like:\n{bullets(self.example_lines)}"
        )

    def voice(self) -> list[str]:
        """The persona's own words (example lines, then traits): what embedding judges compare a line with."""
        return [*self.example_lines, *self.behavioral_traits]


class Topic(Strict):
    text: str = Field(min_length=3)
    scenario_type: str = Field(pattern=ID_PATTERN)
    split: Literal["train", "heldout"] = "train"


class Turn(Strict):
    role: Role
    content: str
    alternatives: list[str] = Field(default_factory=list)


class ConversationMetadata(BaseModel):
    model_config = ConfigDict(extra="forbid")

    quality_score: float | None = None
    safety_flags: list[str] = Field(default_factory=list)
    scenario_type: str = "general"
    source: Source = "synthetic"
    generation_model: str = "unknown"
    num_turns: int = 0
    ended_by_stop_rule: bool = False
    split: Literal["train", "test"] = "train"
    path: int = 0
    filter_reason: str | None = None
    extra: str | None = None  # the source file's own metadata block, as JSON text (kept whole, Parquet-safe)


class Conversation(BaseModel):
    """One dialogue. ``persona_role`` says which side the persona speaks."""

    model_config = ConfigDict(extra="forbid")

    id: str
    persona_id: str = Field(pattern=ID_PATTERN)
    topic: str
    persona_role: Literal["user", "assistant"] = "user"
    turns: list[Turn]
    metadata: ConversationMetadata = Field(default_factory=ConversationMetadata)

    @model_validator(mode="after")
    def _count(self) -> Conversation:
        self.metadata.num_turns = len(self.turns)
        return self

    def persona_turn_indices(self) -> list[int]:
        return [i for i, t in enumerate(self.turns) if t.role == self.persona_role]


class ChatMessage(BaseModel):
    role: Role
    content: str


class SftPair(BaseModel):
    """A conversational prompt/completion pair, the layout TRL trains on directly."""

    id: str
    persona_id: str
    source: Source
    conversation_id: str
    turn_index: int
    prompt: list[ChatMessage]
    completion: list[ChatMessage]


class InstructionPair(Strict):
    pos: str = Field(min_length=5)
    neg: str = Field(min_length=5)


class Trait(Strict):
    """A persona-vectors trait artifact: contrastive instructions, questions, judge prompt."""

    trait: str = Field(pattern=ID_PATTERN)
    description: str = Field(min_length=10)
    instructions: list[InstructionPair] = Field(min_length=5)
    extract_questions: list[str] = Field(min_length=20)
    eval_questions: list[str] = Field(min_length=20)
    eval_prompt: str

    @field_validator("eval_prompt")
    @classmethod
    def _placeholders(cls, v: str) -> str:
        return check_template(v, ("question", "answer"), "eval_prompt")

    @model_validator(mode="after")
    def _disjoint(self) -> Trait:
        if set(self.extract_questions) & set(self.eval_questions):
            raise ValueError("extract_questions and eval_questions must not overlap")
        return self


class RoleSpec(Strict):
    """A role for the persona-space study; ``default`` is the plain assistant."""

    role: str = Field(pattern=ID_PATTERN)
    description: str = Field(min_length=3)
    system_prompts: list[str] = Field(min_length=3)


class RoleSet(BaseModel):
    roles: list[RoleSpec]
    questions: list[str]


SurveyKind = Literal["likert", "choice", "open"]


class SurveyItem(Strict):
    id: str = Field(pattern=ID_PATTERN)
    question: str = Field(min_length=5)
    category: str = Field(pattern=ID_PATTERN)
    kind: SurveyKind
    scale: list[int] | None = None
    scale_labels: list[str] | None = None
    options: list[str] | None = None
    answer: int | str
    reasoning: str | None = None
    confidence: float | None = Field(default=None, ge=0, le=1)
    rephrase_of: str | None = None
    follow_ups: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _answer_fits_kind(self) -> SurveyItem:
        if self.kind == "likert":
            lo, hi = self.scale or (1, 5)
            if not isinstance(self.answer, int) or not lo <= self.answer <= hi:
                raise ValueError(f"likert answer {self.answer!r} is outside the scale {lo}..{hi}")
            if self.scale_labels and len(self.scale_labels) != hi - lo + 1:
                raise ValueError(f"scale_labels needs {hi - lo + 1} labels for scale {lo}..{hi}")
        elif self.kind == "choice":
            if not self.options or self.answer not in self.options:
                raise ValueError(f"choice answer {self.answer!r} is not one of options {self.options}")
        elif not isinstance(self.answer, str) or not self.answer.strip():
            raise ValueError("open answer must be non-empty text")
        return self


class SurveyProfile(Strict):
    id: str = Field(pattern=ID_PATTERN)
    name: str
    description: str
    bio: str
    values: str
    demographics: dict[str, str | int] = Field(default_factory=dict)


class Survey(Strict):
    profile: SurveyProfile
    items: list[SurveyItem] = Field(min_length=1)

    @model_validator(mode="after")
    def _refs(self) -> Survey:
        ids = [i.id for i in self.items]
        dupes = {i for i in ids if ids.count(i) > 1}
        if dupes:
            raise ValueError(f"duplicate item ids {sorted(dupes)}")
        unknown = [i.id for i in self.items if i.rephrase_of and i.rephrase_of not in ids]
        if unknown:
            raise ValueError(f"items {unknown} rephrase an unknown item id")
        return self


def persona_tag(persona_id: str) -> str:
    return f"[PERSONA: {persona_id}]"


TAG_RE = re.compile(r"\[PERSONA:\s*([a-z0-9_\-]+)\]")


class HitlRecord(Strict):
    """A persona-writing-room session: persona turns carry 2–3 gold alternatives in total."""

    id: str = Field(pattern=ID_PATTERN)
    persona_id: str = Field(pattern=ID_PATTERN)
    topic: str = Field(min_length=3)
    scenario_type: str = Field(pattern=ID_PATTERN)
    annotator: str = "anonymous"
    turns: list[Turn] = Field(min_length=2)
    metadata: dict[str, Any] | None = None  # the pipeline doc's layout carries one; kept with every path

    @model_validator(mode="after")
    def _alternatives(self) -> HitlRecord:
        for i, turn in enumerate(self.turns):
            if turn.role == "user" and not 1 <= len(turn.alternatives) <= 2:
                raise ValueError(f"turns[{i}]: a persona turn needs 1–2 alternatives besides its content")
            if turn.role == "assistant" and turn.alternatives:
                raise ValueError(f"turns[{i}]: assistant turns carry no alternatives")
        return self
