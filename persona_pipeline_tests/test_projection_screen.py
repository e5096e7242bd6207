"""Projection as a predictor of the judged trait score, and the projection-difference screen of SFT data."""

import math

import numpy as np
import pytest
import torch

from persona_pipeline import projection_screen as ps
from persona_pipeline.activations import extract
from persona_pipeline.backends import SamplingParams
from persona_pipeline.control_vector import ControlVector


def test_pearson_ci_matches_numpy_and_brackets_r():
    rng = np.random.default_rng(1)
    x = rng.normal(size=40)
    y = 2 * x + rng.normal(scale=1.0, size=40)
    out = ps.pearson_ci(x.tolist(), y.tolist())
    assert out["n"] == 40 and out["note"] == ""
    assert out["r"] == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-4)
    assert out["ci_low"] < out["r"] < out["ci_high"] <= 1.0
    assert ps.pearson_ci([1, 2, 3, None], [3, 2, 1, 5], min_n=3)["r"] == pytest.approx(-1.0)  # the None pair dropped


def test_too_few_or_constant_pairs_claim_no_r():
    few = ps.pearson_ci(list(range(7)), list(range(7)))
    assert few["r"] is None and few["n"] == 7 and "no r claimed" in few["note"]
    flat = ps.pearson_ci(list(range(10)), [5.0] * 10)
    assert flat["r"] is None and "constant" in flat["note"]


def _trait_fixture(n_questions=3, samples=2):
    """A trait whose answers sit at (score / 10) along e0 in response_avg and at −score / 10 in the last
    prompt token at layer 0; layer 1 holds noise. Captured layers [4, 7]; the vector is e0 at both."""
    gen = torch.Generator().manual_seed(0)
    index, scores = [], []
    for q in range(n_questions):
        for s in range(samples):
            for pol, base in (("pos", 70.0), ("neg", 20.0)):
                score = base + 7 * q + 3 * s
                index.append(
                    {
                        "source": "trait",
                        "name": "kind",
                        "polarity": pol,
                        "prompt_idx": 0,
                        "question_idx": q,
                        "sample_idx": s,
                        "score": score,
                    }
                )
                scores.append(score)
    index.append({"source": "role", "name": "pirate", "polarity": "", "prompt_idx": 0, "question_idx": 0,
                  "sample_idx": 0, "score": 2.0})  # fmt: skip
    n, hidden = len(index), 6
    tensors = {v: torch.randn(n, 2, hidden, generator=gen) for v in ("response_avg", "prompt_avg", "prompt_last")}
    for i, score in enumerate(scores):
        tensors["response_avg"][i, 0] = torch.tensor([score / 10, 0, 0, 0, 0, 0])
        tensors["prompt_last"][i, 0] = torch.tensor([-score / 10, 0, 0, 0, 0, 0])
    e0 = torch.zeros(2, hidden)
    e0[:, 0] = 3.0  # not unit: projections must normalise it
    return tensors, index, scores, ControlVector(e0, [4, 7], [1.0, 1.0])


def test_projection_predicts_score_exactly_when_it_is_the_score():
    tensors, index, scores, cv = _trait_fixture()
    tp = ps.trait_projections(tensors, index, [4, 7], "kind", cv)
    assert tp["scores"] == scores  # the role rollout is not a trait answer
    rows = {(r["view"], r["layer"]): r for r in ps.correlations(tp)}
    assert len(rows) == 3 * 2
    assert rows[("response_avg", 4)]["r"] == pytest.approx(1.0) and rows[("response_avg", 4)]["n"] == 12
    assert rows[("prompt_last", 4)]["r"] == pytest.approx(-1.0)
    # the held-out vector (mean pos − mean neg over the other questions) is also along e0 at layer 4
    assert rows[("response_avg", 4)]["r_heldout"] == pytest.approx(1.0)
    assert abs(rows[("response_avg", 7)]["r"]) < 0.9  # noise layer: no perfect relation
    table = ps.response_table(tp, 4)
    assert [r["score"] for r in table] == scores
    assert [r["proj_response_avg"] for r in table] == pytest.approx([s / 10 for s in scores], abs=1e-4)
    line = ps.headline(ps.correlations(tp), "kind", 4)
    assert line["r_response_avg"].startswith("+1.00") and line["r_prompt_last"].startswith("-1.00")


