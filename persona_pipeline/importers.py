"""``persona-pipeline import``: a peer-layout file rewritten as our canonical YAML (or JSONL), for editing.

The loaders already read the peers' layouts as they are; this is for people who want
the file in our layout. Every file is read with the same loader the pipeline uses (so
the same file/record/field errors apply), written atomically, then read back to prove
the written file loads.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import yaml

from . import loaders
from .storage import write_text

KINDS = ("persona", "trait", "role", "role-questions", "survey", "hitl", "conversations")


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (judge prompts, bios) as ``|`` blocks, so the YAML stays readable."""


_Dumper.add_representer(
    str,
    lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None),
)


def to_yaml(doc: dict) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=110)


def detect(src: Path) -> str:
    """The kind of a peer file, from its folder name or, failing that, its keys."""
    names = {p.name for p in src.parents[:2]}
    by_folder = {
        "personas": "persona",
        "traits": "trait",
        "trait_data_extract": "trait",
        "surveys": "survey",
        "hitl": "hitl",
        "conversations": "conversations",
    }
    if src.name == "questions.jsonl":
        return "role-questions"
    if src.parent.name == "roles" or "instructions" in names:
        return "role"
    if src.parent.name in by_folder:
        return by_folder[src.parent.name]
    if src.suffix == ".jsonl":
        first = next(loaders.read_jsonl(src), (0, {}))[1]
        turns = first.get("turns", []) if isinstance(first, dict) else []
        return "hitl" if any(isinstance(t, dict) and t.get("alternatives") for t in turns) else "conversations"
    raw = loaders.read_data(src)
    keys = set(raw) if isinstance(raw, dict) else set()
    if "instruction" in keys:
        pairs = raw["instruction"] if isinstance(raw["instruction"], list) else []
        return "trait" if any(isinstance(p, dict) and "neg" in p for p in pairs) else "role"
    if "responses" in keys:
        return "survey"
    if keys & {"persona_id", "id", "behavioral_traits"}:
        return "persona"
    raise loaders.InputError(f"{src}: cannot tell which layout this is; pass --kind ({', '.join(KINDS)})")


def _convert(src: Path, kind: str) -> tuple[str, str, str]:
    """(folder, file name, text) of the canonical version of ``src``."""
    if kind == "persona":
        (spec,) = _load_one(loaders.load_personas, src)
        return "personas", f"{spec.id}.yaml", to_yaml(spec.model_dump(exclude_defaults=True))
    if kind == "trait":
        trait = loaders.load_trait_file(src)
        return "traits", f"{trait.trait}.yaml", to_yaml(trait.model_dump())
    if kind == "role":
        role, questions = loaders.load_role_file(src)
        note = (
            ""
            if not questions
            else f"# questions from {src.name} (add them to roles/questions.yaml):\n"
            + "".join(f"#   - {q}\n" for q in questions)
        )
        return "roles", f"{role.role}.yaml", to_yaml(role.model_dump()) + note
    if kind == "role-questions":
        questions = [loaders.peer.question_line(raw) for _, raw in loaders.read_jsonl(src)]
        return "roles", "questions.yaml", to_yaml({"questions": questions})
    if kind == "survey":
        survey = loaders.load_survey_file(src)
        return "surveys", f"{survey.profile.id}.yaml", to_yaml(survey.model_dump(exclude_none=True))
    if kind == "hitl":
        recs = _load_one(loaders.load_hitl, src)
        lines = [json.dumps(r.model_dump(exclude_none=True), ensure_ascii=False) for r in recs]
        return "hitl", f"{src.stem}.jsonl", "\n".join(lines) + "\n"
    if kind == "conversations":
        convs = _load_one(loaders.load_conversations, src)
        lines = [json.dumps(_doc_layout(c), ensure_ascii=False) for c in convs]
        return "conversations", f"{src.stem}.jsonl", "\n".join(lines) + "\n"
    raise loaders.InputError(f"{src}: unknown --kind {kind!r}; use one of {', '.join(KINDS)}")


def _doc_layout(conv) -> dict:
    """A conversation in the pipeline doc's layout (already our JSONL layout), with an explicit id."""
    turns = [t.model_dump(exclude_defaults=True) for t in conv.turns]
    meta = json.loads(conv.metadata.extra) if conv.metadata.extra else {}
    return {"id": conv.id, "persona_id": conv.persona_id, "topic": conv.topic, "turns": turns, "metadata": meta}


@contextlib.contextmanager
def _alone(src: Path) -> Iterator[Path]:
    """A temporary folder holding only ``src`` (a symlink), so a folder loader reads exactly that one file."""
    with tempfile.TemporaryDirectory(prefix="persona-import-") as tmp:
        (Path(tmp) / src.name).symlink_to(src.resolve())
        yield Path(tmp)


def _load_one(load, src: Path) -> list:
    with _alone(src) as folder:
        return load(folder)


def import_file(src: Path, out_root: Path, kind: str | None = None, force: bool = False) -> Path:
    """Write the canonical version of ``src`` under ``out_root/<folder>/``; refuses to overwrite unless ``force``."""
    src = Path(src)
    kind = kind or detect(src)
    folder, name, text = _convert(src, kind)
    dest = Path(out_root) / folder / name
    if dest.exists() and not force:
        raise loaders.InputError(f"{dest}: already exists; pass --force to replace it")
    with tempfile.TemporaryDirectory(prefix="persona-import-") as tmp:  # proven loadable before it is placed
        trial = Path(tmp) / folder / name
        trial.parent.mkdir()
        trial.write_text(text, encoding="utf-8")
        _read_back(trial, folder)
    write_text(dest, text)
    return dest


def _read_back(dest: Path, folder: str) -> None:
    """The written file must load with the pipeline's own loader."""
    if folder == "traits":
        loaders.load_trait_file(dest)
    elif folder == "roles" and dest.name != "questions.yaml":
        loaders.load_role_file(dest)
    elif folder == "surveys":
        loaders.load_survey_file(dest)
    elif folder == "personas":
        _load_one(loaders.load_personas, dest)
    elif folder == "hitl":
        _load_one(loaders.load_hitl, dest)
    elif folder == "conversations":
        _load_one(loaders.load_conversations, dest)
