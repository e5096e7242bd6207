"""CMA-ES searches only the personas evaluation will test, unless told to search all."""

from persona_pipeline import persona_steering as ps
from persona_pipeline.eval_methods import evaluated_personas

IDS = ["anxious", "impatient", "learner", "parent", "playful", "retiree", "skeptic", "student"]


def test_demo_searches_only_evaluated_personas(monkeypatch):
    monkeypatch.setenv("PERSONA_PIPELINE_PROFILE", "demo")  # caps eval_personas at 2
    specs = [{"id": i} for i in IDS]
    chosen = ps.searched_personas(IDS, specs, "evaluated")
    assert chosen == evaluated_personas(IDS) and len(chosen) == 2
    assert ps.searched_personas(IDS, specs, "all") == IDS
    # a run over some partitions searches the evaluated ones among them, in partition order
    part = [k for k in IDS if k not in chosen][:3] + chosen[:1]
    assert ps.searched_personas(part, specs, "evaluated") == chosen[:1]
    skipped = ps.not_searched("parent", chosen)
    assert skipped["searched"] is False and "path" not in skipped and chosen[0] in skipped["reason"]
    assert ps.searched({"parent": skipped, chosen[0]: {"searched": True, "path": "x"}}) == {
        chosen[0]: {"searched": True, "path": "x"}
    }


def test_uncapped_profile_searches_every_persona(monkeypatch):
    monkeypatch.setenv("PERSONA_PIPELINE_PROFILE", "ci")  # eval_personas 0: all
    assert ps.searched_personas(IDS, [{"id": i} for i in IDS], "evaluated") == IDS