def test_one_question_gives_no_heldout_vector_and_few_answers_no_r():
    tensors, index, _, cv = _trait_fixture(n_questions=1, samples=2)  # 4 answers
    tp = ps.trait_projections(tensors, index, [4, 7], "kind", cv)
    assert torch.isnan(tp["heldout"]["response_avg"]).all()
    row = ps.correlations(tp)[0]
    assert row["r"] is None and row["r_heldout"] is None and row["n"] == 4 and "no r claimed" in row["note"]
    assert ps.response_table(tp, 7)[0]["heldout_response_avg"] is None


def _vector(hidden=6):
    d = torch.zeros(2, hidden)
    d[:, 1] = 2.0  # ‖v‖ = 2: the trait's pos−neg gap along v̂
    return ControlVector(d, [0, 1], [5.0, 5.0])


def test_projection_difference_is_in_units_of_the_pos_neg_gap_and_flags():
    cv = _vector()
    base = torch.randn(3, 6)
    shift = torch.tensor([1.6, -0.6, 0.2])  # 0.8, −0.3, 0.1 of the gap (‖v‖ = 2)
    data = base + shift[:, None] * torch.nn.functional.one_hot(torch.tensor(1), 6).float()
    diffs = ps.projection_differences(data, base, {"kind": cv}, 1)
    assert diffs["kind"].tolist() == pytest.approx([0.8, -0.3, 0.1], abs=1e-5)
    pairs = [
        {"id": f"p{i}", "persona_id": pid, "prompt": [{"role": "user", "content": "q"}],
         "completion": [{"role": "assistant", "content": f"a{i}"}]}
        for i, pid in enumerate(["ann", "ann", "bob"])
    ]  # fmt: skip
    rows = ps.screen_rows(pairs, ["b0", "b1", "b2"], diffs, threshold=0.5, group_by="persona_id")
    assert [r["flagged_traits"] for r in rows] == ["kind", "", ""]
    assert rows[0]["response"] == "a0" and rows[0]["base_response"] == "b0"
    sets = {d["dataset"]: d for d in ps.dataset_flags(rows, ["kind"], threshold=0.2, min_n=2)}
    assert sets["ann"]["mean_diff"] == pytest.approx(0.25, abs=1e-4) and sets["ann"]["flagged"]
    assert sets["ann"]["flagged_samples"] == 1 and sets["ann"]["n"] == 2
    assert sets["bob"]["mean_diff"] == pytest.approx(0.1, abs=1e-4) and not sets["bob"]["flagged"]
    assert sets["ALL"]["n"] == 3 and sets["ALL"]["mean_diff"] == pytest.approx(0.2, abs=1e-4)
    shifted = [{**r, "diff_kind": 0.9} for r in rows]  # bob is over the threshold but alone: not flagged
    sets = {d["dataset"]: d for d in ps.dataset_flags(shifted, ["kind"], threshold=0.2, min_n=2)}
    assert sets["ann"]["flagged"] and not sets["bob"]["flagged"] and "n=1 < 2" in sets["bob"]["note"]


def test_sample_pairs_is_seeded_and_sized():
    pairs = [{"id": f"{i:03d}"} for i in range(40)]
    a, b = ps.sample_pairs(pairs, 16, seed=3), ps.sample_pairs(list(reversed(pairs)), 16, seed=3)
    assert a == b and len(a) == 16 and [p["id"] for p in a] == sorted(p["id"] for p in a)
    assert ps.sample_pairs(pairs, 16, seed=4) != a
    assert len(ps.sample_pairs(pairs, 0)) == 40 and len(ps.sample_pairs(pairs[:5], 16)) == 5


