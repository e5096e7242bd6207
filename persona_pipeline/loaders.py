"""Load ``data_assets/`` into contracts, rejecting bad input with a precise message.

Every error names the file, the record (index, key or line) and the field, so a
user can fix the input without reading code. YAML is read with a safe loader that
also refuses duplicate keys; JSON likewise. Files must be UTF-8 and under a size
limit. Next to our YAML, each folder reads the peers' layouts (``peer_formats``).
No file under ``data_assets/`` is silently skipped: an unknown file is an error,
and notes or editor lock files are named in a logged warning.
"""

from __future__ import annotations

import codecs
import difflib
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from . import peer_formats as peer
from .contracts import Conversation, HitlRecord, PersonaSpec, RoleSet, RoleSpec, Survey, SurveyItem, Topic, Trait

M = TypeVar("M", bound=BaseModel)
log = logging.getLogger(__name__)
Warn = Callable[[str], None]

DATA_SUFFIXES = (".yaml", ".yml", ".json")
NOTE_SUFFIXES = (".md", ".txt", ".rst")
TRAIT_SPLITS = {"extract": ("extract", "trait_data_extract"), "eval": ("eval", "trait_data_eval")}


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


validate_record = _validate  # for other modules validating a record against a contract with our messages


def _peer(path: Path, record: str | None, convert: Callable, *args):
    """Run a ``peer_formats`` conversion; its ``PeerError`` becomes our one-line error."""
    try:
        return convert(*args)
    except peer.PeerError as e:
        raise InputError(f"{_where(path, e.record or record)}: field '{e.field}': {e.msg}") from None


# ------------------------------------------------------------------ reading files


def max_input_bytes() -> int:
    """Input files above this (``PERSONA_PIPELINE_MAX_INPUT_MB``, default 20) are refused, not parsed."""
    return int(float(os.environ.get("PERSONA_PIPELINE_MAX_INPUT_MB", "20")) * 2**20)


