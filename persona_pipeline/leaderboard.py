"""The leaderboard: every method under every evaluator, paired on the same dialogues, with honest n.

Rows come from ``judge_scores``: one per judged persona turn, with an ``eval_<name>``
column per evaluator, the ``dialogue`` (persona × topic, identical across methods),
the ``turn``, and ``circular_evaluators`` (the evaluators that read the signal the
row's method was optimised against). Each method is compared with prompt-only on
the same (dialogue, turn) pairs, resampling dialogues (``stats.paired_by_cluster``);
below ``min_dialogues`` nothing is called significant.

An evaluator marked circular for a method is shown, but flagged: a method always
looks good under the function it was optimised on.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

from . import stats

EVALUATORS = ("voice", "persona_id_ngram", "persona_id_minilm", "reward_logprob", "persona_judge", "persona_aware")
CLASSIFIERS = ("persona_id_ngram", "persona_id_minilm")
EXTRA = ("consistency", "quality", "safety_pass", "persona_break")


def metrics(records: Sequence[dict]) -> list[str]:
    """``adherence`` (the primary judge), every evaluator that scored something, top-1 columns, extras."""
    ran = [n for n in EVALUATORS if any(r.get(f"eval_{n}") is not None for r in records)]
    top1 = [f"top1_{n}" for n in CLASSIFIERS if n in ran]
    return ["adherence", *(f"eval_{n}" for n in ran), *top1, *EXTRA]


def board(records: Sequence[dict], min_dialogues: int = 10, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(overall rows with persona_id "ALL", per-persona rows), each method vs prompt-only."""
    recs = [{**r, "persona_break": float(r["persona_break"])} for r in records]
    ms = metrics(recs)
    kw = {
        "baseline_method": "prompt",
        "pair_key": "turn",
        "cluster_key": "dialogue",
        "min_n": min_dialogues,
        "seed": seed,
    }
    overall = stats.leaderboard_rows([{**r, "persona_id": "ALL"} for r in recs], ("persona_id", "method"), ms, **kw)
    per_persona = stats.leaderboard_rows(recs, ("persona_id", "method"), ms, **kw)
    circular = {r["method"]: r.get("circular_evaluators") or "" for r in recs}
    optimised = {r["method"]: r.get("optimised_on") for r in recs}
    for row in overall + per_persona:
        row["optimised_on"] = optimised.get(row["method"])
        row["circular_evaluators"] = circular.get(row["method"], "")
    return overall, per_persona


def _r(x, nd: int = 3):
    return stats.rounded(x, nd)


def _ci(row: dict, m: str) -> str:
    return f"{_r(row.get(m + '_mean'))} [{_r(row.get(m + '_ci_low'))}, {_r(row.get(m + '_ci_high'))}]"


def by_evaluator(overall: Sequence[dict], classes: int | None = None) -> list[dict]:
    """One row per (evaluator, method): mean [95 % CI over dialogues], Δ vs prompt [CI], Holm p, verdict,
    n dialogues, top-1 accuracy for the persona-id classifiers, and whether the method was optimised
    against this evaluator's signal (then the number is not independent evidence)."""
    out = []
    present = {n for n in EVALUATORS if any(f"eval_{n}_mean" in r and r[f"eval_{n}_n"] for r in overall)}
    for name in (n for n in EVALUATORS if n in present):
        m = f"eval_{name}"
        for row in overall:
            circular = name in [x.strip() for x in (row.get("circular_evaluators") or "").split(",")]
            entry = {
                "evaluator": name,
                "method": row["method"],
                "score (95% CI)": _ci(row, m),
                "Δ vs prompt (95% CI)": None
                if row.get(m + "_diff") is None
                else f"{_r(row[m + '_diff'])} [{_r(row[m + '_diff_ci_low'])}, {_r(row[m + '_diff_ci_high'])}]",
                "p (Holm)": _r(row.get(m + "_p_holm")),
                "verdict": row.get(m + "_verdict") or "baseline",
                "n dialogues": row.get(m + "_n_units"),
                "top-1 acc": _r(row.get(f"top1_{name}_mean")) if name in CLASSIFIERS else None,
                "chance": _r(1 / classes) if name in CLASSIFIERS and classes else None,
                "optimised on this evaluator": "YES (circular)" if circular else "no",
            }
            out.append(entry)
    return out


def method_rank_agreement(overall: Sequence[dict]) -> list[dict]:
    """Do two evaluators order the methods alike? Spearman ρ of the per-method means, per evaluator pair."""
    means = {
        n: {r["method"]: r.get(f"eval_{n}_mean") for r in overall}
        for n in EVALUATORS
        if any(r.get(f"eval_{n}_n") for r in overall)
    }
    rows = []
    for a, b in itertools.combinations(means, 2):
        methods = [m for m in means[a] if _ok(means[a][m]) and _ok(means[b].get(m))]
        agree = stats.agreement([means[a][m] for m in methods], [means[b][m] for m in methods])
        rows.append({"evaluator_a": a, "evaluator_b": b, "methods": agree["n"], "spearman": _r(agree["spearman"])})
    return rows


def _ok(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def brief(row: dict) -> dict:
    """One leaderboard row as people read it: the primary judge's adherence with its CI, Δ vs prompt-only,
    Holm p, verdict, persona breaks, n, and which evaluators are circular for this method."""
    return {
        "persona": row["persona_id"],
        "method": row["method"],
        "adherence (95% CI)": _ci(row, "adherence"),
        "Δ vs prompt": _r(row.get("adherence_diff")),
        "p (Holm)": _r(row.get("adherence_p_holm")),
        "verdict": row.get("adherence_verdict"),
        "breaks": _r(row.get("persona_break_mean")),
        "n turns": row.get("adherence_n"),
        "n dialogues": row.get("adherence_n_units"),
        "circular evaluators": row.get("circular_evaluators") or None,
    }
