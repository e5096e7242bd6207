"""Behavioural interference between traits: steer along trait A, score the answers with every trait B's
judge, and ask how far B's score moved from the unsteered answers to the same questions.

The cosine heatmap (``trait_interference``) says whether two persona vectors point the same way; this
says whether pushing one *changes the other behaviour*. It reuses the steering sweep's answers (no new
generation): the sweep's coefficient-0 rows are the unsteered baseline, matched to each steered row
on (layer, question), so every cell is a mean of paired differences in 0–100 score points.
"""

from __future__ import annotations

from .judging import JudgeItem
from .judging.base import values
from .stats import bootstrap_ci


def judge_items(rows: list[dict]) -> list[JudgeItem]:
    return [JudgeItem("", [{"role": "user", "content": r["question"]}], r["response"]) for r in rows]


def score_by_every_trait(rows: list[dict], traits: dict, judge, choice: str, backend=None) -> str:
    """Add ``scores`` {trait: 0–100 or None} to each row in place, one judge per trait, chosen as the
    sweep's own trait scores are (``choose.trait_judge``, purpose ``filter``); returns the method.
    ``backend`` (the judge model) is only loaded when the chosen judge is an LLM prompt."""
    from .judging import choose

    items = judge_items(rows)
    by_trait = {
        t: values(choose.trait_judge(judge, spec, choice, backend).score(items), 0, 100) for t, spec in traits.items()
    }
    for k, r in enumerate(rows):
        r["scores"] = {t: v[k] for t, v in by_trait.items()}
    return choose.method("filter", judge, choice)


def steered_rows(rows: list[dict]) -> list[dict]:
    """The sweep's steered answers (baseline prompt-only rows carry no coefficient and are left out)."""
    return [r for r in rows if r.get("condition", "steer") == "steer" and r.get("rel_coef") is not None]


def paired_changes(rows: list[dict], steered: str, judged: str) -> list[dict]:
    """Each coef > 0 answer of the ``steered`` trait's sweep: its ``judged`` score minus the coef-0 answer's
    to the same question at the same layer (pairs where either score failed are left out)."""
    mine = [r for r in rows if r["trait"] == steered]
    base = {(r["layer"], r["question_idx"]): r["scores"].get(judged) for r in mine if r["rel_coef"] == 0}
    out = []
    for r in mine:
        b, s = base.get((r["layer"], r["question_idx"])), r["scores"].get(judged)
        if r["rel_coef"] > 0 and b is not None and s is not None:
            out.append({"layer": r["layer"], "rel_coef": r["rel_coef"], "change": s - b})
    return out


def cell(changes: list[dict], seed: int = 0) -> dict:
    """Mean paired change with its bootstrap 95 % CI and n; None without a pair."""
    if not changes:
        return {"n": 0, "mean_change": None, "ci_low": None, "ci_high": None}
    vals = [c["change"] for c in changes]
    lo, hi = bootstrap_ci(vals, seed=seed)
    return {
        "n": len(vals),
        "mean_change": round(sum(vals) / len(vals), 3),
        "ci_low": round(lo, 3),
        "ci_high": round(hi, 3),
    }


def interference(rows: list[dict], traits: list[str], seed: int = 0) -> dict:
    """``matrix[A][B]``: mean change of B's score when steering along A (all coef > 0 vs coef 0),
    None where A has no coef > 0 answer paired with a coef-0 one; ``cells`` the same with CI and n;
    ``by_coef`` one row per (A, B, layer, coef). Rows and columns are both ``traits``."""
    rows = steered_rows(rows)
    cells, by_coef = [], []
    for a in traits:
        for b in traits:
            changes = paired_changes(rows, a, b)
            cells.append({"steered": a, "judged": b, **cell(changes, seed)})
            for layer, coef in sorted({(c["layer"], c["rel_coef"]) for c in changes}):
                at = [c for c in changes if c["layer"] == layer and c["rel_coef"] == coef]
                by_coef.append({"steered": a, "judged": b, "layer": layer, "rel_coef": coef, **cell(at, seed)})
    matrix = [
        [next(c["mean_change"] for c in cells if c["steered"] == a and c["judged"] == b) for b in traits]
        for a in traits
    ]
    return {"traits": traits, "matrix": matrix, "cells": cells, "by_coef": by_coef}


def off_diagonal_share(result: dict) -> float | None:
    """Mean |off-diagonal change| / mean |diagonal change|: how much steering one trait moves the others,
    relative to how much it moves itself (None without both)."""
    diag, off = [], []
    for i, a in enumerate(result["traits"]):
        for j, b in enumerate(result["traits"]):
            v = result["matrix"][i][j]
            if v is not None:
                (diag if a == b else off).append(abs(v))
    if not diag or not off or sum(diag) == 0:
        return None
    return round((sum(off) / len(off)) / (sum(diag) / len(diag)), 3)
