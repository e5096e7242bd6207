"""The shipped input data loads cleanly and meets the sizes the pipeline promises."""

from collections import Counter

from persona_pipeline import loaders


def test_personas_are_many_and_distinct(data_dir):
    specs = loaders.load_personas(data_dir / "personas")
    assert len(specs) >= 6
    assert len({s.description for s in specs}) == len(specs)
    for s in specs:
        assert s.stop_rules and s.edge_case_boundaries and len(s.example_lines) >= 3


def test_topics_cover_many_scenarios_with_a_heldout_split(data_dir):
    topics = loaders.load_topics(data_dir / "topics.yaml")
    assert len(topics) >= 500
    assert len({t.text for t in topics}) == len(topics)
    per_type = Counter(t.scenario_type for t in topics)
    assert len(per_type) >= 10
    heldout = [t for t in topics if t.split == "heldout"]
    assert 0.05 * len(topics) < len(heldout) < 0.2 * len(topics)
    # the split is a pure function of the text: stable across machines and runs
    assert [t.split for t in loaders.load_topics(data_dir / "topics.yaml")] == [t.split for t in topics]


def test_traits_follow_the_persona_vectors_layout(data_dir):
    traits = loaders.load_traits(data_dir / "traits")
    assert len(traits) >= 5
    for t in traits:
        assert len(t.instructions) == 5 and len(t.extract_questions) >= 20 and len(t.eval_questions) >= 20
        assert "0" in t.eval_prompt and "100" in t.eval_prompt
        t.eval_prompt.format(question="q", answer="a")


def test_roles_include_default_and_shared_questions(data_dir):
    roles = loaders.load_roles(data_dir / "roles")
    assert len([r for r in roles.roles if r.role != "default"]) >= 12
    assert len(roles.questions) >= 40
    assert all(len(r.system_prompts) >= 3 for r in roles.roles)


def test_survey_has_mixed_kinds_categories_and_rephrasings(data_dir):
    (survey,) = loaders.load_surveys(data_dir / "surveys")
    items = survey.items
    assert len(items) >= 80
    assert len({i.category for i in items}) >= 6
    assert {i.kind for i in items} == {"likert", "choice", "open"}
    assert sum(bool(i.reasoning) for i in items) > len(items) / 2
    assert sum(bool(i.rephrase_of) for i in items) >= 5


def test_hitl_turns_carry_two_or_three_gold_lines(data_dir):
    personas = {s.id for s in loaders.load_personas(data_dir / "personas")}
    records = loaders.load_hitl(data_dir / "hitl", personas)
    assert records and {r.persona_id for r in records} <= personas
    for r in records:
        for t in r.turns:
            if t.role == "user":
                assert 2 <= 1 + len(t.alternatives) <= 3
