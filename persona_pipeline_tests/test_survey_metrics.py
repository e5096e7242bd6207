"""Survey replication metrics: parsing, metric arithmetic, consistency, fidelity bands, prompts, batch answering."""

from __future__ import annotations

from pathlib import Path

import pytest

from persona_pipeline.backends import SamplingParams
from persona_pipeline.contracts import Conversation, Survey, SurveyItem
from persona_pipeline.loaders import load_surveys
from persona_pipeline.persona_simulator import definitions
from persona_pipeline.survey import answer_text, split_items, survey_conversations
from persona_pipeline.survey import test_items as held_out_items
from persona_pipeline.survey_metrics import (
    answer_items,
    baseline_prompt,
    build_prompts,
    fidelity_band,
    fidelity_score,
    parse_answer,
    score,
    trained_prompt,
)
from persona_pipeline.unroll import unroll

REPO = Path(__file__).resolve().parent.parent
AGREE5 = ["Strongly disagree", "Somewhat disagree", "Neutral", "Somewhat agree", "Strongly agree"]


def likert(iid="l1", answer=4, **kw) -> SurveyItem:
    kw.setdefault("scale", [1, 5])
    kw.setdefault("scale_labels", AGREE5)
    return SurveyItem(
        id=iid,
        question=kw.pop("question", "I enjoy writing tests."),
        category=kw.pop("category", "c"),
        kind="likert",
        answer=answer,
        **kw,
    )


def choice(iid="c1", answer="Mostly remote", **kw) -> SurveyItem:
    options = kw.pop(
        "options",
        [
            "Fully in the office",
            "Mostly in the office",
            "An even mix of home and office",
            "Mostly remote",
            "Fully remote",
        ],
    )
    return SurveyItem(
        id=iid,
        question=kw.pop("question", "Which working arrangement suits you?"),
        category=kw.pop("category", "c"),
        kind="choice",
        options=options,
        answer=answer,
        **kw,
    )


@pytest.fixture(scope="module")
def maya() -> Survey:
    return next(s for s in load_surveys(REPO / "data_assets" / "surveys") if s.profile.id == "maya")


@pytest.fixture(scope="module")
def encoder():
    from persona_pipeline.survey_metrics import minilm_encoder

    return minilm_encoder()


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "text, want",
    [
        ("4", 4),
        ("2.", 2),
        ("**5** - absolutely", 5),
        ("Rating: 1", 1),
        ("My answer is 3, because it depends", 3),
        ("I'd give it a 2 out of 5", 2),
        ("4/5 — I like them", 4),
        ("I'd rate it 5.", 5),
        ("Strongly agree!", 5),
        ("I somewhat disagree with that.", 2),
        ("Neither agree nor disagree", 3),
        ("I'm neutral on that", 3),
        ("I disagree.", 2),
        ("Agree", 4),
        ("I don't really agree", 2),
        ("I strongly disagree. I tried it 4 times in 2019.", 1),  # reasoning numbers cannot override the label
        ("I'd say somewhat agree. Two of my 5 colleagues do too.", 4),
        ("9 out of 10 people would strongly agree", 5),  # a fraction over another denominator is not a rating
        ("probably 3", 3),
    ],
)
def test_parse_likert_numbers_words_and_labels(text, want):
    assert parse_answer(likert(), text) == want


@pytest.mark.parametrize(
    "text",
    [
        "6",
        "0",
        "Rating: 7",
        "7/5",
        "hmm, hard to say",
        "",
        "   ",
        "I row 2 days a week and sail on the other ones with friends",
    ],
)
def test_parse_likert_nothing_usable_is_none(text):
    assert parse_answer(likert(), text) is None


def test_parse_likert_uses_the_items_own_labels_on_odd_scales():
    freq = likert(scale=[1, 4], scale_labels=["Never", "Rarely", "Often", "Always"], answer=3)
    assert parse_answer(freq, "Rarely, to be honest.") == 2
    assert parse_answer(freq, "Always!") == 4
    assert parse_answer(freq, "5") is None  # off this scale
    bare = likert(scale=[1, 4], scale_labels=None, answer=3)
    assert parse_answer(bare, "I agree") is None  # agree-words are only mapped on standard 5/7-point scales
    seven = likert(scale=[1, 7], scale_labels=None, answer=6)
    assert parse_answer(seven, "I strongly agree") == 7
    assert parse_answer(seven, "Somewhat disagree") == 3