def test_screen_on_a_tiny_model_is_zero_for_the_base_models_own_answer(tiny_backend):
    """A pair whose answer IS what the base model writes sits at 0; another one at exactly what a direct
    read of both answers' activations gives."""
    torch.manual_seed(0)
    hidden = tiny_backend.model.config.hidden_size
    cv = ControlVector(torch.randn(2, hidden), [0, 1], [1.0, 1.0])
    params = SamplingParams(max_new_tokens=6, temperature=0, seed=0)
    prompts = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}],
               [{"role": "user", "content": "What is rain?"}]]  # fmt: skip
    own = tiny_backend.complete(prompts, params)
    pairs = [
        {"id": "a", "persona_id": "ann", "prompt": prompts[0], "completion": [{"role": "assistant", "content": own[0]}]},
        {"id": "b", "persona_id": "bob", "prompt": prompts[1],
         "completion": [{"role": "assistant", "content": "Water falling from clouds, mostly."}]},
    ]  # fmt: skip
    rows = ps.screen(tiny_backend, pairs, {"kind": cv}, 1, params, threshold=0.5, group_by="persona_id")
    assert [r["base_response"] for r in rows] == own and [r["dataset"] for r in rows] == ["ann", "bob"]
    assert abs(rows[0]["diff_kind"]) < 1e-4 and rows[0]["flagged_traits"] == ""
    from persona_pipeline.activations import Item

    acts = extract(tiny_backend.model, tiny_backend.tok, [Item(prompts[1], pairs[1]["completion"][0]["content"]),
                                                         Item(prompts[1], own[1])], [1])["response_avg"][:, 0]  # fmt: skip
    v = cv.direction(1)
    expected = float((acts[0] - acts[1]) @ v / v.norm() ** 2)
    assert rows[1]["diff_kind"] == pytest.approx(expected, abs=1e-3)
    assert not math.isnan(rows[1]["diff_kind"]) and rows[1]["diff_kind"] != 0
    assert ps.screen_layer({"kind": cv}, None) == 1  # middle of the captured layers [0, 1]
    assert ps.screen(tiny_backend, [], {"kind": cv}, 1, params, 0.5) == [] and ps.dataset_flags([], ["kind"], 0.2) == []


def test_reading_the_prompt_once_equals_reading_each_pair_whole(tiny_backend):
    from persona_pipeline.activations import Item

    chat = [{"role": "system", "content": "You are a pirate with a long backstory."}, {"role": "user", "content": "Hi"}]
    answers = ["Arr, ahoy there matey!", "Hello.", ""]
    shared = ps.shared_prompt_activations(tiny_backend.model, tiny_backend.tok, chat, answers, 0)
    whole = extract(tiny_backend.model, tiny_backend.tok, [Item(chat, a) for a in answers], [0])["response_avg"][:, 0]
    assert shared.shape == whole.shape
    assert torch.allclose(shared, whole, atol=1e-4)


def test_check_warns_on_flagged_samples_or_datasets_and_passes_otherwise():
    import dagster as dg

    from persona_pipeline.defs.assets.projection import sft_pairs_not_trait_shifting

    clean = {
        "threshold": 0.5,
        "samples": [{"id": "a", "flagged_traits": ""}],
        "datasets": [{"dataset": "ALL", "trait": "kind", "mean_diff": 0.1, "flagged": False}],
    }
    assert sft_pairs_not_trait_shifting(clean).passed
    sample = {**clean, "samples": [{"id": "a", "flagged_traits": "kind"}]}
    dataset = {**clean, "datasets": [{"dataset": "hitl", "trait": "kind", "mean_diff": 0.4, "flagged": True}]}
    for flagged in (sample, dataset):
        check = sft_pairs_not_trait_shifting(flagged)
        assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    examples = sft_pairs_not_trait_shifting(dataset).metadata["examples"]
    assert "dataset hitl: kind mean +0.40" in getattr(examples, "value", examples)
