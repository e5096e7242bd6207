"""Behavioural interference: steer along A, score with every trait's judge, change vs coef 0."""

import pytest

from persona_pipeline import behavioural_interference as bi


def _sweep_rows():
    """``kind`` swept at layer 5, coefs 0 / 0.5 / 1.0, questions 0 and 1: its own score rises 40 per unit of
    coef, ``rude`` falls 20 per unit; ``rude``'s sweep has no coef-0 row (no baseline); a prompt-only row."""
    rows = []
    for coef in (0.0, 0.5, 1.0):
        for q in (0, 1):
            scores = {"kind": 10 + 40 * coef + q, "rude": 50 - 20 * coef + 5 * q}
            rows.append({"trait": "kind", "condition": "steer", "layer": 5, "rel_coef": coef, "question_idx": q,
                         "scores": scores})  # fmt: skip
    rows.append({"trait": "rude", "condition": "steer", "layer": 5, "rel_coef": 0.5, "question_idx": 0,
                 "scores": {"kind": 1.0, "rude": 2.0}})  # fmt: skip
    rows.append({"trait": "kind", "condition": "prompt", "layer": None, "rel_coef": None, "question_idx": 0,
                 "scores": {"kind": 99.0, "rude": 99.0}})  # fmt: skip
    return rows


def test_matrix_is_the_mean_paired_change_vs_coef_zero():
    out = bi.interference(_sweep_rows(), ["kind", "rude"])
    assert out["traits"] == ["kind", "rude"]
    assert out["matrix"] == [[30.0, -15.0], [None, None]]  # mean over coefs 0.5 and 1.0; no baseline for rude
    cells = {(c["steered"], c["judged"]): c for c in out["cells"]}
    assert cells[("kind", "kind")]["n"] == 4 and cells[("rude", "kind")]["n"] == 0
    assert cells[("kind", "kind")]["ci_low"] <= 30.0 <= cells[("kind", "kind")]["ci_high"]
    by_coef = {(r["steered"], r["judged"], r["rel_coef"]): r["mean_change"] for r in out["by_coef"]}
    assert by_coef == {
        ("kind", "kind", 0.5): 20.0,
        ("kind", "kind", 1.0): 40.0,
        ("kind", "rude", 0.5): -10.0,
        ("kind", "rude", 1.0): -20.0,
    }
    assert bi.off_diagonal_share(out) == pytest.approx(0.5)


def test_a_failed_score_drops_only_its_pair():
    rows = _sweep_rows()
    rows[2]["scores"]["rude"] = None  # coef 0.5, question 0
    cells = {(c["steered"], c["judged"]): c for c in bi.interference(rows, ["kind", "rude"])["cells"]}
    assert cells[("kind", "rude")]["n"] == 3 and cells[("kind", "kind")]["n"] == 4
    assert cells[("kind", "rude")]["mean_change"] == pytest.approx((-10 - 20 - 20) / 3, abs=1e-3)


def test_every_trait_is_scored_with_the_judge_the_sweep_uses(tiny_model_dir, tiny_backend, data_dir):
    """The diagonal is the sweep's own trait score: the same filter judge ``score_answers`` uses."""
    from persona_pipeline.defs.resources import ModelResource
    from persona_pipeline.loaders import load_traits
    from persona_pipeline.transcripts import score_answers

    traits = {t.trait: t for t in load_traits(data_dir / "traits") if t.trait in ("humorous", "formal")}
    judge = ModelResource(role="judge", model=str(tiny_model_dir))
    answers = ["Why did the chicken cross the road? To get to the punchline!", "Dear Sir, I remain at your service."]
    rows = [{"question": "Tell me something.", "response": a} for a in answers]
    assert bi.score_by_every_trait(rows, traits, judge, "auto") == "embedding"
    for name, trait in traits.items():
        own = [dict(r) for r in rows]
        score_answers(own, trait, judge, "auto", tiny_backend)
        assert [r["scores"][name] for r in rows] == [r["trait_score"] for r in own]
    assert all(0 <= v <= 100 for r in rows for v in r["scores"].values())
    assert rows[0]["scores"]["humorous"] > rows[1]["scores"]["humorous"]  # the joke reads funnier


def test_asset_draws_a_matrix_with_an_empty_row(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    """The asset on real trait judges: a trait whose sweep has no coef-0 answers gets an empty (None) row,
    drawn as blank cells, and the diagonal follows the answers (a joke under the humorous push)."""
    import dagster as dg

    from persona_pipeline.defs.assets.interference import BehaviourConfig, behavioural_interference
    from persona_pipeline.defs.resources import ModelResource
    from persona_pipeline.loaders import load_traits

    monkeypatch.setenv("PERSONA_PIPELINE_HOME", str(tmp_path))
    specs = [t.model_dump(mode="json") for t in load_traits(data_dir / "traits")]
    plain, joke = "The meeting is at noon in room four.", "Why did the scarecrow win an award? He was outstanding!"
    ask = lambda trait, coef, q, text: {"trait": trait, "condition": "steer", "layer": 3, "rel_coef": coef,
                                        "question_idx": q, "question": "Tell me about your day.", "response": text}  # fmt: skip
    sweep = [ask("humorous", 0.0, q, plain) for q in (0, 1)] + [ask("humorous", 0.3, q, joke) for q in (0, 1)]
    sweep += [ask("formal", 0.3, 0, plain)]  # no unsteered answer: no baseline
    out = behavioural_interference(
        context=dg.build_asset_context(),
        config=BehaviourConfig(),
        steering_sweep=sweep,
        trait_specs=specs,
        judge=ModelResource(role="judge", model=str(tiny_model_dir)),
    )
    assert out["traits"] == ["formal", "humorous"] and out["trait_judge"] == "embedding"
    assert out["matrix"][0] == [None, None] and out["matrix"][1][1] > 0
    assert (tmp_path / "plots" / "trait_behaviour.png").stat().st_size > 1000
    assert out["plots"] == {"trait_behaviour": str(tmp_path / "plots" / "trait_behaviour.png")}
