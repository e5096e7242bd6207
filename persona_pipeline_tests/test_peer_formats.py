"""The peers' layouts are read as they are, next to our YAML, and `import` rewrites them as our YAML.

Each test copies the real ``data_assets/`` and drops in the example files of
``examples/bring_your_own/`` (persona-vectors trait pair, Assistant-Axis role and
questions JSONL, survey-guide JSON, a persona with ``persona_id``). No model loads.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from persona_pipeline import loaders
from persona_pipeline.hitl import expand_paths
from persona_pipeline.importers import import_file
from persona_pipeline.loaders import InputError

REPO = Path(__file__).resolve().parent.parent
DATA, EXAMPLES = REPO / "data_assets", REPO / "examples" / "bring_your_own"


@pytest.fixture()
def data(tmp_path) -> Path:
    """data_assets/ plus every example file; our formal.yaml gives way to its persona-vectors twin."""
    dest = tmp_path / "data_assets"
    shutil.copytree(DATA, dest)
    shutil.copytree(EXAMPLES, dest, dirs_exist_ok=True)
    (dest / "traits" / "formal.yaml").unlink()
    return dest


def test_every_peer_layout_loads_next_to_ours(data):
    counts = loaders.load_all(data)
    ours = loaders.load_all(DATA)
    assert counts["personas"] == ours["personas"] + 1  # commuter.json, keyed by persona_id
    assert counts["roles"] == ours["roles"] + 1  # librarian.json (Assistant-Axis)
    assert counts["surveys"] == ours["surveys"] + 1  # priya.json (survey guide)
    assert counts["traits"] == ours["traits"]  # formal now from trait_data_extract/ + trait_data_eval/
    roles = loaders.load_roles(data / "roles")
    librarian = next(r for r in roles.roles if r.role == "librarian")
    assert len(librarian.system_prompts) == 5 and librarian.system_prompts[0].startswith(
        "You are a reference librarian"
    )
    # the shared questions gain the JSONL lines and the role file's own question, each once
    assert "How should someone start learning about a subject they know nothing about?" in roles.questions
    assert roles.questions.count("What do you value most?") == 1
    assert "How can I tell whether a news story is reliable?" in roles.questions
    # partitions follow the files, whatever their layout
    assert "commuter" in loaders.partition_ids(data / "personas")
    assert "librarian" in loaders.partition_ids(data / "roles", skip=("questions",))
    assert "formal" in loaders.partition_ids(data / "traits")


def test_persona_vectors_pair_equals_our_yaml(data):
    ours = loaders.load_trait_file(DATA / "traits" / "formal.yaml")
    theirs = next(t for t in loaders.load_traits(data / "traits") if t.trait == "formal")
    assert theirs.instructions == ours.instructions
    assert theirs.extract_questions == ours.extract_questions
    assert theirs.eval_questions == ours.eval_questions
    assert theirs.eval_prompt == ours.eval_prompt


def test_survey_guide_json_is_converted_faithfully(data):
    (priya,) = [s for s in loaders.load_surveys(data / "surveys") if s.profile.id == "priya"]
    raw = json.loads((EXAMPLES / "surveys" / "priya.json").read_text(encoding="utf-8"))
    assert priya.profile.name == "Priya Raman" and priya.profile.demographics["age"] == 41
    assert [i.question for i in priya.items] == [r["question"] for r in raw["responses"]]
    kinds = {i.question: i.kind for i in priya.items}
    assert kinds["I plan my week in detail before it starts."] == "likert"
    assert kinds["What do you think about students using AI tools for homework?"] == "open"
    ai = next(i for i in priya.items if i.kind == "open" and i.confidence is not None)
    assert ai.confidence == 0.8  # the guide's 4 of 5
    assert {i.category for i in priya.items} == {"work_style", "social", "technology", "values"}


def test_pipeline_doc_hitl_keeps_its_metadata():
    rec = next(r for r in loaders.load_hitl(DATA / "hitl") if r.metadata)
    assert rec.id == "pipeline_doc_layout-1" and rec.scenario_type == "software_development"
    assert rec.annotator == "labeler-c"
    paths = expand_paths(rec)
    assert len(paths) == 3
    assert all(json.loads(p.metadata.extra)["quality_score"] == 0.9 for p in paths)


def test_pipeline_doc_conversations_are_an_extra_source():
    (conv,) = loaders.load_conversations(DATA / "conversations", {"student", "skeptic"})
    assert conv.persona_id == "student" and conv.metadata.source == "synthetic"
    assert conv.metadata.scenario_type == "personal_finance" and len(conv.turns) == 10
    assert json.loads(conv.metadata.extra)["generation_model"] == "hand-written"


@pytest.mark.parametrize(
    "src, folder",
    [
        ("traits/trait_data_extract/formal.json", "traits"),
        ("roles/librarian.json", "roles"),
        ("roles/questions.jsonl", "roles"),
        ("surveys/priya.json", "surveys"),
        ("personas/commuter.json", "personas"),
    ],
)
def test_import_writes_canonical_yaml_that_loads_the_same(tmp_path, src, folder):
    dest = import_file(EXAMPLES / src, tmp_path)
    assert dest.parent == tmp_path / folder and dest.suffix == ".yaml"
    yaml.safe_load(dest.read_text(encoding="utf-8"))
    if folder == "traits":
        assert loaders.load_trait_file(dest) == loaders.load_trait_file(EXAMPLES / src)
    elif folder == "surveys":
        assert loaders.load_survey_file(dest) == loaders.load_survey_file(EXAMPLES / src)
    elif folder == "personas":
        assert loaders.load_personas(dest.parent)[0].id == "commuter"
    elif dest.name != "questions.yaml":
        assert loaders.load_role_file(dest)[0] == loaders.load_role_file(EXAMPLES / src)[0]
    with pytest.raises(InputError, match="already exists"):
        import_file(EXAMPLES / src, tmp_path)


def test_import_of_jsonl_layouts(tmp_path):
    hitl = import_file(DATA / "hitl" / "pipeline_doc_layout.jsonl", tmp_path)
    assert loaders.load_hitl(hitl.parent) == [r for r in loaders.load_hitl(DATA / "hitl") if r.metadata]
    conv = import_file(DATA / "conversations" / "own_dialogues.jsonl", tmp_path)
    assert loaders.load_conversations(conv.parent) == loaders.load_conversations(DATA / "conversations")


def test_import_cli(tmp_path, capsys):
    from persona_pipeline.cli import main

    assert main(["import", str(EXAMPLES / "surveys" / "priya.json"), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "surveys" / "priya.yaml").exists()
    with pytest.raises(SystemExit, match="already exists"):
        main(["import", str(EXAMPLES / "surveys" / "priya.json"), "--out", str(tmp_path)])


# ------------------------------------------------------------------ nothing is silently ignored


def test_unknown_file_is_an_error_naming_it(data):
    stray = data / "traits" / "overconfident.csv"
    stray.write_text("trait,instruction\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"overconfident\.csv: unknown file type '\.csv' in the trait definitions"):
        loaders.load_traits(data / "traits")


def test_unknown_top_level_entry_is_an_error(data):
    (data / "trait_data_extract").mkdir()
    with pytest.raises(InputError, match=r"trait_data_extract: not a folder the pipeline reads"):
        loaders.load_all(data)


def test_notes_and_lock_files_are_warned_by_name(data):
    (data / "personas" / "README.md").write_text("# our personas\n", encoding="utf-8")
    (data / "personas" / ".#anxious.yaml").symlink_to("user@host.1234:1700000000")  # an Emacs lock: dangling link
    warned: list[str] = []
    specs = loaders.load_personas(data / "personas", warned.append)
    assert "commuter" in {s.id for s in specs} and len(specs) == 9
    assert any("README.md: not read" in w for w in warned)
    assert any(".#anxious.yaml: not read (hidden or editor lock" in w for w in warned)
    assert ".#anxious" not in loaders.partition_ids(data / "personas")
    assert [p.name for p in loaders.persona_files(data / "personas")].count(".#anxious.yaml") == 0


def test_single_persona_vectors_file_needs_an_eval_set(data):
    extract = json.loads((EXAMPLES / "traits" / "trait_data_extract" / "formal.json").read_text(encoding="utf-8"))
    (data / "traits" / "curt.json").write_text(json.dumps(extract), encoding="utf-8")
    with pytest.raises(InputError, match=r"curt\.json: field 'questions': 20 questions cannot give disjoint"):
        loaders.load_traits(data / "traits")
    extract["questions"] += [q + " Please explain briefly." for q in extract["questions"]]
    (data / "traits" / "curt.json").write_text(json.dumps(extract), encoding="utf-8")
    curt = next(t for t in loaders.load_traits(data / "traits") if t.trait == "curt")
    assert len(curt.extract_questions) == len(curt.eval_questions) == 20


def test_peer_errors_name_the_peer_field(data):
    path = data / "traits" / "trait_data_eval" / "formal.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    del doc["instruction"][2]["neg"]
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(InputError, match=r"trait_data_eval/formal\.json: field 'instruction\.2\.neg': Field required"):
        loaders.load_traits(data / "traits")


def test_survey_guide_likert_off_scale_is_named(data):
    path = data / "surveys" / "priya.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["responses"][1]["answer"] = 9
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(InputError, match=r"priya\.json, responses\[1\]: field 'answer': Likert answer 9 .* 1\.\.5"):
        loaders.load_surveys(data / "surveys")


def test_persona_key_given_twice(data):
    path = data / "personas" / "commuter.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["id"] = "commuter"
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(InputError, match=r"commuter\.json: field 'persona_id': give the persona key once"):
        loaders.load_personas(data / "personas")


def test_same_id_in_two_layouts_is_refused(data):
    shutil.copy(DATA / "traits" / "formal.yaml", data / "traits" / "formal.yaml")
    with pytest.raises(InputError, match=r"trait 'formal' is also defined by"):
        loaders.load_traits(data / "traits")
