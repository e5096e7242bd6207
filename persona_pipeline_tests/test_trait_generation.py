"""New traits from a description: the teacher's replies parsed, topped up from templates, validated, written.

The files are read back by the pipeline's own trait loader (alone and next to the shipped traits),
through the core module, the CLI and the Dagster job, with a local model as teacher and with our
OpenAI-compatible server on loopback (the real ``openai`` client path).
"""

from __future__ import annotations

import json
import shutil

import pytest

from persona_pipeline import loaders
from persona_pipeline import trait_generation as tg
from persona_pipeline.contracts import Trait

DESCRIPTION = "Anxiety: a persistent worried, nervous and uneasy tone about everything that might go wrong."


def _counts_add_up(gen: tg.GeneratedTrait) -> None:
    need = {"instructions": tg.N_PAIRS, "extract_questions": tg.N_QUESTIONS, "eval_questions": tg.N_QUESTIONS}
    for name, n in {**need, "eval_prompt": 1}.items():
        assert sum(gen.sources[name].values()) == n, name


# --- parsing the teacher's replies -------------------------------------------------------------------


def test_pairs_parse_from_json_and_from_labelled_lines():
    as_json = 'Sure! [{"pos": "Worry aloud about every risk you can think of.", "neg": "Stay calm and never dwell on risks."}]'
    assert tg.parse_pairs(as_json) == [
        {"pos": "Worry aloud about every risk you can think of.", "neg": "Stay calm and never dwell on risks."}
    ]
    lines = "1. pos: Fret openly about what could go wrong.\n   neg: Answer calmly and with confidence.\nnoise"
    assert tg.parse_pairs(lines) == [
        {"pos": "Fret openly about what could go wrong.", "neg": "Answer calmly and with confidence."}
    ]
    same = '[{"pos": "Be very worried about things.", "neg": "Be very worried about things."}]'
    assert tg.parse_pairs(same) == [], "a pair whose two sides are the same contrasts nothing"
    assert tg.parse_pairs("[{broken json") == []


def test_questions_keep_only_single_questions():
    text = '1. How do I bake bread at home?\n2) "What is the best way to learn chess?"\n- hi?\nNot a question.\n'
    assert tg.parse_questions(text) == ["How do I bake bread at home?", "What is the best way to learn chess?"]
    assert tg.parse_questions("Q1: Where should I go {on} holiday this year?") == [], "braces would break templates"


def test_rubric_rejects_short_repetitive_and_off_topic_text():
    good = "An anxious answer dwells on risks and worries and keeps seeking reassurance; a calm, neutral answer scores near 0."
    assert tg.parse_rubric(good, "anxious") == good
    assert tg.parse_rubric("Rate it.", "anxious") is None
    assert tg.parse_rubric("anxious " * 40, "anxious") is None
    assert (
        tg.parse_rubric("A long paragraph about the weather and the sea and the many boats on it, " * 2, "anxious")
        is None
    )
    assert "{" not in tg.parse_rubric(good + " Use {braces}.", "anxious"), "teacher braces would break str.format"


# --- building and writing -----------------------------------------------------------------------------


def test_no_usable_replies_still_give_a_valid_trait_marked_template(tmp_path):
    gen = tg.build_trait("anxious", DESCRIPTION, {"instructions": ["I cannot help with that."]}, "none")
    _counts_add_up(gen)
    assert {gen.origin(k) for k in gen.sources} == {"template"}
    assert not set(gen.trait.extract_questions) & set(gen.trait.eval_questions)
    assert gen.trait.eval_prompt.format(question="Q?", answer="A.")  # fills with exactly the two fields
    (path,) = tg.write_trait(gen, tmp_path)
    assert loaders.load_trait_file(path) == gen.trait
    header = path.read_text().splitlines()[:6]
    assert any("instructions: template (teacher 0, template 5)" in line for line in header)


def test_teacher_items_come_first_and_are_counted(tmp_path):
    replies = {
        "instructions": [
            '[{"pos": "Worry aloud about every risk you can think of.", "neg": "Stay calm about risks."}]'
        ],
        "extract_questions": ["1. How do I bake bread at home?\n2. How do I bake bread at home?"],  # a duplicate
        "eval_questions": ["1. How do I bake bread at home?\n2. What should I pack for a hike?"],  # one overlaps
        "eval_prompt": ["An anxious answer dwells on risks and worries and keeps seeking reassurance; calm scores 0."],
    }
    gen = tg.build_trait("anxious", DESCRIPTION, replies, "hand")
    _counts_add_up(gen)
    assert gen.trait.instructions[0].pos == "Worry aloud about every risk you can think of."
    assert gen.sources["instructions"] == {"teacher": 1, "template": 4}
    assert gen.sources["extract_questions"]["teacher"] == 1, "duplicates are dropped"
    assert gen.trait.eval_questions[0] == "What should I pack for a hike?", "extraction and evaluation stay disjoint"
    assert gen.origin("eval_prompt") == "teacher" and gen.trait.eval_prompt.startswith("An anxious answer")
    (path,) = tg.write_trait(gen, tmp_path)
    assert "eval_prompt: teacher" in path.read_text()


