"""The layouts of the projects this pipeline grew out of, turned into our canonical records.

People arrive with data in the peers' own files, so each is read as it is:

- persona-vectors trait JSON: ``{"instruction": [{"pos", "neg"}], "questions", "eval_prompt"}``,
  one file or a separate extraction / evaluation pair (``trait_data_extract/`` + ``trait_data_eval/``);
- Assistant-Axis role JSON: ``{"instruction": [{"pos"}], "questions"?}``, shared questions as JSONL;
- the survey guide's JSON: a ``persona`` block and ``responses`` (category / question / answer /
  scale / reasoning / confidence);
- the pipeline doc's conversation JSONL: ``persona_id``, ``topic``, ``turns`` (with
  ``alternatives``) and ``metadata``; ``persona_id`` is also accepted as a persona spec's key.

Each function validates the peer layout first (so an error names the peer's own field, e.g.
``instruction[2].neg``), then returns a dict in our layout for the contract to validate.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .contracts import ID_PATTERN


class PeerError(ValueError):
    """A peer record that cannot be converted: ``record`` and ``field`` say where."""

    def __init__(self, field: str, msg: str, record: str | None = None):
        super().__init__(msg)
        self.field, self.msg, self.record = field, msg, record


class _Peer(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class _PosNeg(_Peer):
    pos: str = Field(min_length=5)
    neg: str = Field(min_length=5)


class _Pos(_Peer):
    pos: str = Field(min_length=5)


class PersonaVectorsTrait(_Peer):
    """persona-vectors ``trait_data_{extract,eval}/<trait>.json``; ``description`` is our optional addition."""

    instruction: list[_PosNeg] = Field(min_length=1)
    questions: list[str] = Field(min_length=1)
    eval_prompt: str = Field(min_length=10)
    description: str | None = None


class AssistantAxisRole(_Peer):
    """Assistant-Axis ``roles/instructions/<role>.json``; ``description`` is our optional addition."""

    instruction: list[_Pos] = Field(min_length=1)
    questions: list[str] = Field(default_factory=list)
    description: str | None = None


class _SurveyPerson(BaseModel):
    model_config = ConfigDict(extra="allow", str_strip_whitespace=True)  # any demographic the guide adds

    name: str = Field(min_length=1)


class _SurveyResponse(_Peer):
    category: str = Field(min_length=1)
    question: str = Field(min_length=5)
    answer: int | str
    scale: str | None = None
    reasoning: str | None = None
    confidence: float | None = None
    options: list[str] | None = None


class SurveyGuideFile(_Peer):
    persona: _SurveyPerson
    responses: list[_SurveyResponse] = Field(min_length=1)


def slug(text: str) -> str:
    """``"Work Style"`` → ``work_style``: a category or name as one of our ids."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "general"


# ------------------------------------------------------------------ personas


def persona_record(raw: dict) -> dict:
    """The pipeline doc names the persona key ``persona_id``; ours is ``id``. Either is accepted, not both."""
    if "persona_id" not in raw:
        return raw
    if "id" in raw:
        raise PeerError("persona_id", "give the persona key once: 'id' or 'persona_id', not both")
    return {"id": raw["persona_id"], **{k: v for k, v in raw.items() if k != "persona_id"}}


# ------------------------------------------------------------------ traits


def trait_record(name: str, extract: PersonaVectorsTrait, evaluation: PersonaVectorsTrait | None) -> dict:
    """Our trait from persona-vectors files: the eval file's questions, or the single file's second half."""
    if evaluation is not None:
        extract_q, eval_q = extract.questions, evaluation.questions
        prompt = evaluation.eval_prompt
    else:
        half = len(extract.questions) // 2
        if half < 20:
            raise PeerError(
                "questions",
                f"{len(extract.questions)} questions cannot give disjoint extraction and evaluation sets of 20 each; "
                f"add the evaluation file (trait_data_eval/{name}.json) or list at least 40 questions",
            )
        extract_q, eval_q, prompt = extract.questions[:half], extract.questions[half:], extract.eval_prompt
    description = extract.description or f"{name.replace('_', ' ')}: {extract.instruction[0].pos}"
    return {
        "trait": name,
        "description": description,
        "instructions": [p.model_dump() for p in extract.instruction],
        "extract_questions": extract_q,
        "eval_questions": eval_q,
        "eval_prompt": prompt,
    }


# ------------------------------------------------------------------ roles


def role_record(name: str, role: AssistantAxisRole) -> dict:
    return {
        "role": name,
        "description": role.description or name.replace("_", " "),
        "system_prompts": [i.pos for i in role.instruction],
    }


def question_line(raw: Any) -> str:
    """One line of an Assistant-Axis questions JSONL: a string or an object with ``question``."""
    if isinstance(raw, str):
        text = raw
    elif isinstance(raw, dict):
        text = raw.get("question")
    else:
        raise PeerError("question", f"expected a string or an object with 'question', got {type(raw).__name__}")
    if not isinstance(text, str) or not text.strip():
        raise PeerError("question", "missing or empty")
    return text.strip()


