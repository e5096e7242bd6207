"""Statistics for the leaderboard: bootstrap, permutation tests, Holm, agreement, OLS."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from persona_pipeline import stats


def test_mean_and_std_ignore_missing_values():
    xs = [1.0, None, 3.0, float("nan"), True]
    assert stats.mean(xs) == pytest.approx(5 / 3)
    assert stats.std(xs) == pytest.approx(np.std([1, 3, 1], ddof=1))
    assert math.isnan(stats.mean([])) and math.isnan(stats.std([0.4]))


def test_bootstrap_ci_covers_the_mean_and_is_seeded():
    x = np.random.default_rng(1).normal(0.6, 0.1, 40)
    lo, hi = stats.bootstrap_ci(x, seed=7)
    assert lo < x.mean() < hi
    assert (lo, hi) == stats.bootstrap_ci(list(x), seed=7)
    assert (lo, hi) != stats.bootstrap_ci(x, seed=8)
    se = x.std(ddof=1) / math.sqrt(x.size)
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.25)  # about the normal-theory width
    wide = stats.bootstrap_ci(x, confidence=0.99, seed=7)
    assert wide[0] < lo and wide[1] > hi
    assert stats.bootstrap_ci([0.3]) == (0.3, 0.3)
    assert all(math.isnan(v) for v in stats.bootstrap_ci([None]))


def test_compare_finds_a_clear_difference_and_not_a_null_one():
    rng = np.random.default_rng(0)
    base = rng.normal(0.5, 0.1, 30)
    better = rng.normal(0.7, 0.1, 30)
    same = rng.normal(0.5, 0.1, 30)

    c = stats.compare(better, base, seed=1)
    assert c.diff == pytest.approx(better.mean() - base.mean())
    assert c.p_value < 0.001 and c.ci_low > 0 and c.ci_low < c.diff < c.ci_high
    assert (c.n_method, c.n_baseline, c.paired) == (30, 30, False)
    assert c == stats.compare(better, base, seed=1)  # deterministic

    null = stats.compare(same, base, seed=1)
    assert null.p_value > 0.2 and null.ci_low < 0 < null.ci_high


def test_paired_comparison_uses_exact_sign_flips_on_small_samples():
    base = [0.2, 0.4, 0.5, 0.3, 0.6, 0.1, 0.7, 0.35]
    up = [b + 0.1 + 0.01 * i for i, b in enumerate(base)]
    c = stats.compare(up, base, paired=True)
    assert c.paired and c.n_method == 8
    assert c.p_value == pytest.approx(2 / 2**8)  # all 256 sign patterns enumerated; only ±all-positive as extreme
    assert stats.compare(base, base, paired=True).p_value == 1.0
    # a missing value drops its pair
    assert stats.compare([0.5, None, 0.7], [0.4, 0.3, 0.6], paired=True).n_method == 2
    with pytest.raises(ValueError, match="equal lengths"):
        stats.compare([0.1, 0.2], [0.1], paired=True)
    assert math.isnan(stats.compare([0.5], [0.1, 0.2]).p_value)


def test_holm_on_known_p_values():
    adj = stats.holm([0.01, 0.04, 0.03, 0.005, None])
    assert adj[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert math.isnan(adj[4])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert stats.holm([]) == []


def _records():
    """persona a: sft clearly beats prompt; persona b: sft equals prompt; rl exists only for a."""
    rng = np.random.default_rng(3)
    recs = []
    for persona, shift in (("a", 0.3), ("b", 0.0)):
        for method, delta in (("prompt", 0.0), ("sft", shift)):
            for i in range(25):
                recs.append(
                    {
                        "persona_id": persona,
                        "method": method,
                        "item_id": f"{persona}{i}",
                        "adherence": float(np.clip(0.4 + delta + rng.normal(0, 0.08), 0, 1)),
                        "safety_pass": True,
                    }
                )
    recs.append({"persona_id": "a", "method": "sft", "item_id": "failed", "adherence": None, "safety_pass": None})
    recs.append({"persona_id": "a", "method": "rl", "item_id": "a0", "adherence": 0.9, "safety_pass": True})
    return recs


def test_leaderboard_rows_summarise_and_compare_with_the_baseline():
    rows = stats.leaderboard_rows(_records(), metrics=["adherence", "safety_pass"], n_perm=2000, n_boot=500)
    by = {(r["persona_id"], r["method"]): r for r in rows}
    assert list(by) == [("a", "prompt"), ("a", "rl"), ("a", "sft"), ("b", "prompt"), ("b", "sft")]
    assert len({tuple(r) for r in rows}) == 1  # same columns in every row

    sft_a = by[("a", "sft")]
    assert sft_a["n_records"] == 26 and sft_a["adherence_n"] == 25  # the failed judgement is visible, not scored
    assert sft_a["adherence_ci_low"] < sft_a["adherence_mean"] < sft_a["adherence_ci_high"]
    assert sft_a["adherence_diff"] == pytest.approx(sft_a["adherence_mean"] - by[("a", "prompt")]["adherence_mean"])
    assert sft_a["adherence_diff_ci_low"] > 0 and sft_a["adherence_significant"] is True
    assert sft_a["adherence_p_holm"] >= sft_a["adherence_p"]

    sft_b = by[("b", "sft")]
    assert sft_b["adherence_significant"] is False and sft_b["adherence_p"] > 0.05
    assert sft_b["safety_pass_mean"] == 1.0 and sft_b["safety_pass_p"] == 1.0

    assert by[("a", "prompt")]["adherence_diff"] is None and by[("a", "prompt")]["adherence_significant"] is None
    rl = by[("a", "rl")]  # one record: a mean, but no test
    assert rl["adherence_n"] == 1 and math.isnan(rl["adherence_std"]) and math.isnan(rl["adherence_p"])
    assert rl["adherence_significant"] is None and rl["adherence_verdict"] == "n=1 items < 2: too few to test"

    again = stats.leaderboard_rows(_records(), metrics=["adherence", "safety_pass"], n_perm=2000, n_boot=500)
    assert all(r1.keys() == r2.keys() and all(_same(r1[k], r2[k]) for k in r1) for r1, r2 in zip(rows, again))


def _same(a, b) -> bool:
    return a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


def test_leaderboard_paired_on_item_ids():
    recs = [
        {"persona_id": "a", "method": m, "item_id": f"i{i}", "adherence": 0.3 + 0.02 * i + (0.05 if m == "rl" else 0)}
        for m in ("prompt", "rl")
        for i in range(10)
    ]
    recs.append({"persona_id": "a", "method": "rl", "item_id": "extra", "adherence": 0.0})  # unmatched: not paired
    rows = stats.leaderboard_rows(recs, metrics=["adherence"], pair_key="item_id", n_boot=200)
    rl = next(r for r in rows if r["method"] == "rl")
    assert rl["adherence_diff"] == pytest.approx(0.05)  # the unmatched item does not enter the paired diff
    assert rl["adherence_p"] == pytest.approx(2 / 2**10) and rl["adherence_significant"]
    with pytest.raises(ValueError, match="item_id='i0' occurs twice"):
        stats.leaderboard_rows(recs + [recs[0]], metrics=["adherence"], pair_key="item_id")


def _dialogue_records(n_dialogues: int, effect: float, turns: int = 5) -> list[dict]:
    """Turns share their dialogue's random level (strongly correlated within a dialogue)."""
    rng = np.random.default_rng(3)
    level = rng.normal(0.5, 0.2, n_dialogues)
    return [
        {
            "persona_id": "a",
            "method": m,
            "dialogue": f"d{d}",
            "turn": t,
            "adherence": level[d] + rng.normal(0, 0.01) + (effect if m == "rl" else 0.0) * (1 if d % 2 else -1),
        }
        for m in ("prompt", "rl")
        for d in range(n_dialogues)
        for t in range(turns)
    ]


