"""Load ``data_assets/`` into contracts, rejecting bad input with a precise message.

Every error names the file, the record (index, key or line) and the field, so a
user can fix the input without reading code. YAML is read with ``safe_load`` only.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from .contracts import HitlRecord, PersonaSpec, RoleSet, RoleSpec, Survey, SurveyItem, Topic, Trait

M = TypeVar("M", bound=BaseModel)


class InputError(ValueError):
    """Bad input data: the message says where and what."""


def _where(path: Path, record: str | None) -> str:
    return f"{path}" + (f", {record}" if record else "")


def _validate(model: type[M], raw, path: Path, record: str | None = None) -> M:
    if not isinstance(raw, dict):
        raise InputError(f"{_where(path, record)}: expected a mapping, got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        errors = e.errors()  # a typo'd key also reports the real key as missing: name the typo first
        err = next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])
        field = ".".join(str(p) for p in err["loc"]) or "(record)"
        hint = ""
        if err["type"] == "extra_forbidden" and len(err["loc"]) == 1:
            close = difflib.get_close_matches(str(err["loc"][0]), list(model.model_fields), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise InputError(f"{_where(path, record)}: field '{field}': {err['msg']}{hint}") from None


def read_yaml(path: Path):
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f"line {mark.line + 1}" if mark else None
        raise InputError(f"{_where(path, line)}: invalid YAML: {getattr(e, 'problem', e)}") from None


def _yaml_files(folder: Path, what: str) -> list[Path]:
    files = sorted(p for p in folder.glob("*.yaml") if not p.name.startswith("."))
    if not files:
        raise InputError(f"{folder}: no {what} (*.yaml) found")
    return files


def _stem_matches(path: Path, value: str, field: str) -> None:
    if value != path.stem:
        raise InputError(f"{path}: field '{field}': '{value}' must equal the file name '{path.stem}'")


def _load_named(folder: Path, model: type[M], what: str, id_field: str) -> list[M]:
    """One record per YAML file, its id field equal to the file name."""
    records = []
    for path in _yaml_files(folder, what):
        record = _validate(model, read_yaml(path), path)
        _stem_matches(path, getattr(record, id_field), id_field)
        records.append(record)
    return records


def load_personas(folder: Path) -> list[PersonaSpec]:
    return _load_named(folder, PersonaSpec, "persona specs", "id")


def heldout_topic(text: str, fraction: float = 0.1) -> bool:
    """A stable, content-keyed split: the same topic is held out on every machine."""
    digest = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
    return digest / 0xFFFFFFFF < fraction


def load_topics(path: Path, heldout_fraction: float = 0.1) -> list[Topic]:
    raw = read_yaml(path)
    groups = raw.get("scenario_types") if isinstance(raw, dict) else None
    if not isinstance(groups, dict) or not groups:
        raise InputError(f"{path}: field 'scenario_types': must map scenario types to topic lists")
    topics, seen = [], {}
    for scenario, texts in groups.items():
        if not isinstance(texts, list) or not texts:
            raise InputError(f"{path}, scenario_types.{scenario}: field 'topics': empty topic list")
        for i, text in enumerate(texts):
            record = f"scenario_types.{scenario}[{i}]"
            if not isinstance(text, str):
                raise InputError(f"{path}, {record}: field 'text': expected a string, got {type(text).__name__}")
            if text.strip().lower() in seen:
                raise InputError(f"{path}, {record}: field 'text': duplicate of {seen[text.strip().lower()]}")
            seen[text.strip().lower()] = record
            split = "heldout" if heldout_topic(text, heldout_fraction) else "train"
            topics.append(_validate(Topic, {"text": text, "scenario_type": scenario, "split": split}, path, record))
    return topics


def load_traits(folder: Path) -> list[Trait]:
    return _load_named(folder, Trait, "trait definitions", "trait")


def load_coherence_prompt(folder: Path) -> str:
    """The shared 0–100 coherence judge prompt (``traits/coherence.txt``)."""
    path = folder / "coherence.txt"
    if not path.exists():
        raise InputError(f"{path}: missing; the coherence judge prompt is needed to filter trait responses")
    text = path.read_text()
    missing = [p for p in ("{question}", "{answer}") if p not in text]
    if missing:
        raise InputError(f"{path}: field 'prompt': must contain the placeholders {missing}")
    return text


def load_roles(folder: Path) -> RoleSet:
    questions_path = folder / "questions.yaml"
    raw_q = read_yaml(questions_path)
    questions = raw_q.get("questions") if isinstance(raw_q, dict) else None
    if not isinstance(questions, list) or not questions or not all(isinstance(q, str) and q.strip() for q in questions):
        raise InputError(f"{questions_path}: field 'questions': must be a non-empty list of strings")
    roles = []
    for path in _yaml_files(folder, "roles"):
        if path == questions_path:
            continue
        role = _validate(RoleSpec, read_yaml(path), path)
        _stem_matches(path, role.role, "role")
        roles.append(role)
    if not any(r.role == "default" for r in roles):
        raise InputError(f"{folder}: the 'default' assistant role (default.yaml) is required")
    return RoleSet(roles=roles, questions=questions)


def load_surveys(folder: Path) -> list[Survey]:
    surveys = []
    for path in _yaml_files(folder, "surveys"):
        raw = read_yaml(path)
        items = raw.get("items") if isinstance(raw, dict) else None
        if isinstance(items, list):
            seen = {}
            for i, item in enumerate(items):  # validate item by item for a precise record
                item_id = _validate(SurveyItem, item, path, f"items[{i}]").id
                if item_id in seen:
                    raise InputError(f"{path}, items[{i}]: field 'id': '{item_id}' is a duplicate of {seen[item_id]}")
                seen[item_id] = f"items[{i}]"
            for i, item in enumerate(items):
                ref = item.get("rephrase_of")
                if ref and ref not in seen:
                    raise InputError(f"{path}, items[{i}]: field 'rephrase_of': unknown item id '{ref}'")
        survey = _validate(Survey, raw, path)
        _stem_matches(path, survey.profile.id, "profile.id")
        surveys.append(survey)
    return surveys


def load_hitl(folder: Path, persona_ids: set[str] | None = None) -> list[HitlRecord]:
    records = []
    for path in sorted(folder.glob("*.jsonl")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}, line {n}: invalid JSON: {e.msg}") from None
            rec = _validate(HitlRecord, raw, path, f"line {n}")
            if persona_ids is not None and rec.persona_id not in persona_ids:
                raise InputError(f"{path}, line {n}: field 'persona_id': unknown persona '{rec.persona_id}'")
            records.append(rec)
    return records
