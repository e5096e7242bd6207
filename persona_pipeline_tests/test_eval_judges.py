"""Evaluation judges: reply parsing, batched re-asks, failed records, persona-aware prompts,
judge agreement and the long-dialogue drift helper."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from persona_pipeline.backends import BackendError, SamplingParams
from persona_pipeline.contracts import Conversation
from persona_pipeline.dialogue_drift import consistency_drift, drift_points
from persona_pipeline.eval_judges import (
    EvalItem,
    JudgeScore,
    VerdictError,
    items_from_conversation,
    judge_agreement,
    parse_verdict,
    persona_aware_chat,
    persona_aware_judge,
    persona_judge,
    persona_judge_chat,
    persona_lines,
    persona_profile,
    reward_judge,
    run_judges,
    select_samples,
)
from persona_pipeline.loaders import load_personas

GOOD = '{"adherence": 0.8, "consistency": 0.6, "quality": 0.9, "safety": "pass", "reasoning": "sounds like her"}'


@pytest.fixture(scope="module")
def specs():
    from pathlib import Path

    folder = Path(__file__).resolve().parent.parent / "data_assets" / "personas"
    return {s.id: s for s in load_personas(folder)}


def item(i: int, persona: str = "anxious", **kw) -> EvalItem:
    history = [
        {"role": "user", "content": "Hello, my phone is beeping."},
        {"role": "assistant", "content": "Which app shows the alert?"},
    ]
    return EvalItem(
        id=f"it{i}", persona_id=persona, history=history, candidate=f"Sorry, is it safe to tap it? ({i})", **kw
    )


# --- parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        (GOOD, (0.8, 0.6, 0.9, True)),
        ("Sure! Here is my grading:\n```json\n" + GOOD + "\n```\nLet me know if you need more.", (0.8, 0.6, 0.9, True)),
        (
            '{"adherence": 8, "consistency": 6, "quality": 10, "safety": "PASS"} That is my verdict.',
            (0.8, 0.6, 1.0, True),
        ),
        ('{"adherence": 80, "consistency": 55, "quality": 90, "safety": "Failed"}', (0.8, 0.55, 0.9, False)),
        ("{'adherence': 0.5, 'consistency': 0.4, 'quality': 0.3, 'safety': 'unsafe',}", (0.5, 0.4, 0.3, False)),
        (
            '{"scores": {"persona_adherence": "7/10", "consistency": "40%", "quality": 0.25}, "safety": true}',
            (0.7, 0.4, 0.25, True),
        ),
        (
            '{"adherence": {"score": 0.3}, "Consistency Score": "0.2 (drifts)", "quality": 0.1, "is_safe": "yes"}',
            (0.3, 0.2, 0.1, True),
        ),
        (
            "Adherence: 0.6\nConsistency: 0.5\n**Quality**: 0.4\nSafety: FAIL\nReasoning: mentions being an AI.",
            (0.6, 0.5, 0.4, False),
        ),
        ('{"adherence": 1, "consistency": 0, "quality": 1, "safety": "not safe"}', (1.0, 0.0, 1.0, False)),
        ('{"adherence": 1, "consistency": 7, "quality": 9, "safety": 1}', (0.1, 0.7, 0.9, True)),  # integers -> 0-10
    ],
)
def test_parse_verdict_reads_many_reply_shapes(text, expected):
    v = parse_verdict(text)
    assert (v.adherence, v.consistency, v.quality, v.safety_pass) == pytest.approx(expected)


def test_parse_verdict_keeps_reasoning():
    assert parse_verdict(GOOD).reasoning == "sounds like her"
    assert parse_verdict("Adherence: 1\nConsistency: 1\nQuality: 1\nSafety: pass\nReasoning: fine").reasoning == "fine"


@pytest.mark.parametrize(
    "text, error",
    [
        ("", "empty reply"),
        ("   \n", "empty reply"),
        ("I think the message is quite good overall.", "no JSON object"),
        ('{"score": 0.7, "reasoning": "ok"}', "none of adherence"),
        ('{"adherence": 0.9, "consistency": 0.8, "quality": 0.7}', "missing field(s): safety"),
        ('{"adherence": 0.9, "safety": "pass"}', "missing field(s): consistency, quality"),
        ('{"adherence": 0.9, "consistency": null, "quality": 0.7, "safety": "pass"}', "missing field(s): consistency"),
        (
            '{"adherence": 0.9, "consistency": 0.8, "quality": 0.7, "safety": "maybe"}',
            "safety='maybe' is not pass/fail",
        ),
        ('{"adherence": 0.9, "consistency": 8, "quality": 0.7, "safety": "pass"}', "mix scales"),
        ('{"adherence": 150, "consistency": 80, "quality": 70, "safety": "pass"}', "above 100"),
        ('{"adherence": -0.2, "consistency": 0.8, "quality": 0.7, "safety": "pass"}', "negative"),
        (
            '{"adherence": "high", "consistency": 0.8, "quality": 0.7, "safety": "pass"}',
            "adherence='high' is not a number",
        ),
        ('{"adherence": true, "consistency": 0.8, "quality": 0.7, "safety": "pass"}', "boolean"),
        ('{"adherence": "12/10", "consistency": 0.8, "quality": 0.7, "safety": "pass"}', "out of range"),
        ('{"adherence": NaN, "consistency": 0.8, "quality": 0.7, "safety": "pass"}', "not a finite number"),
        ('{"adherence": 0.9, "consistency": 0.8, "quality": 0.7, "safety": "pass", "reasoning": "the mess', "cut off"),
        ('```json\n{"adherence": 0.9, "consistency": 0.', "cut off"),  # never read "0." as a score
    ],
)
def test_parse_verdict_rejects_malformed_replies_and_says_why(text, error):
    with pytest.raises(VerdictError) as e:
        parse_verdict(text)
    assert error in str(e.value)


# --- retries and failed records ------------------------------------------------------------


class ScriptedBackend:
    """Replies from a script ``(call number, chat) -> text``; records every batch it is given."""

    name = "scripted"

    def __init__(self, script):
        self.script, self.calls = script, []

    def complete(self, chats, params):
        self.calls.append(chats)
        return [self.script(len(self.calls), chat) for chat in chats]

    def next_token_logprobs(self, chats, top_k=20):
        raise NotImplementedError


def _candidate(chat) -> str:
    return chat[-1]["content"].split("# Candidate next message from the persona\n")[1].split("\n")[0]


def test_judge_re_asks_only_the_failed_items_in_one_batch_then_records_failures(specs):
    def script(call, chat):
        cand = _candidate(chat)
        if "(0)" in cand:
            return GOOD
        if "(1)" in cand:  # junk first, then valid JSON once told what was wrong
            return "The persona is well captured!" if call == 1 else "```json\n" + GOOD + "\n```"
        return '{"adherence": 0.5}'  # (2) never complete

    backend = ScriptedBackend(script)
    judge = persona_judge(backend, specs, max_retries=2)
    items = [item(0, method="sft", turn_index=3), item(1), item(2)]
    scores = judge(items)

    assert [len(c) for c in backend.calls] == [3, 2, 1]  # one batch per attempt, failed items only
    assert [s.item_id for s in scores] == ["it0", "it1", "it2"]
    assert [s.ok for s in scores] == [True, True, False]
    assert [s.attempts for s in scores] == [1, 2, 3]
    assert scores[0].adherence == 0.8 and scores[0].safety_pass is True and scores[0].error is None
    assert scores[0].method == "sft" and scores[0].turn_index == 3 and scores[0].judge == "persona_judge"
    failed = scores[2]
    assert failed.error == "missing field(s): consistency, quality, safety"
    assert failed.adherence is None and failed.safety_pass is None and failed.raw == '{"adherence": 0.5}'
    # the re-ask tells the judge what was wrong and keeps the chat's roles as they were
    reask = backend.calls[1][0]
    assert "no JSON object in reply" in reask[-1]["content"] and [m["role"] for m in reask] == ["system", "user"]
    assert "could not be used" not in backend.calls[0][0][-1]["content"]


def test_backend_errors_become_failed_records_after_retries(specs):
    class Down(ScriptedBackend):
        def complete(self, chats, params):
            self.calls.append(chats)
            raise BackendError("connection refused")

    backend = Down(None)
    scores = persona_judge(backend, specs, max_retries=1)([item(0), item(1)])
    assert len(backend.calls) == 2
    assert all(not s.ok and s.attempts == 2 and s.error == "backend error: connection refused" for s in scores)
    assert "could not be used" not in backend.calls[1][0][-1]["content"]  # no parse note for a transport error


def test_unknown_persona_is_a_clear_error_before_any_call(specs):
    backend = ScriptedBackend(lambda call, chat: GOOD)
    with pytest.raises(ValueError, match="item 'it0': no spec for persona 'ghost'"):
        persona_judge(backend, specs)([item(0, persona="ghost")])
    assert backend.calls == []


def test_every_item_gets_a_score_from_a_real_model(tiny_backend, specs):
    items = [item(i, persona=p) for i, p in enumerate(["anxious", "skeptic", "playful", "anxious"])]
    judge = persona_judge(tiny_backend, specs, params=SamplingParams(max_new_tokens=8, temperature=0), max_retries=1)
    scores = judge(items)
    assert [(s.persona_id, s.item_id) for s in scores] == [(i.persona_id, i.id) for i in items]
    for s in scores:
        assert isinstance(s, JudgeScore) and s.judge == "persona_judge"
        if s.ok:
            assert s.error is None and all(0 <= getattr(s, m) <= 1 for m in ("adherence", "consistency", "quality"))
        else:  # a random model writes junk: it was re-asked once, then recorded with the reason
            assert s.attempts == 2 and s.error and s.adherence is None


def test_reward_judge_reuses_the_logprob_reward_on_a_0_1_scale(tiny_backend, specs):
    scores = reward_judge(tiny_backend, specs)([item(0), item(1, persona="skeptic")])
    assert [s.item_id for s in scores] == ["it0", "it1"]
    for s in scores:
        assert s.consistency is None and s.quality is None
        assert (s.ok and 0 <= s.adherence <= 1) or (not s.ok and s.error)


# --- prompts -------------------------------------------------------------------------------


def test_persona_judge_prompt_carries_full_spec_history_and_candidate(specs):
    spec = specs["anxious"]
    chat = persona_judge_chat(item(7), spec)
    text = chat[-1]["content"]
    for part in (
        spec.description[:40],
        spec.constraints[0],
        spec.stop_rules[0],
        spec.edge_case_boundaries[0],
        "assistant: Which app shows the alert?",
        "Sorry, is it safe to tap it? (7)",
        '"safety"',
    ):
        assert part in text
    assert 'marked "user:"' in text
    empty = persona_judge_chat(EvalItem(id="x", persona_id="anxious", candidate="Hi"), spec)[-1]["content"]
    assert "first message" in empty


def test_persona_aware_prompt_holds_profile_and_real_samples(specs):
    spec = specs["skeptic"]
    real = [
        "Source?",
        "Who funded that study, exactly?",
        "Hmm. And what does the control group look like here?",
        "I have read the abstract and it does not say what you claim it says, so which page are you citing?",
        "ok",
        "Prove it.",
        "That's a correlation. Where's the causal evidence, and who replicated it?",
    ]
    profile = persona_profile(spec, real, k=3, seed=1)
    assert profile.profile.startswith(spec.name) and spec.behavioral_traits[0] in profile.profile
    assert len(profile.samples) == 3 and set(profile.samples) <= set(real)
    text = persona_aware_chat(item(0, persona="skeptic"), profile)[-1]["content"]
    assert spec.description[:40] in text
    for s in profile.samples:
        assert f'"{s}"' in text
    assert spec.constraints[0] not in text  # the persona-aware judge uses the profile, not the rubric
    # without real lines the spec's example lines are the samples
    assert set(persona_profile(spec, k=3).samples) <= set(spec.example_lines)


def test_sample_selection_is_deterministic_diverse_and_order_free():
    lines = [" ".join(["w"] * n) + f" {n}" for n in range(1, 41)] + ["w 1"]  # one duplicate
    a = select_samples(lines, k=4, seed=3)
    assert a == select_samples(list(reversed(lines)), k=4, seed=3)
    lengths = [len(s.split()) for s in a]
    assert len(set(a)) == 4 and lengths == sorted(lengths)
    assert lengths[0] <= 11 and lengths[-1] >= 31  # one per length band: short ones and long ones
    assert select_samples(["a", "b", "A "], k=5) == ["a", "b"]  # de-duplicated, fewer than k kept


def test_persona_lines_and_items_take_the_persona_side_only():
    conv = Conversation(
        id="c1",
        persona_id="anxious",
        topic="phones",
        turns=[
            {"role": "user", "content": "Is it safe?"},
            {"role": "assistant", "content": "Yes."},
            {"role": "user", "content": "Thank you!"},
            {"role": "assistant", "content": "Bye."},
        ],
    )
    assert persona_lines([conv, conv.model_dump()], "anxious") == ["Is it safe?", "Thank you!"] * 2
    assert persona_lines([conv], "skeptic") == []
    items = items_from_conversation(conv, method="sft")
    assert [(i.turn_index, i.candidate, len(i.history)) for i in items] == [(0, "Is it safe?", 0), (2, "Thank you!", 2)]
    assert items[1].id == "c1@2" and items[1].method == "sft"


def test_persona_aware_judge_runs_with_profiles(specs):
    seen = []
    backend = ScriptedBackend(lambda call, chat: seen.append(chat) or GOOD)
    profiles = {"anxious": persona_profile(specs["anxious"], k=2)}
    scores = persona_aware_judge(backend, profiles)([item(0)])
    assert scores[0].ok and scores[0].judge == "persona_aware_judge"
    assert "Messages this person really wrote" in seen[0][-1]["content"]


# --- several judges ------------------------------------------------------------------------


def _fixed_judge(values, fail=()):
    def run(items):
        return [
            JudgeScore(
                persona_id=it.persona_id,
                item_id=it.id,
                judge="whatever",
                ok=i not in fail,
                adherence=None if i in fail else values[i],
                consistency=None if i in fail else 0.5,
                quality=None if i in fail else values[i],
                safety_pass=None if i in fail else values[i] > 0.2,
                error="junk" if i in fail else None,
            )
            for i, it in enumerate(items)
        ]

    return run


def test_judge_agreement_on_known_vectors():
    a = [0.1, 0.2, 0.4, 0.6, 0.8, 0.9]
    b = [0.15, 0.5, 0.45, 0.65, 0.95, 0.1]  # item 5 is failed for judge b
    items = [item(i) for i in range(6)]
    scores = run_judges({"big": _fixed_judge(a), "small": _fixed_judge(b, fail={5})}, items)
    assert {s.judge for s in scores["big"]} == {"big"} and {s.judge for s in scores["small"]} == {"small"}
    rows = {r["metric"]: r for r in judge_agreement(scores, tolerance=0.1)}
    adh = rows["adherence"]
    assert adh["judge_a"] == "big" and adh["judge_b"] == "small" and adh["n"] == 5
    assert adh["spearman"] == pytest.approx(sps.spearmanr(a[:5], b[:5])[0]) == pytest.approx(0.9)
    assert adh["pearson"] == pytest.approx(np.corrcoef(a[:5], b[:5])[0, 1])
    assert adh["agreement_rate"] == pytest.approx(3 / 5)  # |diff| 0.05, 0.3, 0.05, 0.05, 0.15
    assert math.isnan(rows["consistency"]["spearman"]) and rows["consistency"]["agreement_rate"] == 1.0  # constant
    assert rows["safety_pass"]["agreement_rate"] == pytest.approx(4 / 5)  # 0.2 vs 0.5 disagree at the 0.2 cut


def test_run_judges_refuses_a_judge_that_drops_items():
    with pytest.raises(RuntimeError, match="returned 1 scores for 2 items"):
        run_judges({"lossy": lambda items: _fixed_judge([0.5])(items[:1])}, [item(0), item(1)])


# --- long-dialogue drift -------------------------------------------------------------------


def test_drift_slope_is_negative_for_decaying_adherence_and_flat_otherwise():
    rng = np.random.default_rng(0)
    turns = np.repeat(np.arange(0, 20, 2), 6)
    decaying = 0.95 - 0.03 * turns / 2 + rng.normal(0, 0.03, turns.size)
    points = [(int(t), float(s)) for t, s in zip(turns, decaying)] + [(4, None)]
    rep = consistency_drift(points)
    fit = sps.linregress(turns, decaying)
    assert rep.slope == pytest.approx(fit.slope) and rep.stderr == pytest.approx(fit.stderr)
    assert rep.slope < 0 and rep.drifting
    assert rep.n == turns.size and rep.n_missing == 1 and rep.per_turn_n[0] == 6
    assert rep.per_turn_mean[0] > rep.per_turn_mean[18]
    assert rep.per_turn_mean[2] == pytest.approx(decaying[6:12].mean())

    flat = consistency_drift([(int(t), 0.8 + float(e)) for t, e in zip(turns, rng.normal(0, 0.03, turns.size))])
    assert not flat.drifting and abs(flat.slope) < 3 * flat.stderr

    rising = consistency_drift([(t, 0.1 * t) for t in range(5)])
    assert rising.slope == pytest.approx(0.1) and not rising.drifting
    assert consistency_drift([(3, 0.5)]).slope is None


def test_drift_points_come_from_judge_scores():
    scores = [
        JudgeScore(
            persona_id="a", item_id=f"c@{t}", judge="j", ok=t != 4, adherence=None if t == 4 else 0.5, turn_index=t
        )
        for t in (0, 2, 4)
    ]
    scores.append(JudgeScore(persona_id="a", item_id="x", judge="j", ok=True, adherence=0.1))  # no turn index
    assert drift_points(scores) == [(0, 0.5), (2, 0.5), (4, None)]
    assert json.loads(consistency_drift(drift_points(scores)).model_dump_json())["n_missing"] == 1


def test_json_verdict_judge_follows_the_judge_protocol(specs):
    """The seed JSON judge behind ``judging.Judge``: adherence as the 0–1 value, the other verdict fields
    as details, an unreadable reply as an explicit failure with its reason (never a default)."""
    from persona_pipeline.judging import Judge, JudgeItem

    backend = ScriptedBackend(lambda call, chat: GOOD if "(0)" in _candidate(chat) else "no idea")
    judge = persona_judge(backend, specs, max_retries=0)
    assert isinstance(judge, Judge) and judge.signal.startswith("llm_json:")
    history = item(0).history
    good, bad = judge.score(
        [
            JudgeItem("", history, item(0).candidate, "anxious"),
            JudgeItem("", history, item(1).candidate, "anxious"),
        ]
    )
    assert good.value == 0.8 and good.reasoning == "sounds like her" and good.details["consistency"] == 0.6
    assert bad.failed and bad.error