def test_leaderboard_resamples_dialogues_not_turns_and_refuses_below_min_n():
    """An effect that flips sign between dialogues is noise at the dialogue level, however many turns agree."""
    recs = _dialogue_records(12, 0.1)
    with pytest.raises(ValueError, match="occurs twice"):  # turn numbers repeat across dialogues: not an item id
        stats.leaderboard_rows(recs, metrics=["adherence"], pair_key="turn")
    by_dialogue = stats.leaderboard_rows(
        recs, metrics=["adherence"], pair_key="turn", cluster_key="dialogue", n_boot=200, n_perm=2000, min_n=5
    )
    turn_rl = next(r for r in by_dialogue if r["method"] == "rl")
    assert turn_rl["adherence_n"] == 60 and turn_rl["adherence_n_units"] == 12 and turn_rl["adherence_n_compared"] == 12
    diffs = stats.cluster_means(
        {(r["dialogue"], r["turn"]): r["adherence"] for r in recs if r["method"] == "rl"}
    ).values()
    assert turn_rl["adherence_mean"] == pytest.approx(np.mean(list(diffs)))
    c = stats.paired_by_cluster(
        {(r["dialogue"], r["turn"]): r["adherence"] for r in recs if r["method"] == "rl"},
        {(r["dialogue"], r["turn"]): r["adherence"] for r in recs if r["method"] == "prompt"},
        n_perm=4096,
    )
    assert c.n_method == 12 and "dialogues" in c.test and c.p_value > 0.5  # ±0.1 per dialogue averages out
    few = stats.leaderboard_rows(
        _dialogue_records(3, 0.3), metrics=["adherence"], pair_key="turn", cluster_key="dialogue", min_n=5
    )
    rl = next(r for r in few if r["method"] == "rl")
    assert rl["adherence_significant"] is None and rl["adherence_verdict"] == "n=3 dialogues < 5: too few to test"
    with pytest.raises(ValueError, match="cluster_key needs pair_key"):
        stats.leaderboard_rows(recs, metrics=["adherence"], cluster_key="dialogue")