def read_text(path: Path) -> str:
    """UTF-8 text (a BOM is allowed), or an error naming the file, the line and the encoding problem."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    if size > max_input_bytes():
        raise InputError(
            f"{path}: field '(file)': {size / 2**20:.1f} MB is over the {max_input_bytes() / 2**20:.0f} MB input "
            "limit (PERSONA_PIPELINE_MAX_INPUT_MB)"
        )
    data = path.read_bytes()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise InputError(f"{path}: field '(encoding)': the file is UTF-16; save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise InputError(
            f"{path}, line {line}: field '(encoding)': byte 0x{data[e.start]:02x} is not UTF-8 "
            "(Latin-1 or UTF-16?); save the file as UTF-8"
        ) from None


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key, line: int, first: int):
        super().__init__(f"duplicate key {key!r}")
        self.key, self.line, self.first = key, line, first


class _UniqueKeyLoader(yaml.SafeLoader):
    """``safe_load`` that refuses a key given twice (YAML would silently keep the last value)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            if key in seen:
                raise _DuplicateKey(key, key_node.start_mark.line + 1, seen[key])
            seen[key] = key_node.start_mark.line + 1
        except TypeError:  # an unhashable key: the base constructor reports it
            break
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def read_yaml(path: Path):
    text = read_text(path)
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except _DuplicateKey as e:
        raise InputError(
            f"{path}, line {e.line}: field '{e.key}': duplicate key (first at line {e.first}); only one may be given"
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f"line {mark.line + 1}" if mark else None
        raise InputError(f"{_where(path, line)}: invalid YAML: {getattr(e, 'problem', e)}") from None


class _DuplicateJsonKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateJsonKey(k)
        out[k] = v
    return out


def parse_json(text: str, path: Path, line: int | None = None):
    """JSON with duplicate keys refused; errors carry the (file) line number."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}, line {line or e.lineno}: invalid JSON: {e.msg}") from None
    except _DuplicateJsonKey as e:
        at = line or _last_line_of(text, e.key)
        raise InputError(f"{path}, line {at}: field '{e.key}': duplicate key; only one may be given") from None


def _last_line_of(text: str, key: str) -> int:
    hits = [m.start() for m in re.finditer(re.escape(json.dumps(key)) + r"\s*:", text)]
    return text[: hits[-1]].count("\n") + 1 if hits else 1


def read_json(path: Path):
    return parse_json(read_text(path), path)


def read_data(path: Path):
    """A YAML or JSON document, by extension."""
    return read_json(path) if path.suffix.lower() == ".json" else read_yaml(path)


def read_jsonl(path: Path):
    """(line number, record) for every non-blank line of a JSONL file."""
    for n, line in enumerate(read_text(path).splitlines(), start=1):
        if line.strip():
            yield n, parse_json(line, path, n)


# ------------------------------------------------------------------ which files a folder holds


def is_ignorable(path: Path) -> bool:
    """Hidden files and editor lock/backup/swap files (``.#x.yaml``, ``#x#``, ``x~``, ``x.swp``): never data."""
    name = path.name
    return name.startswith((".", "#")) or name.endswith(("~", ".swp", ".swo", ".bak", ".tmp"))


def _note(path: Path) -> bool:
    return path.suffix.lower() in NOTE_SUFFIXES or path.stem.upper() in ("README", "LICENSE", "NOTES")


def folder_files(
    folder: Path,
    suffixes: tuple[str, ...],
    what: str,
    warn: Warn | None = None,
    known: tuple[str, ...] = (),
    subfolders: tuple[str, ...] = (),
) -> list[Path]:
    """The data files of ``folder`` with one of ``suffixes``. Anything else is an error, or, for notes and
    hidden/lock files, a warning that names it. ``known`` names files another loader reads."""
    warn = warn or log.warning
    if not folder.is_dir():
        return []
    files = []
    for p in sorted(folder.iterdir()):
        if p.name in known or (p.is_dir() and p.name in subfolders):
            continue
        if is_ignorable(p):
            warn(f"{p}: not read (hidden or editor lock/backup file)")
        elif p.is_file() and p.suffix.lower() in suffixes:
            files.append(p)
        elif p.is_file() and _note(p):
            warn(f"{p}: not read (a notes file; {what} are {'/'.join(suffixes)} files)")
        else:
            kind = "folder" if p.is_dir() else f"file type '{p.suffix or p.name}'"
            raise InputError(f"{p}: unknown {kind} in the {what} folder; expected {'/'.join(suffixes)} files")
    return files


def _required(files: list[Path], folder: Path, what: str, suffixes: tuple[str, ...] = DATA_SUFFIXES) -> list[Path]:
    if not files:
        raise InputError(f"{folder}: no {what} ({'/'.join('*' + s for s in suffixes)}) found")
    return files


def _unique_stems(files: list[Path], what: str) -> None:
    seen: dict[str, Path] = {}
    for p in files:
        if p.stem in seen:
            raise InputError(f"{p}: field '(file name)': {what} '{p.stem}' is also defined by {seen[p.stem]}")
        seen[p.stem] = p


def partition_ids(folder: Path, skip: tuple[str, ...] = ()) -> list[str]:
    """Ids a folder defines (file stems of YAML/JSON, trait split folders included), lock files excluded.

    Used for Dagster partition keys at code-location load, so it never raises: a bad
    file still fails loudly in the loader that reads it.
    """
    if not folder.is_dir():
        return []
    dirs = [folder, *(folder / d for names in TRAIT_SPLITS.values() for d in names)]
    stems = {
        p.stem
        for d in dirs
        if d.is_dir()
        for p in d.iterdir()
        if p.is_file() and p.suffix.lower() in DATA_SUFFIXES and not is_ignorable(p) and peer.is_id(p.stem)
    }
    return sorted(stems - set(skip))


def persona_files(folder: Path) -> list[Path]:
    """The persona spec files (what the persona partitions and the file sensor follow)."""
    return [
        p
        for p in sorted(folder.glob("*"))
        if p.is_file() and p.suffix.lower() in DATA_SUFFIXES and not is_ignorable(p) and peer.is_id(p.stem)
    ]


def _stem_matches(path: Path, value: str, field: str) -> None:
    if value != path.stem:
        raise InputError(f"{path}: field '{field}': '{value}' must equal the file name '{path.stem}'")


# ------------------------------------------------------------------ personas and topics


def load_personas(folder: Path, warn: Warn | None = None) -> list[PersonaSpec]:
    """``<id>.yaml`` (or ``.json``); the pipeline doc's ``persona_id`` key is accepted for ``id``."""
    files = _required(folder_files(folder, DATA_SUFFIXES, "persona specs", warn), folder, "persona specs")
    _unique_stems(files, "persona")
    records = []
    for path in files:
        raw = read_data(path)
        if isinstance(raw, dict):
            raw = _peer(path, None, peer.persona_record, raw)
        record = _validate(PersonaSpec, raw, path)
        _stem_matches(path, record.id, "persona_id" if isinstance(raw, dict) and "persona_id" in raw else "id")
        records.append(record)
    return records


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


# ------------------------------------------------------------------ traits


def _persona_vectors(path: Path) -> peer.PersonaVectorsTrait:
    return _validate(peer.PersonaVectorsTrait, read_json(path), path)


def _split_file(folder: Path, split: str, name: str) -> Path | None:
    return next(
        (folder / d / f"{name}.json" for d in TRAIT_SPLITS[split] if (folder / d / f"{name}.json").exists()), None
    )


def _trait_files(folder: Path, warn: Warn | None) -> list[Path]:
    """Trait files: ``<t>.yaml`` / ``<t>.json`` and persona-vectors' ``trait_data_extract/<t>.json``."""
    split_dirs = tuple(d for names in TRAIT_SPLITS.values() for d in names)
    files = folder_files(folder, DATA_SUFFIXES, "trait definitions", warn, ("coherence.txt",), split_dirs)
    for d in split_dirs:
        found = folder_files(folder / d, (".json",), "persona-vectors trait", warn)
        files += [p for p in found if d in TRAIT_SPLITS["extract"]]
        for p in found:  # an eval file needs its extraction file
            if d in TRAIT_SPLITS["eval"] and _split_file(folder, "extract", p.stem) is None:
                raise InputError(f"{p}: field '(file name)': no extraction file trait_data_extract/{p.stem}.json")
    _unique_stems(files, "trait")
    return files


def load_trait_file(path: Path) -> Trait:
    """One trait, in our YAML or persona-vectors JSON (its eval file found next to the extract file)."""
    if path.suffix.lower() != ".json":
        trait = _validate(Trait, read_yaml(path), path)
        _stem_matches(path, trait.trait, "trait")
        return trait
    extract = _persona_vectors(path)
    eval_path = (
        _split_file(path.parent.parent, "eval", path.stem) if path.parent.name in TRAIT_SPLITS["extract"] else None
    )
    evaluation = _persona_vectors(eval_path) if eval_path else None
    raw = _peer(path, None, peer.trait_record, path.stem, extract, evaluation)
    return _validate(Trait, raw, path)


def load_traits(folder: Path, warn: Warn | None = None) -> list[Trait]:
    return [load_trait_file(p) for p in _required(_trait_files(folder, warn), folder, "trait definitions")]


def load_coherence_prompt(folder: Path) -> str:
    """The shared 0–100 coherence judge prompt (``traits/coherence.txt``)."""
    from .contracts import check_template

    path = folder / "coherence.txt"
    if not path.exists():
        raise InputError(f"{path}: missing; the coherence judge prompt is needed to filter trait responses")
    text = read_text(path)
    try:
        return check_template(text, ("question", "answer"), "prompt")
    except ValueError as e:
        raise InputError(f"{path}: field 'prompt': {e}") from None


# ------------------------------------------------------------------ roles


def _role_questions(folder: Path) -> list[str]:
    """Shared questions: ``questions.yaml`` (ours) and/or ``questions.jsonl`` (Assistant-Axis)."""
    questions: list[str] = []
    path = folder / "questions.yaml"
    if path.exists():
        raw_q = read_yaml(path)
        found = raw_q.get("questions") if isinstance(raw_q, dict) else None
        if not isinstance(found, list) or not found or not all(isinstance(q, str) and q.strip() for q in found):
            raise InputError(f"{path}: field 'questions': must be a non-empty list of strings")
        questions += found
    jsonl = folder / "questions.jsonl"
    if jsonl.exists():
        for n, raw in read_jsonl(jsonl):
            questions.append(_peer(jsonl, f"line {n}", peer.question_line, raw))
    if not questions:
        raise InputError(f"{path}: field 'questions': must be a non-empty list of strings (or give questions.jsonl)")
    return list(dict.fromkeys(questions))  # both files may list a question; every role answers it once


def load_role_file(path: Path) -> tuple[RoleSpec, list[str]]:
    """One role (ours or Assistant-Axis JSON) and any questions the file carries."""
    if path.suffix.lower() != ".json":
        role = _validate(RoleSpec, read_yaml(path), path)
        _stem_matches(path, role.role, "role")
        return role, []
    axis = _validate(peer.AssistantAxisRole, read_json(path), path)
    return _validate(RoleSpec, peer.role_record(path.stem, axis), path), axis.questions


def load_roles(folder: Path, warn: Warn | None = None) -> RoleSet:
    questions = _role_questions(folder)
    known = ("questions.yaml", "questions.jsonl")
    files = _required(folder_files(folder, DATA_SUFFIXES, "roles", warn, known), folder, "roles")
    _unique_stems(files, "role")
    roles = []
    for path in files:
        role, extra = load_role_file(path)
        questions += [q for q in extra if q not in questions]  # every role answers the same questions
        roles.append(role)
    if not any(r.role == "default" for r in roles):
        raise InputError(f"{folder}: the 'default' assistant role (default.yaml) is required")
    return RoleSet(roles=roles, questions=questions)


# ------------------------------------------------------------------ surveys


def _survey_raw(path: Path) -> dict:
    """Our YAML as is; the survey guide's JSON (``persona`` + ``responses``) converted."""
    raw = read_data(path)
    if path.suffix.lower() == ".json" and isinstance(raw, dict) and "responses" in raw:
        doc = _validate(peer.SurveyGuideFile, raw, path)
        return _peer(path, None, peer.survey_record, path.stem, doc)
    return raw


def load_survey_file(path: Path) -> Survey:
    raw = _survey_raw(path)
    items = raw.get("items") if isinstance(raw, dict) else None
    label = "responses" if path.suffix.lower() == ".json" and "responses" in read_data(path) else "items"
    if isinstance(items, list):
        seen = {}
        for i, item in enumerate(items):  # validate item by item for a precise record
            item_id = _validate(SurveyItem, item, path, f"{label}[{i}]").id
            if item_id in seen:
                raise InputError(f"{path}, {label}[{i}]: field 'id': '{item_id}' is a duplicate of {seen[item_id]}")
            seen[item_id] = f"{label}[{i}]"
        for i, item in enumerate(items):
            ref = item.get("rephrase_of")
            if ref and ref not in seen:
                raise InputError(f"{path}, {label}[{i}]: field 'rephrase_of': unknown item id '{ref}'")
    survey = _validate(Survey, raw, path)
    _stem_matches(path, survey.profile.id, "profile.id")
    return survey


def load_surveys(folder: Path, persona_ids: set[str] | None = None, warn: Warn | None = None) -> list[Survey]:
    """Every survey; a person whose id equals a persona id is refused (one would replace the other)."""
    files = _required(folder_files(folder, DATA_SUFFIXES, "surveys", warn), folder, "surveys")
    _unique_stems(files, "survey person")
    surveys = [load_survey_file(p) for p in files]
    for path, s in zip(files, surveys, strict=True):
        if persona_ids and s.profile.id in persona_ids:
            raise InputError(
                f"{path}: field 'profile.id': '{s.profile.id}' is also a persona id (personas/{s.profile.id}.*); "
                "rename one, ids are shared"
            )
    return surveys


# ------------------------------------------------------------------ HITL gold and extra conversations


def _jsonl_files(folder: Path, what: str, warn: Warn | None) -> list[Path]:
    return folder_files(folder, (".jsonl",), what, warn)


def _register(path: Path, n: int, persona_id: str, rec_id: str, persona_ids: set[str] | None, seen: dict) -> None:
    """What every dialogue record of a JSONL folder must be: of a known persona, with an id not seen before."""
    if persona_ids is not None and persona_id not in persona_ids:
        raise InputError(f"{path}, line {n}: field 'persona_id': unknown persona '{persona_id}'")
    if rec_id in seen:
        raise InputError(f"{path}, line {n}: field 'id': '{rec_id}' is a duplicate of {seen[rec_id]}")
    seen[rec_id] = f"{path.name} line {n}"


def load_hitl(folder: Path, persona_ids: set[str] | None = None, warn: Warn | None = None) -> list[HitlRecord]:
    """Writing-room sessions, ours or the pipeline doc's layout (``metadata`` kept, id derived if absent)."""
    records, seen = [], {}
    for path in _jsonl_files(folder, "HITL sessions", warn):
        for n, raw in read_jsonl(path):
            if isinstance(raw, dict):
                raw = _peer(path, f"line {n}", peer.hitl_record, raw, f"{peer.slug(path.stem)}-{n}")
            rec = _validate(HitlRecord, raw, path, f"line {n}")
            _register(path, n, rec.persona_id, rec.id, persona_ids, seen)
            records.append(rec)
    return records


def load_conversations(folder: Path, persona_ids: set[str] | None = None, warn: Warn | None = None) -> list:
    """Extra source dialogues in the pipeline doc's JSONL layout (``data_assets/conversations/``)."""
    out, seen = [], {}
    for path in _jsonl_files(folder, "source conversations", warn):
        for n, raw in read_jsonl(path):
            if not isinstance(raw, dict):
                raise InputError(f"{path}, line {n}: expected a mapping, got {type(raw).__name__}")
            rec = _peer(path, f"line {n}", peer.conversation_record, raw, f"{peer.slug(path.stem)}-{n}")
            conv = _validate(Conversation, rec, path, f"line {n}")
            _register(path, n, conv.persona_id, conv.id, persona_ids, seen)
            out.append(conv)
    return out


# ------------------------------------------------------------------ the whole folder


TOP_LEVEL = (
    "personas",
    "topics.yaml",
    "traits",
    "roles",
    "surveys",
    "hitl",
    "conversations",
    "general_chat.jsonl",
    "capability",  # the capability probe (multiple-choice JSONL + its lm-eval task), read by capability.py
)


def check_root(root: Path, warn: Warn | None = None) -> None:
    """Every top-level entry of ``data_assets/`` is one the pipeline reads (or a note, warned)."""
    warn = warn or log.warning
    for p in sorted(root.iterdir()):
        if p.name in TOP_LEVEL:
            continue
        if is_ignorable(p) or (p.is_file() and _note(p)):
            warn(f"{p}: not read (notes, hidden or editor lock file)")
            continue
        raise InputError(
            f"{p}: not a folder the pipeline reads; data_assets/ holds {', '.join(TOP_LEVEL)} "
            "(see README 'Bring your own data')"
        )


def load_all(root: Path, warn: Warn | None = None) -> dict[str, int]:
    """Validate everything under ``root`` (what ``materialize`` does before any model loads); counts per kind."""
    from .general_chat import load_general_chat

    check_root(root, warn)
    personas = load_personas(root / "personas", warn)
    ids = {p.id for p in personas}
    traits = load_traits(root / "traits", warn)
    load_coherence_prompt(root / "traits")
    return {
        "personas": len(personas),
        "topics": len(load_topics(root / "topics.yaml")),
        "traits": len(traits),
        "roles": len(load_roles(root / "roles", warn).roles),
        "surveys": len(load_surveys(root / "surveys", ids, warn)),
        "hitl_sessions": len(load_hitl(root / "hitl", ids, warn)),
        "source_conversations": len(load_conversations(root / "conversations", ids, warn)),
        "general_chat": len(load_general_chat(root / "general_chat.jsonl")),
        "capability_probe_items": _probe_items(root / "capability" / "probe.jsonl"),
    }


def _probe_items(path: Path) -> int:
    """The capability probe validated like every other input (absent: 0; ``capability_retention`` says so)."""
    from .capability import load_probe

    return len(load_probe(path)) if path.exists() else 0


def checkpoint_names(spec: str, var: str = "PERSONA_PIPELINE_CHECKPOINTS") -> dict[str, str]:
    """``"sft7b=allenai/OLMo-2-7B-SFT,dpo=org/model@rev"`` → {name: model}. Names become folder names and
    partition keys, so they must be plain ids (no ``../``, slashes or spaces) and unique."""
    out: dict[str, str] = {}
    for i, entry in enumerate(p for p in spec.split(",") if p.strip()):
        name, sep, model = (x.strip() for x in entry.partition("="))
        record = f"entry {i} ({entry.strip()!r})"
        if not sep or not name or not model:
            raise InputError(f"{var}, {record}: field 'name=model': entries must be name=model[@revision]")
        if not peer.is_id(name) or name in ("base", "sft", "rl"):
            raise InputError(
                f"{var}, {record}: field 'name': {name!r} must match [a-z0-9][a-z0-9_-]* and not be base/sft/rl "
                "(it becomes a folder name)"
            )
        if name in out:
            raise InputError(f"{var}, {record}: field 'name': {name!r} is given twice")
        out[name] = model
    return out
