"""Dialogue simulation: structure, batching per step, resume from the work cache."""

import pytest

from persona_pipeline import loaders
from persona_pipeline.prompts import teacher_chat
from persona_pipeline.teacher_dialogues import DialogueSettings, WorkCache, clean_persona_line, plan_dialogues, simulate


class Counting:
    """Wraps a real backend and counts batched calls (not a mock: it still generates)."""

    def __init__(self, inner):
        self.inner, self.name, self.calls, self.chats = inner, inner.name, 0, 0

    def complete(self, chats, params):
        self.calls += 1
        self.chats += len(chats)
        return self.inner.complete(chats, params)


@pytest.fixture()
def world(data_dir):
    specs = {s.id: s for s in loaders.load_personas(data_dir / "personas")}
    topics = loaders.load_topics(data_dir / "topics.yaml")
    return specs, topics


def test_plan_prefers_affinity_and_only_uses_training_topics(world):
    specs, topics = world
    spec = specs["skeptic"]
    plans = plan_dialogues(spec, topics, 8)
    heldout = {t.text for t in topics if t.split == "heldout"}
    assert len(plans) == 8 and len({d.id for d in plans}) == 8
    assert not heldout & {d.topic for d in plans}
    assert sum(d.scenario_type in spec.scenario_affinity for d in plans) >= 6
    assert [d.id for d in plan_dialogues(spec, topics, 8)] == [d.id for d in plans]


def test_teacher_sees_the_persona_side_as_its_own_turns(world):
    specs, _ = world
    chat = teacher_chat(
        specs["playful"], "Japan trip", [{"role": "user", "content": "hey!"}, {"role": "assistant", "content": "Hello"}]
    )
    assert chat[0]["role"] == "system" and "Japan trip" in chat[0]["content"]
    assert [m["role"] for m in chat[1:]] == ["user", "assistant", "user"]
    assert chat[2]["content"] == "hey!"


def test_clean_persona_line_strips_labels_and_detects_end():
    assert clean_persona_line('User: "ok fine [END]"', "Dmitri H") == ("ok fine", True)
    assert clean_persona_line("Dmitri: source?\n\nextra", "Dmitri H") == ("source?", False)


def test_dialogues_alternate_and_reach_min_turns_in_batched_steps(world, tiny_backend):
    specs, topics = world
    dialogues = plan_dialogues(specs["anxious"], topics, 2) + plan_dialogues(specs["retiree"], topics, 2)
    teacher, assistant = Counting(tiny_backend), Counting(tiny_backend)
    cfg = DialogueSettings(
        min_turns=8, max_turns=8, persona_max_new_tokens=6, assistant_max_new_tokens=6, max_line_retries=0
    )
    convs = simulate(dialogues, specs, teacher, assistant, cfg)
    assert len(convs) == 4
    for c in convs:
        assert len(c.turns) == 8 and [t.role for t in c.turns] == ["user", "assistant"] * 4
        assert c.metadata.source == "synthetic" and c.metadata.generation_model == "tiny"
    assert teacher.calls == 4 and assistant.calls == 4  # one batched call per step, not per dialogue
    assert teacher.chats == 16


def test_resume_from_cache_loses_and_duplicates_nothing(world, tiny_backend, tmp_path):
    specs, topics = world
    cfg = DialogueSettings(
        min_turns=8, max_turns=8, persona_max_new_tokens=6, assistant_max_new_tokens=6, max_line_retries=0
    )
    plan = lambda: plan_dialogues(specs["parent"], topics, 3)
    cache = WorkCache(tmp_path, {"parent": "fp1"})

    class Interrupt(Exception):
        pass

    def stop_after_three(step, _):
        if step == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        simulate(plan(), specs, tiny_backend, tiny_backend, cfg, cache=cache, on_step=stop_after_three)
    partial = cache.load("parent")
    assert all(len(d.turns) == 3 and not d.done for d in partial.values())

    teacher = Counting(tiny_backend)
    convs = simulate(plan(), specs, teacher, tiny_backend, cfg, cache=cache)
    assert len({c.id for c in convs}) == 3
    for c in convs:
        assert [t.content for t in c.turns[:3]] == [t["content"] for t in partial[c.id].turns]
        assert len(c.turns) == 8
    assert teacher.calls == 2  # only the remaining persona steps (turns 4 and 6) were generated

    again = Counting(tiny_backend)
    assert [c.turns for c in simulate(plan(), specs, again, again, cfg, cache=cache)] == [c.turns for c in convs]
    assert again.calls == 0  # finished dialogues are never regenerated