# ------------------------------------------------------------------ surveys

_SCALE = re.compile(r"^\s*(-?\d+)\s*[-–]\s*(-?\d+)")


def _scale(text: str | None, record: str) -> list[int]:
    if text is None:
        return [1, 5]  # the guide's Likert items without a scale are 1–5
    m = _SCALE.match(text)
    if not m:
        raise PeerError(
            "scale", f"{text!r}: expected 'LOW-HIGH (labels)', e.g. '1-5 (1=Strongly Disagree, ...)'", record
        )
    return [int(m.group(1)), int(m.group(2))]


def _confidence(value: float | None, record: str) -> float | None:
    """The guide rates confidence 1–5; ours is 0–1. Values already in 0–1 are kept."""
    if value is None or 0 <= value <= 1:
        return value
    if 1 < value <= 5:
        return round(value / 5, 3)
    raise PeerError("confidence", f"{value} is neither in 0..1 nor on the guide's 1..5 scale", record)


def survey_item(i: int, r: _SurveyResponse) -> dict:
    record = f"responses[{i}]"
    item = {
        "id": f"q{i + 1:03d}",
        "question": r.question,
        "category": slug(r.category),
        "reasoning": r.reasoning,
        "confidence": _confidence(r.confidence, record),
        "answer": r.answer,
    }
    if isinstance(r.answer, int):
        lo, hi = _scale(r.scale, record)
        if not lo <= r.answer <= hi:
            raise PeerError("answer", f"Likert answer {r.answer} is outside the scale {lo}..{hi}", record)
        return {**item, "kind": "likert", "scale": [lo, hi]}
    if r.options:
        return {**item, "kind": "choice", "options": r.options}
    return {**item, "kind": "open"}


def survey_record(person_id: str, doc: SurveyGuideFile) -> dict:
    """Our survey from the guide's JSON; the person's id is the file name."""
    p = doc.persona.model_dump()
    demographics = {k: v for k, v in p.items() if k != "name" and isinstance(v, str | int) and v != ""}
    who = ", ".join(str(demographics[k]) for k in ("age", "occupation", "location") if k in demographics)
    return {
        "profile": {
            "id": person_id,
            "name": p["name"],
            "description": who or p["name"],
            "bio": "; ".join(f"{k}: {v}" for k, v in demographics.items()) or p["name"],
            "values": "",
            "demographics": demographics,
        },
        "items": [survey_item(i, r) for i, r in enumerate(doc.responses)],
    }


# ------------------------------------------------------------------ conversations (pipeline doc JSONL)


def doc_metadata(raw: dict) -> dict:
    """The doc layout's ``metadata`` block, kept whole (as JSON text, Parquet-safe) plus the fields we use."""
    meta = raw.get("metadata")
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise PeerError("metadata", f"expected an object, got {type(meta).__name__}")
    return meta


def hitl_record(raw: dict, default_id: str) -> dict:
    """A writing-room session in the doc's layout → our HITL record (id and scenario type from the metadata)."""
    meta = doc_metadata(raw)
    out = {k: v for k, v in raw.items() if k != "metadata"}
    out.setdefault("id", default_id)
    if "scenario_type" not in out:
        out["scenario_type"] = slug(str(meta.get("scenario_type", "general")))
    if "annotator" not in out and meta.get("annotator"):
        out["annotator"] = str(meta["annotator"])
    if meta:
        out["metadata"] = meta
    return out


_OUR_META = ("quality_score", "safety_flags", "scenario_type", "generation_model")


def conversation_record(raw: dict, default_id: str) -> dict:
    """A conversation in the doc's layout → our ``Conversation`` dict; the whole metadata kept in ``extra``."""
    meta = doc_metadata(raw)
    unknown = set(raw) - {"id", "persona_id", "topic", "turns", "metadata"}
    if unknown:
        raise PeerError(min(unknown), "unknown field (expected persona_id, topic, turns, metadata)")
    source = meta.get("source", "synthetic")
    if source not in ("synthetic", "hitl", "simulated"):
        raise PeerError("metadata.source", f"{source!r}: expected synthetic, hitl or simulated")
    ours = {k: meta[k] for k in _OUR_META if meta.get(k) is not None}
    if "scenario_type" in ours:
        ours["scenario_type"] = slug(str(ours["scenario_type"]))
    return {
        "id": raw.get("id", default_id),
        "persona_id": raw.get("persona_id"),
        "topic": raw.get("topic"),
        "persona_role": "user",
        "turns": raw.get("turns"),
        "metadata": {**ours, "source": source, "extra": json.dumps(meta, ensure_ascii=False, sort_keys=True)},
    }


def is_id(text: str) -> bool:
    return re.fullmatch(ID_PATTERN.strip("^$"), text) is not None