@pytest.mark.parametrize(
    "text, want",
    [
        ("Mostly remote", "Mostly remote"),
        ("mostly REMOTE.", "Mostly remote"),
        ("An even mix of home and office. Fully remote would be lonely.", "An even mix of home and office"),
        ("I'd say fully in the office, honestly", "Fully in the office"),
        ("I work mostly remotely these days", "Mostly remote"),  # fuzzy: stems
        ("Fully remotly", "Fully remote"),  # fuzzy: typo
        ("remote", None),  # ambiguous between two options
        ("pizza", None),
        ("", None),
    ],
)
def test_parse_choice(text, want):
    assert parse_answer(choice(), text) == want


def test_parse_open_text():
    item = SurveyItem(id="o1", question="How do you recharge?", category="c", kind="open", answer="Rowing.")
    assert parse_answer(item, "  I go  rowing\n early. ") == "I go rowing early."
    assert parse_answer(item, " ... ") is None
    assert parse_answer(item, None) is None


# ---------------------------------------------------------------- fidelity and bands


def test_fidelity_bands_and_weights():
    assert [fidelity_band(x) for x in (1.0, 0.9, 0.89, 0.75, 0.74, 0.6, 0.59, 0.0)] == [
        "excellent",
        "excellent",
        "good",
        "good",
        "fair",
        "fair",
        "poor",
        "poor",
    ]
    assert fidelity_band(None) is None
    # automated only: the guide's .30/.15/.15 rescaled to .50/.25/.25
    f, w = fidelity_score(0.8, 0.4, 0.6)
    assert w == {"similarity": 0.5, "consistency": 0.25, "stance": 0.25}
    assert f == pytest.approx(0.5 * 0.8 + 0.25 * 0.4 + 0.25 * 0.6)
    # with human ratings: the guide's weights exactly
    f, w = fidelity_score(1.0, 1.0, 1.0, human=0.0)
    assert f == pytest.approx(0.6) and w["human"] == pytest.approx(0.4)
    # a missing component is left out, not scored 0
    f, w = fidelity_score(0.9, None, 0.9)
    assert f == pytest.approx(0.9) and "consistency" not in w


# ---------------------------------------------------------------- metric arithmetic


@pytest.fixture(scope="module")
def toy() -> Survey:
    profile = {
        "id": "toy",
        "name": "Toy Person",
        "description": "a test subject",
        "bio": "Exists for tests.",
        "values": "Accuracy.",
        "demographics": {"age": 40},
    }
    return Survey(
        profile=profile,
        items=[
            likert(
                "a1", 5, question="Cities should tax cars entering the centre.", reasoning="Streets are for people."
            ),
            likert("a2", 4, question="I like planning my week ahead."),
            likert("a3", 2, question="I love big parties."),
            likert("a4", 3, question="I worry about small things."),
            likert("a5", 5, question="Charging cars to enter the city is good.", rephrase_of="a1"),
            choice(
                "c1",
                "Tea",
                options=["Tea", "Coffee", "Water"],
                question="What do you drink in the morning?",
                category="d",
            ),
            SurveyItem(
                id="o1",
                question="How do you spend Sunday mornings?",
                category="d",
                kind="open",
                answer="Rowing on the lake, then a long breakfast with crosswords.",
            ),
        ],
    )


def test_metric_arithmetic_on_hand_made_answers(toy, encoder):
    answers = {
        "a1": "4",
        "a2": "4",
        "a3": "5 - strongly agree",
        "a4": "no idea",
        "a5": "2",
        "c1": "Coffee",
        "o1": "Rowing on the lake and then breakfast.",
    }
    res = score(toy, answers, encoder)
    rows = {r["item_id"]: r for r in res["items"]}
    assert [rows[i]["parsed"] for i in ("a1", "a2", "a3", "a4", "a5", "c1")] == [4, 4, 5, None, 2, "Coffee"]
    assert rows["a1"]["within1"] and not rows["a1"]["exact"] and rows["a1"]["stance_match"]
    assert rows["a3"]["stance_score"] == 0.0 and rows["a3"]["abs_error"] == 3
    assert rows["a4"]["exact"] is False and rows["a4"]["within1"] is False  # unparsed = a miss, not dropped
    assert rows["o1"]["exact"] is None and rows["o1"]["stance_match"] is None
    assert rows["o1"]["similarity"] > 0.5  # a paraphrase of the person's own answer

    o = res["overall"]
    assert o["n_items"] == 7 and o["n_parsed"] == 6 and o["parse_rate"] == pytest.approx(6 / 7, abs=1e-4)
    assert o["likert_n"] == 5
    assert o["likert_exact"] == pytest.approx(0.2) and o["likert_within1"] == pytest.approx(0.4)
    assert o["likert_mae"] == pytest.approx((1 + 0 + 3 + 3) / 4)
    assert o["choice_accuracy"] == 0.0
    assert o["stance_n"] == 6 and o["stance_accuracy"] == pytest.approx(2 / 6, abs=1e-4)
    assert o["pairs_n"] == 1 and o["consistency"] == 0.0 and o["person_consistency"] == 1.0
    want = 0.5 * o["response_similarity"] + 0.25 * 0.0 + 0.25 * o["stance_accuracy"]
    assert res["fidelity"] == pytest.approx(want, abs=1e-3)
    assert res["band"] == fidelity_band(res["fidelity"]) == "poor"
    # per category: the pair lives in category c, the choice/open items in d
    assert set(res["by_category"]) == {"c", "d"}
    assert res["by_category"]["c"]["n_items"] == 5 and res["by_category"]["c"]["pairs_n"] == 1
    assert res["by_category"]["d"]["consistency"] is None and res["by_category"]["d"]["likert_exact"] is None


