"""What the teacher is told: the whole spec for capable teachers, grounded survey follow-ups."""

from persona_pipeline import loaders
from persona_pipeline.backends import SamplingParams
from persona_pipeline.prompts import END_MARK, teacher_chat
from persona_pipeline.settings import data_root
from persona_pipeline.survey import follow_up_chat, split_items, survey_conversations


def spec():
    return loaders.load_personas(data_root() / "personas")[0]


def test_an_endpoint_teacher_sees_every_rule_the_small_one_a_compact_prompt():
    s = spec()
    full = teacher_chat(s, "trains", [], full=True)[0]["content"]
    compact = teacher_chat(s, "trains", [])[0]["content"]
    for part in [*s.constraints, *s.stop_rules, *s.edge_case_boundaries, *s.example_lines]:
        assert part in full
    assert END_MARK in full and END_MARK in compact
    assert s.stop_rules[-1] not in compact or len(s.stop_rules) == 1  # the compact one keeps only the first rule
    assert len(compact) < len(full) / 2


def maya():
    return loaders.load_surveys(data_root() / "surveys")[0]


def test_follow_ups_are_written_by_the_teacher_grounded_in_training_answers_only(tiny_backend):
    survey = maya()
    split = split_items(survey)
    seen: list = []

    class Recording:
        name = tiny_backend.name

        def complete(self, chats, params):
            seen.extend(chats)
            return tiny_backend.complete(chats, params)

    convs = survey_conversations(survey, split, 30, teacher=Recording(), params=SamplingParams(max_new_tokens=8))
    follow = [c for c in convs if "-followup-" in c.id]
    assert seen and any(c.metadata.generation_model.startswith("survey+") for c in follow)
    test_questions = {it.question for it in survey.items if split[it.id] == "test"}
    for chat in seen:
        system = chat[0]["content"]
        assert survey.profile.name in system and "Your own answers" in system
        assert not any(q in system for q in test_questions)  # no held-out answer grounds a training line
    by_id = {it.id: it for it in survey.items}
    item = next(by_id[c.id.split("followup-")[1]] for c in follow if by_id[c.id.split("followup-")[1]].follow_ups)
    conv = next(c for c in follow if c.id.endswith(item.id))
    assert conv.turns[3].content != (item.reasoning or "")  # not the previous turn's reasoning word for word


def test_follow_up_chat_puts_the_dialogue_before_the_question():
    survey = maya()
    it = survey.items[0]
    chat = follow_up_chat(survey, [it], "Why?", [("user", it.question), ("assistant", "yes")])
    assert [m["role"] for m in chat] == ["system", "user", "assistant", "user"] and chat[-1]["content"] == "Why?"
