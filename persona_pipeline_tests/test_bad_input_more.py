"""More malformed input (issue 14): encodings, duplicate keys and ids, id collisions, template fields,
editor lock files, checkpoint names and oversize files. Each gives ONE line naming file, record and
field, and ``materialize`` refuses before any stage (so before any model) starts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from persona_pipeline import loaders
from persona_pipeline.loaders import InputError

DATA = Path(__file__).resolve().parent.parent / "data_assets"


@pytest.fixture()
def data(tmp_path) -> Path:
    dest = tmp_path / "data_assets"
    shutil.copytree(DATA, dest)
    return dest


def _one_line(info) -> str:
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


def test_latin1_file_names_file_line_and_encoding(data):
    path = data / "personas" / "anxious.yaml"
    text = path.read_text(encoding="utf-8").replace("name:", "# café\nname:", 1)
    path.write_bytes(text.encode("latin-1", errors="replace"))
    with pytest.raises(InputError) as info:
        loaders.load_personas(data / "personas")
    msg = _one_line(info)
    assert str(path) in msg and "line 2" in msg and "'(encoding)'" in msg and "0xe9 is not UTF-8" in msg


def test_utf16_file_is_named(data):
    path = data / "topics.yaml"
    path.write_bytes(path.read_text(encoding="utf-8").encode("utf-16"))
    with pytest.raises(InputError) as info:
        loaders.load_topics(path)
    assert f"{path}: field '(encoding)': the file is UTF-16" in _one_line(info)


def test_duplicate_yaml_key_is_refused(data):
    path = data / "personas" / "skeptic.yaml"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines.insert(2, "name: Someone else entirely")  # line 3 repeats the key of line 2
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(InputError) as info:
        loaders.load_personas(data / "personas")
    assert f"{path}, line 3: field 'name': duplicate key (first at line 2)" in _one_line(info)


def test_duplicate_json_key_is_refused(tmp_path):
    folder = tmp_path / "hitl"
    folder.mkdir()
    line = (DATA / "hitl" / "writing_room.jsonl").read_text(encoding="utf-8").splitlines()[0]
    (folder / "s.jsonl").write_text(line[:-1] + ', "topic": "again"}\n', encoding="utf-8")
    with pytest.raises(InputError) as info:
        loaders.load_hitl(folder)
    assert f"{folder / 's.jsonl'}, line 1: field 'topic': duplicate key" in _one_line(info)


def test_duplicate_hitl_ids_collide_loudly(data):
    first = (data / "hitl" / "writing_room.jsonl").read_text(encoding="utf-8").splitlines()[0]
    (data / "hitl" / "zz_more.jsonl").write_text(first + "\n", encoding="utf-8")
    with pytest.raises(InputError) as info:
        loaders.load_hitl(data / "hitl")
    rec_id = json.loads(first)["id"]
    assert f"zz_more.jsonl, line 1: field 'id': '{rec_id}' is a duplicate of writing_room.jsonl line 1" in _one_line(
        info
    )


def test_survey_person_may_not_take_a_persona_id(data):
    src = data / "surveys" / "maya.yaml"
    dest = data / "surveys" / "skeptic.yaml"
    dest.write_text(src.read_text(encoding="utf-8").replace("id: maya", "id: skeptic", 1), encoding="utf-8")
    src.unlink()
    with pytest.raises(InputError) as info:
        loaders.load_all(data)
    assert f"{dest}: field 'profile.id': 'skeptic' is also a persona id" in _one_line(info)


def test_eval_prompt_with_stray_braces_fails_at_load(data):
    path = data / "traits" / "formal.yaml"
    text = path.read_text(encoding="utf-8").replace("Reply with ONLY", 'Reply as {"score": N} with ONLY', 1)
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError) as info:
        loaders.load_traits(data / "traits")
    msg = _one_line(info)
    assert str(path) in msg and "field 'eval_prompt'" in msg and "{{ and }}" in msg


def test_coherence_prompt_template_is_checked(data):
    path = data / "traits" / "coherence.txt"
    path.write_text(path.read_text(encoding="utf-8") + "\nScore: {score}\n", encoding="utf-8")
    with pytest.raises(InputError) as info:
        loaders.load_coherence_prompt(data / "traits")
    assert f"{path}: field 'prompt':" in _one_line(info) and "{score}" in str(info.value)


def test_editor_lock_file_is_no_partition_and_no_sensor_change(data, monkeypatch):
    from persona_pipeline.defs.automation import folder_state

    before_hitl = folder_state(data / "hitl")
    (data / "hitl" / ".#writing_room.jsonl").symlink_to("me@host.42:1700000000")
    (data / "hitl" / "writing_room.jsonl~").write_text("backup", encoding="utf-8")
    assert folder_state(data / "hitl") == before_hitl
    (data / "personas" / ".#anxious.yaml").symlink_to("me@host.42:1700000000")
    monkeypatch.setenv("PERSONA_PIPELINE_DATA", str(data))
    from persona_pipeline.defs.sources import file_versions

    assert set(file_versions()) == {p.stem for p in (DATA / "personas").glob("*.yaml")}
    assert ".#anxious" not in loaders.partition_ids(data / "personas")
    loaders.load_all(data, warn=lambda _m: None)  # warned, never read


@pytest.mark.parametrize(
    "spec, needle",
    [
        ("../escape=org/model", "entry 0 ('../escape=org/model'): field 'name': '../escape' must match"),
        ("ok=org/m,ok=org/n", "entry 1 ('ok=org/n'): field 'name': 'ok' is given twice"),
        ("sft=org/m", "entry 0 ('sft=org/m'): field 'name': 'sft' must match"),
        ("nomodel", "entry 0 ('nomodel'): field 'name=model'"),
    ],
)
def test_unsafe_checkpoint_names(spec, needle):
    with pytest.raises(InputError) as info:
        loaders.checkpoint_names(spec)
    assert f"PERSONA_PIPELINE_CHECKPOINTS, {needle}" in _one_line(info)


def test_oversize_file_is_refused_before_parsing(data, monkeypatch):
    monkeypatch.setenv("PERSONA_PIPELINE_MAX_INPUT_MB", "0.01")
    path = data / "topics.yaml"
    with pytest.raises(InputError) as info:
        loaders.load_topics(path)
    assert f"{path}: field '(file)':" in _one_line(info) and "PERSONA_PIPELINE_MAX_INPUT_MB" in str(info.value)


def test_materialize_checks_inputs_before_any_stage(data, monkeypatch):
    """A broken file stops `materialize` with its one-line error before Dagster (or a model) starts."""
    from persona_pipeline.cli import main

    (data / "roles" / "pirate.yaml").write_bytes("role: pirate\ndescription: caf\xe9\n".encode("latin-1"))
    monkeypatch.setenv("PERSONA_PIPELINE_DATA", str(data))
    with pytest.raises(SystemExit) as info:
        main(["materialize", "--dry-run"])
    assert f"{data / 'roles' / 'pirate.yaml'}, line 2: field '(encoding)'" in str(info.value.code)
