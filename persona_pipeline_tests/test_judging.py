"""The judging package: one protocol, one place choosing judges by purpose, independent evaluators."""

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from persona_pipeline.judging import JudgeItem, Score, choose
from persona_pipeline.judging.base import Judge, scaled, values
from persona_pipeline.judging.persona_id import PersonaIdClassifier

ROOT = Path(__file__).resolve().parent.parent

LINES = {
    "sailor": [
        "The tide waits for no one, lad.",
        "A storm like that had us bailing water all night on the trawler.",
        "I trust a barometer more than any forecast.",
        "Nets tore off the coast in a gale once.",
        "Batten down the hatches, the wind is turning.",
    ],
    "coder": [
        "That sounds like a race condition in the deploy pipeline.",
        "Did you try clearing the cache and rebuilding?",
        "I refactored the module last night, tests are green.",
        "Push the fix and let CI run the unit tests.",
        "The bug was an off-by-one in the loop index.",
    ],
}


def test_score_is_one_scale_with_an_explicit_failure():
    assert Score(0.4).value == 0.4 and not Score(0.4).failed
    with pytest.raises(ValueError, match="needs an error"):
        Score(None)
    with pytest.raises(ValueError, match="outside 0..1"):
        Score(1.5)
    got = scaled([0, 5, None, 10], 0, 10, "no digits")
    assert [s.value for s in got] == [0.0, 0.5, None, 1.0] and got[2].error == "no digits"
    assert values(got, -1, 1) == [-1.0, 0.0, None, 1.0]  # the reward scale; a failure stays None, never 0


def test_no_import_cycle_and_no_judge_kind_decisions_in_asset_modules():
    code = "import sys, persona_pipeline.judges; print(sorted(m for m in sys.modules if m.startswith('persona_pipeline.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert "persona_pipeline.trait_judge" not in out.stdout  # the old judges <-> trait_judge cycle is gone
    assert not (ROOT / "persona_pipeline" / "trait_judge.py").exists()
    for path in (ROOT / "persona_pipeline" / "defs").rglob("*.py"):
        assert not re.search(r"judge\w*\.kind\s*[!=]=", path.read_text()), f"{path.name} decides on judge.kind"


class _Backend:
    name = "fake-endpoint"


def _judge(kind: str):
    return SimpleNamespace(kind=kind, backend=lambda: _Backend(), describe=lambda: f"{kind}:m")


def test_one_place_chooses_judges_by_purpose(data_dir):
    from persona_pipeline.loaders import load_personas

    specs = [s.model_dump() for s in load_personas(data_dir / "personas")]
    local, endpoint = _judge("local"), _judge("openai")
    assert choose.method("reward", local) == "embedding" and choose.method("reward", endpoint) == "logprob"
    assert choose.method("search_fitness", endpoint, "json") == "json"
    with pytest.raises(ValueError, match="judge_method='json'"):
        choose.method("filter", local, "json")
    with pytest.raises(ValueError, match="purpose"):
        choose.method("vibes", local)
    voice = choose.persona_judge("reward", local, specs)
    assert isinstance(voice, Judge) and voice.signal == "minilm_voice"
    llm = choose.persona_judge("search_fitness", endpoint, specs)
    assert isinstance(llm, Judge) and llm.signal == "llm_logprob:fake-endpoint"
    assert choose.optimised_signal("filter", local, specs) == "minilm_exemplar"


def test_circularity_names_the_evaluators_that_share_a_methods_signal():
    signals = {
        "voice": "minilm_voice",
        "persona_id_ngram": "persona_id_classifier:ngram",
        "reward_logprob": "llm_logprob:gpt",
        "persona_judge": "llm_json:gpt",
    }
    got = choose.circular({"rl": "minilm_voice", "cmaes": "llm_logprob:gpt", "sft": None}, signals)
    assert got == {"rl": ["voice"], "cmaes": ["persona_judge", "reward_logprob"], "sft": []}


def test_persona_id_classifier_names_the_writer_without_seeing_generated_lines():
    clf = PersonaIdClassifier(LINES, "ngram")
    assert clf.personas == ["coder", "sailor"] and clf.chance == 0.5 and clf.cv_accuracy is not None
    got = clf.score(
        [
            JudgeItem("", [], "The gale will turn the tide tonight, lad.", "sailor"),
            JudgeItem("", [], "The gale will turn the tide tonight, lad.", "coder"),
            JudgeItem("", [], "Rebuild and rerun the unit tests.", "ghost"),
        ]
    )
    assert got[0].details == {"predicted": "sailor", "top1": True} and got[0].value > 0.5
    assert got[1].details["top1"] is False and got[1].value == pytest.approx(1 - got[0].value, abs=1e-5)
    assert got[2].failed and "ghost" in got[2].error
    with pytest.raises(ValueError, match="too few lines for \\['coder'\\]"):
        PersonaIdClassifier({"sailor": LINES["sailor"], "coder": ["one line"]})


@pytest.mark.integration
def test_one_minilm_per_process_shared_by_judges_and_survey_metrics():
    from persona_pipeline.judging.embedding import EmbeddingJudge, minilm
    from persona_pipeline.survey_metrics import minilm_encoder

    assert EmbeddingJudge().model is minilm() and minilm() is minilm()
    minilm_encoder()
    assert minilm.cache_info().misses == 1  # loaded once, whoever asks
    clf = PersonaIdClassifier(LINES, "minilm")
    (s,) = clf.score([JudgeItem("", [], "My unit tests fail after the deploy.", "coder")])
    assert s.details["top1"] and s.value > 0.5


def test_judge_human_agreement_with_too_few_ratings_is_never_a_pass():
    import dagster as dg

    from persona_pipeline.defs.assets.human import judge_agrees_with_humans

    few = judge_agrees_with_humans({"agreement": {"n": 3}, "min_ratings": 5, "min_agreement": 0.3})
    assert few.passed is False and few.severity == dg.AssetCheckSeverity.WARN
    assert few.metadata["n"].value == 3 and "skipped" in few.metadata["status"].value


@pytest.mark.integration
def test_role_judge_scores_a_response_in_its_own_role_higher():
    from persona_pipeline.contracts import RoleSpec
    from persona_pipeline.judging.roles import score_roles

    roles = {
        "pirate": RoleSpec(
            role="pirate",
            description="a pirate",
            system_prompts=["Arr, you are a pirate captain.", "Sail the seas.", "Find treasure."],
        ),
        "chef": RoleSpec(
            role="chef",
            description="a chef",
            system_prompts=["You are a chef who loves sauces.", "Cook dinner.", "Taste the soup."],
        ),
    }
    line = "Arr, hoist the sails and bring me rum, ye scallywags!"
    rows = [{"role": r, "question": "Who are you?", "response": line} for r in ("pirate", "chef")]
    pirate, chef = score_roles(None, rows, roles, "embedding")
    assert 0 <= chef < pirate <= 3
    with pytest.raises(ValueError, match="unknown role"):
        score_roles(None, [{**rows[0], "role": "ghost"}], roles, "embedding")