def test_leaderboard_rejects_bad_records():
    with pytest.raises(ValueError, match="record 0: missing group field"):
        stats.leaderboard_rows([{"persona_id": "a", "adherence": 0.5}])
    with pytest.raises(ValueError, match="record 0: field 'adherence' must be a number"):
        stats.leaderboard_rows([{"persona_id": "a", "method": "prompt", "adherence": "high"}], metrics=["adherence"])


def test_agreement_on_known_vectors():
    a = [0.1, 0.2, 0.3, 0.4, 0.5]
    perfect = stats.agreement(a, [0.15, 0.25, 0.35, 0.45, 0.9], tolerance=0.1)
    assert perfect["spearman"] == pytest.approx(1.0) and perfect["n"] == 5
    assert perfect["agreement_rate"] == pytest.approx(0.8) and perfect["mean_abs_diff"] == pytest.approx(0.12)
    assert perfect["pearson"] == pytest.approx(sps.pearsonr(a, [0.15, 0.25, 0.35, 0.45, 0.9])[0])
    reversed_ = stats.agreement(a, a[::-1])
    assert reversed_["spearman"] == pytest.approx(-1.0) and reversed_["pearson"] == pytest.approx(-1.0)
    short = stats.agreement([0.1, None, 0.3], [0.2, 0.4, None])
    assert short["n"] == 1 and math.isnan(short["spearman"])


def test_judge_human_agreement_rescales_likert_ratings():
    judge = [0.0, 0.3, 0.5, 0.7, 1.0]
    human = [1, 2, 3, 4, 5]
    r = stats.judge_human_agreement(judge, human)
    assert r["spearman"] == pytest.approx(1.0) and r["agreement_rate"] == 1.0 and r["tolerance"] == 0.25
    assert stats.rescale([1, 3, None, 5], 1, 5) == [0.0, 0.5, None, 1.0]
    with pytest.raises(ValueError, match="outside the scale 1..5"):
        stats.judge_human_agreement(judge, [0, 2, 3, 4, 5])


def test_ols_slope_matches_scipy():
    x = [0, 1, 2, 3, 4, 5]
    y = [1.0, 0.9, 0.85, 0.7, 0.72, 0.5]
    fit, ref = stats.ols_slope(x, y), sps.linregress(x, y)
    assert fit["slope"] == pytest.approx(ref.slope) and fit["stderr"] == pytest.approx(ref.stderr)
    assert fit["intercept"] == pytest.approx(ref.intercept) and fit["df"] == 4
    assert math.isnan(stats.ols_slope([2, 2, 2], [0.1, 0.2, 0.3])["slope"])
    two = stats.ols_slope([0, 1], [0.0, 1.0])
    assert two["slope"] == pytest.approx(1.0) and math.isnan(two["stderr"])


def test_leaderboard_under_each_evaluator_marks_what_a_method_was_optimised_on():
    from persona_pipeline import leaderboard as lb

    rng = np.random.default_rng(0)
    recs = [
        {
            "persona_id": p,
            "method": m,
            "dialogue": f"{p}|t",
            "turn": t,
            "adherence": float(rng.uniform()),
            "eval_voice": float(rng.uniform()) + (0.2 if m == "rl" else 0.0),
            "eval_persona_id_ngram": float(rng.uniform()),
            "top1_persona_id_ngram": float(rng.integers(0, 2)),
            "persona_break": False,
            "safety_pass": True,
            "optimised_on": "minilm_voice" if m == "rl" else None,
            "circular_evaluators": "voice" if m == "rl" else "",
        }
        for p in ("a", "b", "c")
        for m in ("prompt", "rl")
        for t in (1, 2, 3)
    ]
    overall, per_persona = lb.board(recs, min_dialogues=5)
    assert {r["persona_id"] for r in per_persona} == {"a", "b", "c"} and {r["method"] for r in overall} == {
        "prompt",
        "rl",
    }
    table = lb.by_evaluator(overall, classes=8)
    assert {r["evaluator"] for r in table} == {"voice", "persona_id_ngram"}  # evaluators that did not run are absent
    rl_voice = next(r for r in table if r["evaluator"] == "voice" and r["method"] == "rl")
    assert rl_voice["optimised on this evaluator"] == "YES (circular)" and rl_voice["n dialogues"] == 3
    assert rl_voice["verdict"] == "n=3 dialogues < 5: too few to test"
    rl_id = next(r for r in table if r["evaluator"] == "persona_id_ngram" and r["method"] == "rl")
    assert rl_id["optimised on this evaluator"] == "no" and rl_id["chance"] == 0.125 and rl_id["top-1 acc"] is not None
    (agree,) = lb.method_rank_agreement(overall)
    assert agree["evaluator_a"] == "voice" and agree["methods"] == 2