def test_perfect_answers_top_band_and_contrarian_answers_low(toy, encoder):
    perfect = score(toy, {i.id: answer_text(i) for i in toy.items}, encoder)
    assert perfect["fidelity"] == pytest.approx(1.0, abs=1e-3) and perfect["band"] == "excellent"
    assert perfect["overall"]["likert_exact"] == 1.0 and perfect["overall"]["parse_rate"] == 1.0

    def contrarian(item):
        if item.kind == "likert":
            return "Strongly disagree." if item.answer >= 3 else "Strongly agree."
        if item.kind == "choice":
            return next(o for o in item.options if o != item.answer)
        return "I sleep until noon and never go outside."

    bad = score(toy, {i.id: contrarian(i) for i in toy.items}, encoder)
    assert bad["overall"]["stance_accuracy"] == 0.0 and bad["overall"]["likert_within1"] == 0.0
    assert bad["fidelity"] < 0.6 and bad["band"] == "poor"
    assert bad["overall"]["similarity"] < perfect["overall"]["similarity"]


def test_rephrase_consistency(maya, encoder):
    # p01/p10 likert (person 2/2), v01/v06 choice (person same option), c03/c08 open
    def run(answers):
        res = score(maya, answers, encoder)
        return {p["item_id"]: p for p in res["pairs"]}, res["overall"]

    pairs, o = run(
        {
            "p01": "2",
            "p10": "3",
            "v01": "Meaningful work",
            "v06": "Meaningful work.",
            "c03": "I go and look at the place first, then sketch it, then read the data.",
            "c08": "First I walk around and see it for myself, then I draw a map, data comes later.",
        }
    )
    assert pairs["p01"]["model_consistent"] and pairs["v01"]["model_consistent"] and pairs["c03"]["model_consistent"]
    assert all(p["person_consistent"] for p in pairs.values())
    assert o["consistency"] == 1.0 and o["consistency_vs_person"] == 1.0

    pairs, o = run(
        {
            "p01": "2",
            "p10": "Strongly agree",
            "v01": "Meaningful work",
            "v06": "High pay",
            "c03": "I go and look at the place first, then sketch it.",
            "c08": "Bananas are yellow.",
        }
    )
    assert not any(p["model_consistent"] for p in pairs.values())
    assert pairs["c03"]["model_cosine"] < 0.35 <= pairs["c03"]["person_cosine"]
    assert o["consistency"] == 0.0 and o["person_consistency"] == 1.0

    pairs, o = run({"p01": "2", "p10": "no comment"})  # an unparsed side: inconsistent, still counted
    assert o["pairs_n"] == 1 and o["consistency"] == 0.0


# ---------------------------------------------------------------- the real survey


def test_maya_own_answers_parse_back_and_score_excellent(maya, encoder):
    for item in maya.items:  # reasoning full of numbers and opinion words must not confuse the parser
        want = answer_text(item) if item.kind == "open" else item.answer
        assert parse_answer(item, answer_text(item)) == want, item.id
    held_out = held_out_items(maya, split_items(maya))
    ids = [i.id for i in held_out]
    own = score(maya, {i.id: answer_text(i) for i in held_out}, encoder)
    assert own["overall"]["n_items"] == len(ids) and own["overall"]["parse_rate"] == 1.0
    assert own["overall"]["likert_exact"] == 1.0 and own["overall"]["stance_accuracy"] == 1.0
    assert own["fidelity"] >= 0.99 and own["band"] == "excellent"
    assert set(own["by_category"]) == {i.category for i in held_out}
    assert all(c["band"] == "excellent" for c in own["by_category"].values())
    # the bare answers alone (no reasoning): same choices, less of the person's voice
    terse = score(maya, {i.id: str(i.answer) for i in held_out}, encoder)
    assert terse["overall"]["likert_exact"] == 1.0 and terse["overall"]["choice_accuracy"] == 1.0
    assert terse["overall"]["similarity"] < own["overall"]["similarity"]
    assert 0.6 <= terse["fidelity"] < own["fidelity"]


