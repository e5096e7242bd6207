"""Trait judges: the 0–100 logprob protocol and the offline embedding judge (``persona_pipeline.judging``)."""

import pytest

from persona_pipeline.judging.embedding import EmbeddingJudge
from persona_pipeline.judging.llm import logprob_score, number_tokens, parse_score, score_prompts


def test_logprob_score_is_the_probability_weighted_mean_and_discards_non_numbers():
    import math

    d = {"80": math.log(0.5), "60": math.log(0.3), "hello": math.log(0.2)}
    assert logprob_score(d) == pytest.approx((80 * 0.5 + 60 * 0.3) / 0.8)
    assert logprob_score({"REFUSAL": math.log(0.9), "5": math.log(0.1)}) is None
    assert logprob_score({"150": 0.0}) is None


def test_parse_score_handles_json_fences_and_prose():
    assert parse_score('{"score": 0.5, "reasoning": "ok"}') == 0.5
    assert parse_score('Sure!\n```json\n{"score": -0.25}\n```') == -0.25
    assert parse_score("Score: 0.8 because it fits") == 0.8
    assert parse_score("no number here") is None
    assert parse_score('{"score": 7}') is None  # out of range is not silently clipped


def test_digit_tokenizers_get_a_digit_scale(tiny_backend):
    assert number_tokens(tiny_backend) == 9  # SmolLM2 splits numbers into digits
    scores = score_prompts(tiny_backend, ["Rate this from 0 to 100: 'hello'", "Rate: 'bye'"])
    assert len(scores) == 2 and all(s is None or 0 <= s <= 100 for s in scores)


@pytest.mark.integration
def test_embedding_judge_separates_trait_from_its_absence():
    judge = EmbeddingJudge()
    pos = ["Ha! What a hilarious question, let me joke about it", "That's so funny, here's a pun for you"]
    neg = ["Here is a precise, factual answer.", "The information you requested is as follows."]
    funny, dry = judge.score(pos, neg, ["LOL, that's a joke and a pun, so funny!", "The capital of France is Paris."])
    assert funny > 60 > dry


@pytest.mark.integration
def test_likelihood_coherence_prefers_fluent_text_and_penalises_loops(embedded_backend):
    from persona_pipeline.judging.likelihood import likelihood_coherence

    q = "How was your weekend?"
    fluent, garbled, loop = likelihood_coherence(
        embedded_backend,
        [
            (q, "It was lovely, thanks. We went hiking in the hills and had a picnic by the lake."),
            (q, "fish the of blue quantum seventeen banana under whom yes the the"),
            (q, "sorry sorry sorry sorry sorry sorry sorry sorry sorry sorry sorry sorry"),
        ],
    )
    assert fluent > 50 > garbled
    assert loop < fluent


def test_voice_judge_scores_a_line_higher_for_the_persona_who_talks_like_that():
    """The local persona judge: MiniLM similarity to a persona's own voice vs the others', keyed by spec text."""
    from persona_pipeline.judging import JudgeItem
    from persona_pipeline.judging.reward import persona_scores
    from persona_pipeline.persona_simulator import definitions, voice_judge

    specs = [
        {
            "id": "sailor",
            "name": "Old sailor",
            "description": "A retired sailor who talks about the sea and storms.",
            "behavioral_traits": ["speaks of boats, tides and weather"],
            "example_lines": [
                "Back when I crewed a trawler, a storm like that would have us bailing water all night.",
                "The tide waits for no one, lad.",
                "I trust a barometer more than any forecast on the telly.",
            ],
        },
        {
            "id": "coder",
            "name": "Young programmer",
            "description": "A programmer who relates everything to software.",
            "behavioral_traits": ["talks about code, bugs and deployments"],
            "example_lines": [
                "That sounds like a race condition in the deploy pipeline.",
                "Did you try clearing the cache and rebuilding?",
                "I refactored the whole module last night, tests are green now.",
            ],
        },
    ]
    specs = [
        {
            **s,
            "constraints": ["stays in character"],
            "stop_rules": ["says goodbye"],
            "edge_case_boundaries": ["no medical advice"],
        }
        for s in specs
    ]
    judge, defs = voice_judge(specs), definitions(specs)
    line = "Reminds me of the night our nets tore off the coast in a gale."
    sailor, coder = persona_scores(
        judge, [JudgeItem(defs["sailor"], [], line), JudgeItem(defs["coder"], [], line)], "embedding"
    )
    assert -1 <= coder < sailor <= 1
    assert persona_scores(judge, [JudgeItem("an unknown spec", [], line)], "embedding") == [
        None
    ]  # a failed judgement, not 0
