"""The study table's statistics on rows whose truth is known (no model: these read asset values)."""

import numpy as np

from persona_pipeline import study


def _sweep(slope: float, questions: int = 12, coefs=(0.0, 0.05, 0.1, 0.2, 0.3), noise: float = 5.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    rows = [
        {"condition": "steer", "layer": 15, "question_idx": q, "rel_coef": c, "trait": "t",
         "trait_score": 40 + 3 * q + slope * c + rng.normal(0, noise)}
        for q in range(questions)
        for c in coefs
    ]  # fmt: skip
    return rows + [{"condition": "prompt", "layer": 15, "question_idx": 0, "rel_coef": 0.0, "trait_score": 99.0}]


def test_monotonicity_finds_a_real_slope_and_not_a_flat_one():
    up = study.monotonicity(_sweep(200.0), 15)
    assert up["questions"] == 12 and up["coefs"] == 5
    assert up["rho"] > 0.3 and up["ci_low"] > 0  # resampled by question, the slope survives
    flat = study.monotonicity(_sweep(0.0), 15)
    assert flat["ci_low"] < 0 < flat["ci_high"]  # question offsets alone make no ρ


def test_steering_rows_verdicts_and_too_little_data():
    rows = study.steering_rows({"up": _sweep(200.0), "down": _sweep(-200.0), "tiny": _sweep(200.0, questions=3)})
    by = {r["trait"]: r for r in rows}
    assert by["up"]["verdict"] == "appears" and by["down"]["verdict"] == "reversed"
    assert by["tiny"]["verdict"].startswith("too little data") and by["tiny"]["n"] == 3
    two_coefs = study.steering_rows({"t": _sweep(200.0, coefs=(0.0, 0.3))})[0]
    assert two_coefs["n"] == 0 and "no claim" in two_coefs["note"]  # two points rank trivially


def test_separation_is_paired_and_resampled_by_question():
    rng = np.random.default_rng(1)
    rows = []
    for q in range(8):
        for i in range(2):
            base = rng.normal(50, 20)  # the question moves both sides together: pairing removes it
            rows += [
                {"polarity": "pos", "question_idx": q, "instruction_idx": i, "sample_idx": 0, "trait_score": base + 6},
                {"polarity": "neg", "question_idx": q, "instruction_idx": i, "sample_idx": 0, "trait_score": base},
            ]
    s = study.separation(rows)
    assert s["pairs"] == 16 and s["questions"] == 8
    assert abs(s["diff"] - 6) < 1e-9 and s["ci_low"] > 0
    assert study.separation([r for r in rows if r["polarity"] == "pos"])["pairs"] == 0


def test_shape_table_reads_every_asset_and_tallies():
    projection = {
        "layer": 15,
        "correlations": [
            {"trait": "t", "view": "response_avg", "layer": 15, "r": 0.9, "r_heldout": 0.4, "heldout_ci_low": 0.1,
             "heldout_ci_high": 0.7, "heldout_n": 40},
            {"trait": "t", "view": "prompt_last", "layer": 15, "r": 0.1, "r_heldout": 0.0},
        ],
    }  # fmt: skip
    finetunes = {
        "correlation": [
            {"trait": "t", "view": "prompt_last", "layer": L, "r": None, "ci_low": None, "ci_high": None, "n": 5,
             "note": "n=5 checkpoints: too few"}
            for L in (10, 15, 20)
        ]
    }  # fmt: skip
    board = [
        {"persona_id": "ALL", "method": "sft", "eval_persona_id_ngram_diff": 0.05, "eval_persona_id_ngram_diff_ci_low":
         -0.01, "eval_persona_id_ngram_diff_ci_high": 0.1, "eval_persona_id_ngram_n_compared": 16,
         "eval_persona_id_ngram_p_holm": 0.2},
        {"persona_id": "ALL", "method": "prompt"},
    ]  # fmt: skip
    table = study.shape_table({"t": _sweep(200.0)}, {}, projection, finetunes, board, 6)
    by = {r["shape"]: r for r in table}
    assert by["projection–score r"]["estimate"] == 0.4 and by["projection–score r"]["verdict"] == "appears"
    assert "in-sample r 0.9" in by["projection–score r"]["note"]  # the circular r is shown, not claimed
    assert by["shift–score r"]["verdict"].startswith("too little data") and "L15" in by["shift–score r"]["note"]
    assert by["SFT vs prompt-only"]["verdict"] == "not shown (CI spans 0)" and by["SFT vs prompt-only"]["n"] == 16
    assert study.tally(table)["steering monotonicity"] == {"appears": 1}


def test_trait_separation_needs_a_paired_ci_clear_of_zero_once_there_are_enough_questions():
    from persona_pipeline.transcripts import trait_separation

    def rows(questions: int, gap: float, seed: int = 0):
        rng = np.random.default_rng(seed)
        out = []
        for q in range(questions):
            noise = rng.normal(0, 10)  # pos − neg differs by question around ``gap``
            out += [
                {"polarity": "pos", "question_idx": q, "instruction_idx": 0, "sample_idx": 0,
                 "trait_score": 50 + gap + noise, "coherence": 90.0},
                {"polarity": "neg", "question_idx": q, "instruction_idx": 0, "sample_idx": 0,
                 "trait_score": 50.0, "coherence": 90.0},
            ]  # fmt: skip
        return out

    weak = trait_separation(rows(10, 1.0))
    assert weak["pos_trait"] > weak["neg_trait"] and weak["diff_ci"][0] <= 0 and not weak["separates"]
    assert trait_separation(rows(10, 20.0))["separates"]
    few = trait_separation(rows(2, 1.0))  # too few questions for a CI to mean anything: the means decide
    assert few["paired_questions"] == 2 and few["separates"] == (few["pos_trait"] > few["neg_trait"])