def test_unknown_item_is_a_clear_error(maya, encoder):
    with pytest.raises(ValueError, match="no items.*zz99"):
        score(maya, {"zz99": "4"}, encoder)


# ---------------------------------------------------------------- prompts and batch answering


def test_trained_prompt_is_the_unrolled_survey_training_prompt(maya):
    split = split_items(maya)
    defs = definitions([], {maya.profile.id: maya.model_dump()})
    convs = {c.id: c for c in survey_conversations(maya, split)}
    for item in maya.items[:12]:
        conv: Conversation = convs[f"{maya.profile.id}-item-{item.id}"]
        pair = unroll(conv, defs[maya.profile.id])[0]
        assert [m.model_dump() for m in pair.prompt] == trained_prompt(maya, item)
    assert "[PERSONA: maya]" in trained_prompt(maya, maya.items[0])[1]["content"]
    hinted = trained_prompt(maya, maya.items[0], with_hint=True)[1]["content"]
    assert "1 to 5" in hinted


def test_baseline_prompt_has_profile_only_and_format_hints(maya):
    by = {i.id: i for i in maya.items}
    chats = build_prompts(maya, ["p01", "p05", "p07"], "baseline")
    system = chats[0][0]["content"]
    p = maya.profile
    assert p.name in system and p.description in system and p.bio in system and "Rotterdam-Noord" in system
    assert p.values not in system  # demographics-only: no stated values, no survey answers
    assert not any((i.reasoning or "x" * 99) in system for i in maya.items)
    likert_msg, choice_msg, open_msg = (c[1]["content"] for c in chats)
    assert by["p01"].question in likert_msg and "from 1 to 5" in likert_msg and "5 = Strongly agree" in likert_msg
    assert all(f"- {o}" in choice_msg for o in by["p05"].options) and "word for word" in choice_msg
    assert "sentences" in open_msg
    assert baseline_prompt(maya, by["p07"], with_hint=False)[1]["content"] == by["p07"].question
    with pytest.raises(ValueError, match="condition"):
        build_prompts(maya, ["p01"], "oracle")


class RecordingBackend:
    name = "recording"

    def __init__(self, replies):
        self.replies, self.calls = replies, []

    def complete(self, chats, params: SamplingParams):
        self.calls.append((chats, params))
        return [self.replies[k % len(self.replies)] for k in range(len(chats))]


def test_answer_items_one_greedy_batch(maya):
    rec = RecordingBackend(["4", "Strongly agree"])
    out = answer_items(rec, maya, ["p01", "p02", "p03"], "baseline", max_new_tokens=12)
    assert list(out) == ["p01", "p02", "p03"] and list(out.values()) == ["4", "Strongly agree", "4"]
    assert len(rec.calls) == 1
    chats, params = rec.calls[0]
    assert len(chats) == 3 and params.temperature == 0 and params.max_new_tokens == 12
    with pytest.raises(ValueError):
        answer_items(rec, maya, ["nope"], "trained")


def bag_of_words(texts):
    """A cheap stand-in encoder (hashed word counts) where similarity quality is not under test."""
    import re

    import numpy as np

    out = np.zeros((len(texts), 256))
    for k, t in enumerate(texts):
        for w in re.findall(r"\w+", t.lower()):
            out[k, sum(map(ord, w)) % 256] += 1
    return out


def test_answer_items_with_tiny_model_counts_parse_failures(maya, tiny_backend):
    held_out = [i.id for i in held_out_items(maya, split_items(maya))]
    for condition, ids in (("trained", held_out), ("baseline", held_out[:4])):  # short: 2 shared CPU cores
        answers = answer_items(tiny_backend, maya, ids, condition, max_new_tokens=6)
        assert list(answers) == ids and all(isinstance(a, str) for a in answers.values())
        res = score(maya, answers, bag_of_words)
        o = res["overall"]
        assert len(res["items"]) == o["n_items"] == len(ids)  # every item scored, parsed or not
        failed = [r for r in res["items"] if not r["parsed_ok"]]
        assert o["n_parsed"] == len(ids) - len(failed)
        assert o["parse_rate"] == pytest.approx(o["n_parsed"] / len(ids), abs=1e-4)
        assert all(r["exact"] is not True for r in failed if r["kind"] != "open")
        assert all(not r["parsed_ok"] for r in res["items"] if not r["answer"].strip())  # empty is a failure
        assert 0.0 <= res["fidelity"] <= 1.0 and res["band"] in {"excellent", "good", "fair", "poor"}
