"""Learned endings: [END] survives into SFT targets, HITL can mark it, and simulate / serve stop there.

The persona that ends here is a scripted inner backend (the tiny random model never
writes the marker); what is under test is the plumbing around the model: what the
training target says, when the dialogue loop stops and what the endpoint returns.
"""

import json

import httpx

from persona_pipeline.backends import SamplingParams
from persona_pipeline.contracts import Conversation, ConversationMetadata, HitlRecord, Turn
from persona_pipeline.eval_dialogues import _conversation, _Dialogue, endings
from persona_pipeline.hitl import expand_paths
from persona_pipeline.persona_simulator import PersonaBackend
from persona_pipeline.prompts import END_MARK, split_end
from persona_pipeline.serve import create_app, serving
from persona_pipeline.teacher_dialogues import Dialogue, converse
from persona_pipeline.unroll import unroll


def conv(ended: bool) -> Conversation:
    lines = ["my train got cancelled", "Where to?", "Milan. ok thanks, bye", "Safe travels!"][: 3 if ended else 4]
    turns = [Turn(role="user" if i % 2 == 0 else "assistant", content=x) for i, x in enumerate(lines)]
    return Conversation(
        id="c", persona_id="terse", topic="trains", turns=turns, metadata=ConversationMetadata(ended_by_stop_rule=ended)
    )


def test_the_last_line_of_a_dialogue_ended_by_a_stop_rule_keeps_the_marker_in_sft_data():
    pairs = unroll(conv(True), "T")
    assert pairs[-1].completion[0].content == f"Milan. ok thanks, bye {END_MARK}"
    assert END_MARK not in pairs[0].completion[0].content
    assert "[TOPIC: trains]" in pairs[0].prompt[1].content and "[TOPIC:" not in pairs[1].prompt[1].content
    assert all(END_MARK not in p.completion[0].content for p in unroll(conv(False), "T"))


def test_split_end_keeps_the_words_before_the_marker():
    assert split_end("ok bye [END] and more") == ("ok bye", True)
    assert split_end("[END] bye") == ("bye", True)
    assert split_end("still here") == ("still here", False)


def test_hitl_marks_an_ending_with_the_marker_or_the_metadata_flag():
    turns = [
        Turn(role="user", content="hi, trains?", alternatives=["trains, help"]),
        Turn(role="assistant", content="Sure."),
        Turn(role="user", content="great, bye [END]", alternatives=["thanks, done [END]"]),
    ]
    rec = HitlRecord(id="h1", persona_id="terse", topic="trains", scenario_type="travel", turns=turns)
    paths = expand_paths(rec)
    assert all(c.metadata.ended_by_stop_rule for c in paths)
    assert [c.turns[-1].content for c in paths] == ["great, bye", "thanks, done"]
    assert unroll(paths[0], "T")[-1].completion[0].content.endswith(END_MARK)
    plain = rec.model_copy(update={"turns": [*turns[:2], Turn(role="user", content="bye", alternatives=["ok"])]})
    assert not expand_paths(plain)[0].metadata.ended_by_stop_rule
    flagged = plain.model_copy(update={"metadata": {"ended_by_stop_rule": True}})
    assert expand_paths(flagged)[0].metadata.ended_by_stop_rule


class EndsOnSecondLine:
    """Inner model of a persona that has learnt to end: its second line carries the marker."""

    name = "scripted"

    def complete(self, chats, params):
        return ["thanks, that settles it [END]" if "assistant:" in c[-1]["content"] else "first line" for c in chats]


def test_converse_stops_a_dialogue_where_the_persona_ends_it(tiny_backend):
    sim = PersonaBackend(EndsOnSecondLine(), "terse", "T")
    d = Dialogue(id="d", persona_id="terse", topic="trains", scenario_type="cli")
    (c,) = converse([d], {"terse": sim}, tiny_backend, turns=8, persona_tokens=4, assistant_tokens=4)
    assert [t.role for t in c.turns] == ["user", "assistant", "user"]
    assert c.turns[-1].content == "thanks, that settles it" and c.metadata.ended_by_stop_rule


def test_evaluation_dialogues_record_the_end_turn_and_report_the_share():
    from persona_pipeline.eval_dialogues import Contestant

    who = Contestant("sft", "terse", "sft", prompt=lambda t, h: [])
    ended = _Dialogue(who, "trains", [{"role": "user", "content": "x"}], ended_at=3)
    running = _Dialogue(who, "boats", [{"role": "user", "content": "y"}])
    convs = [_conversation(ended), _conversation(running)]
    assert json.loads(convs[0].metadata.extra) == {"ended_at_turn": 3} and not convs[1].metadata.ended_by_stop_rule
    assert endings(convs) == [{"method": "sft", "dialogues": 2, "ended_by_stop_rule": 0.5, "end_turns": "3"}]


def test_serve_says_the_persona_ended_the_conversation(tiny_backend):
    app = create_app(
        {"persona-simulator:terse": PersonaBackend(EndsOnSecondLine(), "terse", "T"), "tiny": tiny_backend}
    )
    with serving(app) as url:
        chat = [{"role": "user", "content": "first line"}, {"role": "assistant", "content": "ok"}]
        body = {"model": "persona-simulator:terse", "messages": chat, "max_tokens": 8}
        choice = httpx.post(f"{url}/chat/completions", json=body, timeout=30).json()["choices"][0]
        assert choice["message"]["content"] == "thanks, that settles it"
        assert choice["finish_reason"] == "stop" and choice["end_of_conversation"] is True
        opening = httpx.post(f"{url}/chat/completions", json={**body, "messages": chat[:1]}, timeout=30).json()
        assert opening["choices"][0]["end_of_conversation"] is False
        stream = httpx.post(f"{url}/chat/completions", json={**body, "stream": True}, timeout=30).text
        last = json.loads([x for x in stream.split("data: ") if x.strip().startswith("{")][-1])
        assert last["choices"][0]["finish_reason"] == "stop" and last["choices"][0]["end_of_conversation"] is True
        plain = httpx.post(f"{url}/chat/completions", json={**body, "model": "tiny"}, timeout=30).json()
        assert "end_of_conversation" not in plain["choices"][0]
    assert SamplingParams().repetition_penalty == 1.0
