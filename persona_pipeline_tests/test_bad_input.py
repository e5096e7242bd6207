"""Malformed input gets ONE clear error naming the file, the record and the field.

Each case copies real data from ``data_assets/`` into ``tmp_path``, breaks exactly
one thing, and checks the loader's :class:`InputError` message. No models load here.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from persona_pipeline import loaders
from persona_pipeline.loaders import InputError

DATA = Path(__file__).resolve().parent.parent / "data_assets"


# ----------------------------------------------------------------- helpers


def _copy(tmp: Path, name: str) -> Path:
    """Copy ``data_assets/<name>`` (file or folder) into ``tmp`` and return the copy."""
    src, dst = DATA / name, tmp / name
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    return dst


def _edit_yaml(path: Path, change: Callable[[dict], object]) -> Path:
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(raw)
    path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def _edit_jsonl(path: Path, line_no: int, change: Callable[[dict], object]) -> Path:
    lines = path.read_text(encoding="utf-8").splitlines()
    rec = json.loads(lines[line_no - 1])
    change(rec)
    lines[line_no - 1] = json.dumps(rec, ensure_ascii=False)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _persona(tmp: Path, change: Callable[[dict], object], name: str = "anxious"):
    folder = _copy(tmp, "personas")
    path = _edit_yaml(folder / f"{name}.yaml", change)
    return (lambda: loaders.load_personas(folder)), path


def _topics(tmp: Path, change: Callable[[dict], object]):
    path = _edit_yaml(_copy(tmp, "topics.yaml"), change)
    return (lambda: loaders.load_topics(path)), path


def _trait(tmp: Path, change: Callable[[dict], object], name: str = "formal"):
    folder = _copy(tmp, "traits")
    path = _edit_yaml(folder / f"{name}.yaml", change)
    return (lambda: loaders.load_traits(folder)), path


def _survey(tmp: Path, change: Callable[[dict], object]):
    folder = _copy(tmp, "surveys")
    path = _edit_yaml(folder / "maya.yaml", change)
    return (lambda: loaders.load_surveys(folder)), path


def _hitl(tmp: Path, line_no: int, change: Callable[[dict], object], persona_ids: set[str] | None = None):
    folder = _copy(tmp, "hitl")
    path = _edit_jsonl(folder / "writing_room.jsonl", line_no, change)
    return (lambda: loaders.load_hitl(folder, persona_ids)), path


def _set(key: str, value):
    return lambda raw: raw.__setitem__(key, value)


def _rename(old: str, new: str):
    return lambda raw: raw.__setitem__(new, raw.pop(old))


def _first_turn(rec: dict, role: str) -> int:
    return next(i for i, t in enumerate(rec["turns"]) if t["role"] == role)


# ----------------------------------------------------------------- cases
# Each case: (tmp_path) -> (load, path, expected substrings besides the path).


def persona_bad_yaml(tmp):
    folder = _copy(tmp, "personas")
    path = folder / "anxious.yaml"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[1] = "name: Beatrice: the anxious one"  # "mapping values are not allowed here"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return (lambda: loaders.load_personas(folder)), path, ["line 2", "invalid YAML"]


def persona_missing_stop_rules(tmp):
    load, path = _persona(tmp, lambda raw: raw.pop("stop_rules"))
    return load, path, ["'stop_rules'", "required"]


def persona_traits_as_string(tmp):
    load, path = _persona(tmp, _set("behavioral_traits", "Apologises a lot."))
    return load, path, ["'behavioral_traits'", "list"]


def persona_empty_example_lines(tmp):
    load, path = _persona(tmp, _set("example_lines", []))
    return load, path, ["'example_lines'", "non-empty"]


def persona_id_not_file_name(tmp):
    load, path = _persona(tmp, _set("id", "nervous"))
    return load, path, ["'id'", "'nervous'", "'anxious'"]


def persona_id_illegal_chars(tmp):
    load, path = _persona(tmp, _set("id", "Anxious Bea!"))
    return load, path, ["'id'", "pattern"]


def persona_typo_key(tmp):
    load, path = _persona(tmp, _rename("stop_rules", "stop_rule"))
    return load, path, ["'stop_rule'", "not permitted", "did you mean 'stop_rules'"]


def persona_folder_empty(tmp):
    folder = tmp / "personas"
    folder.mkdir()
    return (lambda: loaders.load_personas(folder)), folder, ["no persona specs"]


def topics_missing_scenario_types(tmp):
    load, path = _topics(tmp, _rename("scenario_types", "scenarios"))
    return load, path, ["'scenario_types'"]


def topics_empty_list(tmp):
    load, path = _topics(tmp, lambda raw: raw["scenario_types"].__setitem__("travel_planning", []))
    return load, path, ["scenario_types.travel_planning", "'topics'", "empty"]


def topics_duplicate(tmp):
    def dup(raw):
        texts = raw["scenario_types"]["travel_planning"]
        texts[2] = texts[0].upper()  # case-insensitive duplicate

    load, path = _topics(tmp, dup)
    return load, path, ["scenario_types.travel_planning[2]", "'text'", "duplicate of scenario_types.travel_planning[0]"]


def topics_non_string(tmp):
    load, path = _topics(tmp, lambda raw: raw["scenario_types"]["travel_planning"].__setitem__(4, 42))
    return load, path, ["scenario_types.travel_planning[4]", "'text'", "string"]


def topics_file_missing(tmp):
    path = tmp / "topics.yaml"
    return (lambda: loaders.load_topics(path)), path, ["not found"]


def trait_four_instruction_pairs(tmp):
    load, path = _trait(tmp, lambda raw: raw.__setitem__("instructions", raw["instructions"][:4]))
    return load, path, ["'instructions'", "at least 5"]


def trait_eval_prompt_without_answer(tmp):
    load, path = _trait(tmp, lambda raw: raw.__setitem__("eval_prompt", raw["eval_prompt"].replace("{answer}", "")))
    return load, path, ["'eval_prompt'", "{answer}"]


def trait_question_overlap(tmp):
    load, path = _trait(tmp, lambda raw: raw["eval_questions"].__setitem__(0, raw["extract_questions"][3]))
    return load, path, ["extract_questions", "eval_questions", "overlap"]


def role_two_system_prompts(tmp):
    folder = _copy(tmp, "roles")
    path = _edit_yaml(folder / "pirate.yaml", lambda raw: raw.__setitem__("system_prompts", raw["system_prompts"][:2]))
    return (lambda: loaders.load_roles(folder)), path, ["'system_prompts'", "at least 3"]


def roles_without_default(tmp):
    folder = _copy(tmp, "roles")
    (folder / "default.yaml").unlink()
    return (lambda: loaders.load_roles(folder)), folder, ["'default'", "default.yaml"]


def roles_questions_empty(tmp):
    folder = _copy(tmp, "roles")
    path = folder / "questions.yaml"
    path.write_text("# no questions yet\n", encoding="utf-8")
    return (lambda: loaders.load_roles(folder)), path, ["'questions'", "non-empty"]


def survey_likert_out_of_scale(tmp):
    def bad(raw):
        assert raw["items"][0]["kind"] == "likert" and raw["items"][0]["scale"] == [1, 5]
        raw["items"][0]["answer"] = 6

    load, path = _survey(tmp, bad)
    return load, path, ["items[0]", "answer 6", "1..5"]


def survey_choice_not_an_option(tmp):
    raw = yaml.safe_load((DATA / "surveys" / "maya.yaml").read_text(encoding="utf-8"))
    i = next(i for i, it in enumerate(raw["items"]) if it["kind"] == "choice")
    load, path = _survey(tmp, lambda raw: raw["items"][i].__setitem__("answer", "Bake them a cake"))
    return load, path, [f"items[{i}]", "answer 'Bake them a cake'", "options"]


def survey_duplicate_item_ids(tmp):
    load, path = _survey(tmp, lambda raw: raw["items"][3].__setitem__("id", raw["items"][1]["id"]))
    return load, path, ["items[3]", "'id'", "duplicate of items[1]"]


def survey_rephrase_of_unknown(tmp):
    raw = yaml.safe_load((DATA / "surveys" / "maya.yaml").read_text(encoding="utf-8"))
    i = next(i for i, it in enumerate(raw["items"]) if it.get("rephrase_of"))
    load, path = _survey(tmp, lambda raw: raw["items"][i].__setitem__("rephrase_of", "zz99"))
    return load, path, [f"items[{i}]", "'rephrase_of'", "'zz99'"]


def survey_confidence_above_one(tmp):
    load, path = _survey(tmp, lambda raw: raw["items"][2].__setitem__("confidence", 1.5))
    return load, path, ["items[2]", "'confidence'", "less than or equal to 1"]


def hitl_bad_json_line(tmp):
    folder = _copy(tmp, "hitl")
    path = folder / "writing_room.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[2] = lines[2][: len(lines[2]) // 2]  # truncated record
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return (lambda: loaders.load_hitl(folder)), path, ["line 3", "invalid JSON"]


def hitl_unknown_persona(tmp):
    known = {p.stem for p in (DATA / "personas").glob("*.yaml")}
    load, path = _hitl(tmp, 2, _set("persona_id", "ghost"), persona_ids=known)
    return load, path, ["line 2", "'persona_id'", "'ghost'"]


def hitl_persona_turn_without_alternatives(tmp):
    def bad(rec):
        rec["turns"][_first_turn(rec, "user")]["alternatives"] = []

    load, path = _hitl(tmp, 4, bad)
    rec = json.loads(path.read_text(encoding="utf-8").splitlines()[3])
    return load, path, ["line 4", f"turns[{_first_turn(rec, 'user')}]", "alternatives"]


def hitl_assistant_turn_with_alternatives(tmp):
    def bad(rec):
        rec["turns"][_first_turn(rec, "assistant")]["alternatives"] = ["Another way to say it."]

    load, path = _hitl(tmp, 5, bad)
    rec = json.loads(path.read_text(encoding="utf-8").splitlines()[4])
    return load, path, ["line 5", f"turns[{_first_turn(rec, 'assistant')}]", "alternatives"]


CASES = [
    persona_bad_yaml,
    persona_missing_stop_rules,
    persona_traits_as_string,
    persona_empty_example_lines,
    persona_id_not_file_name,
    persona_id_illegal_chars,
    persona_typo_key,
    persona_folder_empty,
    topics_missing_scenario_types,
    topics_empty_list,
    topics_duplicate,
    topics_non_string,
    topics_file_missing,
    trait_four_instruction_pairs,
    trait_eval_prompt_without_answer,
    trait_question_overlap,
    role_two_system_prompts,
    roles_without_default,
    roles_questions_empty,
    survey_likert_out_of_scale,
    survey_choice_not_an_option,
    survey_duplicate_item_ids,
    survey_rephrase_of_unknown,
    survey_confidence_above_one,
    hitl_bad_json_line,
    hitl_unknown_persona,
    hitl_persona_turn_without_alternatives,
    hitl_assistant_turn_with_alternatives,
]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_bad_input_is_named_precisely(case, tmp_path):
    load, path, expected = case(tmp_path)
    with pytest.raises(InputError) as info:
        load()
    msg = str(info.value)
    assert msg.count("\n") == 0, f"one error, one line: {msg!r}"
    for needle in [str(path), *expected]:
        assert needle in msg, f"{needle!r} missing from {msg!r}"


def test_real_data_loads(tmp_path):
    """Sanity: the untouched copies load, so every failure above comes from the one break."""
    personas = loaders.load_personas(DATA / "personas")
    loaders.load_topics(DATA / "topics.yaml")
    loaders.load_traits(DATA / "traits")
    loaders.load_roles(DATA / "roles")
    loaders.load_surveys(DATA / "surveys")
    loaders.load_hitl(DATA / "hitl", {p.id for p in personas})


# ----------------------------------------------------------------- run config


def test_unknown_profile_names_the_variable(monkeypatch):
    from persona_pipeline import settings

    monkeypatch.setenv("PERSONA_PIPELINE_PROFILE", "bogus")
    with pytest.raises(ValueError, match="PERSONA_PIPELINE_PROFILE") as info:
        settings.profile()
    assert "bogus" in str(info.value)


def test_unknown_model_setting_names_the_variable(monkeypatch):
    from persona_pipeline.defs.resources import model_resource_from_env

    monkeypatch.setenv("PERSONA_TEACHER_BOGUS", "1")
    with pytest.raises(ValueError, match="PERSONA_TEACHER_BOGUS"):
        model_resource_from_env("teacher")


def test_sampling_params_reject_zero_tokens():
    from persona_pipeline.backends import SamplingParams

    with pytest.raises(ValidationError, match="max_new_tokens"):
        SamplingParams(max_new_tokens=0)