def test_new_file_loads_next_to_the_shipped_traits_and_refuses_to_clobber(tmp_path, data_dir):
    folder = tmp_path / "traits"
    shutil.copytree(data_dir / "traits", folder)
    gen = tg.build_trait("anxious", DESCRIPTION, {}, "none")
    tg.write_trait(gen, folder)
    names = {t.trait for t in loaders.load_traits(folder)}
    assert "anxious" in names and "humorous" in names
    with pytest.raises(loaders.InputError, match="already exists"):
        tg.write_trait(gen, folder)
    with pytest.raises(loaders.InputError, match="already exists"):
        tg.write_trait(tg.build_trait("humorous", DESCRIPTION, {}, "none"), folder)


def test_persona_vectors_layout_replaces_the_yaml_and_loads(tmp_path):
    gen = tg.build_trait("anxious", DESCRIPTION, {}, "none")
    tg.write_trait(gen, tmp_path)
    paths = tg.write_trait(gen, tmp_path, "persona-vectors", overwrite=True)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in paths) == [
        "trait_data_eval/anxious.json",
        "trait_data_extract/anxious.json",
    ]
    assert not (tmp_path / "anxious.yaml").exists(), "two files would define the same trait"
    raw = json.loads(paths[1].read_text())
    assert set(raw) == {"instruction", "questions", "eval_prompt", "description"}
    assert loaders.load_traits(tmp_path) == [gen.trait]


def test_bad_name_and_short_description_are_refused(tiny_backend):
    with pytest.raises(loaders.InputError, match="must match"):
        tg.build_trait("Anxious Mood", DESCRIPTION, {}, "none")
    with pytest.raises(loaders.InputError, match="description"):
        tg.generate_trait(tiny_backend, "anxious", "worry")


# --- with a real model as teacher ---------------------------------------------------------------------


def test_tiny_model_teacher_gives_a_loadable_file(tiny_backend, tmp_path):
    gen = tg.generate_trait(tiny_backend, "anxious", DESCRIPTION, attempts=1, max_new_tokens=24)
    _counts_add_up(gen)
    assert set(gen.raw) == {"instructions", "extract_questions", "eval_questions", "eval_prompt"}
    assert gen.teacher == "tiny"
    (path,) = tg.write_trait(gen, tmp_path)
    assert isinstance(loaders.load_trait_file(path), Trait)


def test_openai_compatible_teacher_over_loopback(tiny_backend, tmp_path):
    from persona_pipeline.backends.openai_compat import OpenAIBackend
    from persona_pipeline.serve import create_app, serving

    with serving(create_app({"tiny": tiny_backend})) as url:
        gen = tg.generate_trait(OpenAIBackend("tiny", base_url=url), "anxious", DESCRIPTION, 1, 16)
    _counts_add_up(gen)
    assert all(isinstance(r, str) for replies in gen.raw.values() for r in replies)
    assert isinstance(loaders.load_trait_file(tg.write_trait(gen, tmp_path)[0]), Trait)


def test_cli_new_trait_writes_and_refuses_to_overwrite(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from persona_pipeline.cli import main

    monkeypatch.setenv("PERSONA_TEACHER_MODEL", str(tiny_model_dir))
    args = ["new-trait", "anxious", DESCRIPTION, "--out", str(tmp_path), "--attempts", "1", "--max-tokens", "16"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["files"] == [str(tmp_path / "anxious.yaml")]
    assert set(report["sources"]) == {"instructions", "extract_questions", "eval_questions", "eval_prompt"}
    assert loaders.load_trait_file(tmp_path / "anxious.yaml").trait == "anxious"
    with pytest.raises(SystemExit, match="already exists"):
        main(args)


def test_dagster_job_writes_into_the_data_folder(tiny_model_dir, tmp_path, monkeypatch):
    from persona_pipeline.defs.resources import ModelResource
    from persona_pipeline.defs.trait_generation import new_trait

    monkeypatch.setenv("PERSONA_PIPELINE_DATA", str(tmp_path))
    config = {"name": "anxious", "description": DESCRIPTION, "attempts": 1, "max_new_tokens": 16}
    result = new_trait.execute_in_process(
        run_config={"ops": {"generate_trait_file": {"config": config}}},
        resources={"teacher": ModelResource(role="teacher", model=str(tiny_model_dir))},
    )
    assert result.success
    out = result.output_for_node("generate_trait_file")
    assert out["paths"] == [str(tmp_path / "traits" / "anxious.yaml")]
    assert loaders.load_trait_file(tmp_path / "traits" / "anxious.yaml").trait == "anxious"


@pytest.mark.integration
def test_embedded_teacher_gives_a_valid_if_weak_file(embedded_backend, tmp_path):
    gen = tg.generate_trait(embedded_backend, "anxious", DESCRIPTION, attempts=1, max_new_tokens=160)
    _counts_add_up(gen)
    (path,) = tg.write_trait(gen, tmp_path)
    assert loaders.load_trait_file(path) == gen.trait
    text = path.read_text()
    for name in gen.sources:  # provenance is in the file, whatever the 135M teacher managed
        assert f"#   {name}: {gen.origin(name)}" in text
