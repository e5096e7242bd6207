"""Unit tests of the data-stage core: HITL paths, survey split, quality, de-dup, unrolling."""

import pytest

from persona_pipeline import loaders
from persona_pipeline.contracts import Conversation, ConversationMetadata, Turn
from persona_pipeline.curate import CurateSettings, curate
from persona_pipeline.hitl import expand_paths, mix_to_target
from persona_pipeline.quality import dedupe, persona_breaks, quality_score
from persona_pipeline.survey import answer_text, split_items, survey_conversations
from persona_pipeline.unroll import unroll


def conv(cid, lines, persona="p1", source="synthetic"):
    turns = [Turn(role="user" if i % 2 == 0 else "assistant", content=x) for i, x in enumerate(lines)]
    return Conversation(
        id=cid, persona_id=persona, topic="t", turns=turns, metadata=ConversationMetadata(source=source)
    )


DIALOGUE = [
    f"line {i} about trains and {w}"
    for i, w in enumerate(["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"])
]


def test_hitl_alternatives_become_paths(data_dir):
    rec = loaders.load_hitl(data_dir / "hitl")[0]
    paths = expand_paths(rec)
    n_alt = max(len(t.alternatives) for t in rec.turns if t.role == "user")
    assert len(paths) == 1 + n_alt
    first_user = next(i for i, t in enumerate(rec.turns) if t.role == "user")
    assert {p.turns[first_user].content for p in paths} == {
        rec.turns[first_user].content,
        *rec.turns[first_user].alternatives,
    }
    assert all(p.turns[1].content == rec.turns[1].content for p in paths)  # assistant turns are shared
    assert len({p.id for p in paths}) == len(paths)


def test_mix_repeats_hitl_to_the_target_share_and_never_drops_gold():
    gold = [conv(f"h#p{i}", DIALOGUE, source="hitl") for i in range(2)]
    mixed, report = mix_to_target(40, gold, 0.2)
    assert len(mixed) == 10 and report["achieved_hitl_share"] == 0.2
    assert len({c.id for c in mixed}) == 10
    mixed, report = mix_to_target(2, gold * 3, 0.2)
    assert len(mixed) == 6 and report["achieved_hitl_share"] > 0.2
    with pytest.raises(ValueError, match="hitl_share"):
        mix_to_target(10, gold, 1.0)


def test_survey_split_is_stratified_and_keeps_rephrasings_together(data_dir):
    (survey,) = loaders.load_surveys(data_dir / "surveys")
    split = split_items(survey, 0.2)
    by_cat = {}
    for item in survey.items:
        by_cat.setdefault(item.category, set()).add(split[item.id])
    assert all(sides == {"train", "test"} for sides in by_cat.values())
    for item in survey.items:
        if item.rephrase_of:
            assert split[item.id] == split[item.rephrase_of]
    share = sum(v == "test" for v in split.values()) / len(split)
    assert 0.12 < share < 0.3


def test_survey_conversations_never_put_test_items_in_training(data_dir):
    (survey,) = loaders.load_surveys(data_dir / "surveys")
    split = split_items(survey)
    convs = survey_conversations(survey, split, follow_up_items=30)
    test_questions = {i.question for i in survey.items if split[i.id] == "test"}
    train_text = " ".join(t.content for c in convs if c.metadata.split == "train" for t in c.turns)
    assert not [q for q in test_questions if q in train_text]
    assert any(len(c.turns) > 4 for c in convs)  # follow-up dialogues
    assert any(c.id.endswith("identity") for c in convs)
    assert all(c.persona_role == "assistant" for c in convs)


def test_likert_answer_becomes_words_plus_reasoning(data_dir):
    (survey,) = loaders.load_surveys(data_dir / "surveys")
    item = next(i for i in survey.items if i.kind == "likert" and i.reasoning)
    text = answer_text(item)
    assert item.reasoning in text and any(w in text.lower() for w in ("agree", "disagree", "neutral"))


def test_quality_penalises_breaks_repetition_and_short_dialogues():
    good = conv("g", DIALOGUE)
    assert quality_score(good)[0] == 1.0
    broken = conv("b", ["As an AI language model I cannot travel."] + DIALOGUE[1:])
    assert persona_breaks(broken) == [0]
    assert quality_score(broken)[0] < 0.5
    short = conv("s", DIALOGUE[:4])
    assert quality_score(short)[0] == 0.5
    looped = conv("r", ["the same words over and over again"] * 8)
    score, reasons = quality_score(looped)
    assert score < 0.5 and any(r.startswith("repetition") for r in reasons)


def test_dedupe_drops_exact_and_near_duplicates_but_not_hitl_paths():
    a = conv("a", DIALOGUE)
    exact = conv("b", [x.upper() for x in DIALOGUE])
    near = conv("c", DIALOGUE[:-1] + ["line 7 about trains and theta, then home"])
    other = conv("d", [f"completely different sentence number {i} here" for i in range(8)])
    path = conv("a#p1", DIALOGUE, source="hitl")
    kept, dropped = dedupe([a, path, exact, near, other])
    assert [c.id for c in kept] == ["a", "d"]  # an identical path is still an exact duplicate
    assert dropped["b"].startswith("exact") and dropped["c"].startswith("near")
    hitl_a, hitl_b = conv("h#p0", DIALOGUE, source="hitl"), conv("h#p1", DIALOGUE[:-1] + ["x y z"], source="hitl")
    assert len(dedupe([hitl_a, hitl_b])[0]) == 2


def test_curate_reports_counts_and_filters():
    syn = [conv("s1", DIALOGUE), conv("s2", ["As an AI, I can't."] * 8), conv("s3", DIALOGUE)]
    kept, report = curate(syn, [], [], CurateSettings(hitl_share=0.2))
    assert [c.id for c in kept] == ["s1"]
    assert report["dropped"] == {"exact_duplicate_of": 1, "low_quality<0.4": 1}
    assert kept[0].metadata.quality_score == 1.0


def test_unroll_gives_one_pair_per_persona_turn_with_history_prefix():
    c = conv("c1", DIALOGUE, persona="playful")
    pairs = unroll(c, "Playful definition")
    assert len(pairs) == len(c.persona_turn_indices()) == 4
    for p in pairs:
        system, user = p.prompt
        assert "Playful definition" in system.content and user.content.startswith("[PERSONA: playful]")
        assert p.completion[0].content == c.turns[p.turn_index].content
        assert c.turns[p.turn_index].content not in user.content  # never the line being predicted
        for earlier in c.turns[: p.turn_index]:
            assert earlier.content in user.content
    assert "<empty>" in pairs[0].prompt[1].content
