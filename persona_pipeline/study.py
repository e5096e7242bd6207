"""The study table: do the papers' headline shapes appear on this model, with a CI and n for each?

Five shapes, each read from assets the pipeline already made (no new forward pass):

- **steering monotonicity** — Spearman ρ of steering coefficient vs each answer's judged trait score
  (``steering_sweep``), the CI from resampling *questions* (an answer's coefficients share a question);
- **positive vs negative separation** — judged trait score of answers under the trait's positive minus
  its negative instruction, paired on (instruction, question, sample), resampling questions
  (``trait_responses``);
- **projection–score r** — an answer's projection onto the trait vector vs its judged score
  (``projection_predicts_score``), with the vector held out by question (the in-sample r is circular);
- **shift–score r** — fine-tuning shift along the vector vs trait-score change across fine-tuned
  checkpoints (``trait_finetunes``);
- **SFT vs prompt-only** — paired Δ on the same test dialogues under evaluators no method was optimised
  on (``leaderboard``).

Each row gets a verdict: ``appears`` (CI clear of 0 in the papers' direction), ``reversed`` (clear of 0
the other way), ``not shown`` (CI spans 0) or ``too little data`` (n below the row's minimum). A shape
that does not appear on the 135M model is a finding, reported as such — never turned into a pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.stats import spearmanr

from .stats import paired_by_cluster, rounded

MIN_QUESTIONS = 5  # a rank correlation or paired difference resampled over fewer questions claims nothing
MIN_COEFS = 3
MIN_PAIRS = 5
MIN_DIALOGUES = 10  # as the leaderboard
INDEPENDENT = ("eval_persona_id_ngram", "eval_persona_id_minilm")  # never trained against by SFT or prompting


def verdict(estimate, lo, hi, n: int, min_n: int) -> str:
    """What a row shows, in words; ``min_n`` is the smallest n at which the row claims anything."""
    if n < min_n or estimate is None or lo is None or hi is None or any(map(_nan, (estimate, lo, hi))):
        return f"too little data (n={n} < {min_n})" if n < min_n else "undefined (constant values)"
    if lo > 0:
        return "appears"
    if hi < 0:
        return "reversed"
    return "not shown (CI spans 0)"


def _nan(x) -> bool:
    return isinstance(x, float) and math.isnan(x)


def _row(shape: str, trait: str, measure: str, est, lo, hi, n: int, unit: str, min_n: int, note: str = "") -> dict:
    return {
        "shape": shape,
        "trait": trait,
        "measure": measure,
        "estimate": rounded(est, 3),
        "ci_low": rounded(lo, 3),
        "ci_high": rounded(hi, 3),
        "n": n,
        "unit": unit,
        "verdict": verdict(est, lo, hi, n, min_n),
        "note": note,
    }


# --------------------------------------------------------------------------- steering monotonicity


def _spearman(coefs: np.ndarray, scores: np.ndarray) -> float:
    if np.ptp(coefs) == 0 or np.ptp(scores) == 0:
        return math.nan
    return float(spearmanr(coefs, scores).statistic)


def monotonicity(rows: Sequence[dict], layer: int, n_boot: int = 1000, seed: int = 0) -> dict:
    """Spearman ρ of relative coefficient vs per-answer trait score at ``layer`` (steered answers only), with a
    percentile CI from resampling questions whole, and how many questions and coefficients it rests on."""
    by_q: dict[int, list[tuple[float, float]]] = {}
    for r in rows:
        if r.get("condition", "steer") == "steer" and r["layer"] == layer and r.get("trait_score") is not None:
            by_q.setdefault(r["question_idx"], []).append((float(r["rel_coef"]), float(r["trait_score"])))
    groups = [np.asarray(v) for _, v in sorted(by_q.items())]
    coefs = {c for g in groups for c in g[:, 0]}
    out = {"rho": None, "ci_low": None, "ci_high": None, "questions": len(groups), "coefs": len(coefs)}
    if len(groups) < 2 or len(coefs) < 2:
        return out
    every = np.concatenate(groups)
    rng = np.random.default_rng(seed)
    boots = [
        _spearman(*np.concatenate([groups[i] for i in rng.integers(0, len(groups), len(groups))]).T)
        for _ in range(n_boot)
    ]
    lo, hi = np.nanpercentile(boots, [2.5, 97.5]) if not all(map(math.isnan, boots)) else (math.nan, math.nan)
    return out | {"rho": _spearman(*every.T), "ci_low": float(lo), "ci_high": float(hi)}


def steering_rows(sweeps: dict[str, list[dict]]) -> list[dict]:
    """One monotonicity row per trait, at the sweep's middle layer (the layer every profile sweeps)."""
    out = []
    for trait, rows in sorted(sweeps.items()):
        layers = sorted({r["layer"] for r in rows if r.get("condition", "steer") == "steer"})
        if not layers:
            continue
        layer = layers[len(layers) // 2]
        m = monotonicity(rows, layer)
        note = f"L{layer}; {m['questions']} questions × {m['coefs']} coefs"
        if m["coefs"] < MIN_COEFS:
            note += f" (< {MIN_COEFS} coefs: no claim)"
        n = m["questions"] if m["coefs"] >= MIN_COEFS else 0
        out.append(
            _row(
                "steering monotonicity",
                trait,
                "Spearman ρ(coef, score)",
                m["rho"],
                m["ci_low"],
                m["ci_high"],
                n,
                "questions",
                MIN_QUESTIONS,
                note,
            )
        )
    return out


# --------------------------------------------------------------------------- separation


def separation(rows: Sequence[dict], seed: int = 0) -> dict:
    """Positive − negative judged score, paired on (instruction, question, sample), resampling questions."""
    side = lambda pol: {
        (r["question_idx"], (r["instruction_idx"], r["sample_idx"])): float(r["trait_score"])
        for r in rows
        if r["polarity"] == pol and r.get("trait_score") is not None
    }
    pos, neg = side("pos"), side("neg")
    pairs = [k for k in pos if k in neg]
    if not pairs:
        return {"diff": None, "ci_low": None, "ci_high": None, "pairs": 0, "questions": 0, "p": None}
    c = paired_by_cluster(pos, neg, seed=seed)
    return {
        "diff": c.diff,
        "ci_low": c.ci_low,
        "ci_high": c.ci_high,
        "p": c.p_value,
        "pairs": len(pairs),
        "questions": len({q for q, _ in pairs}),
    }


def separation_rows(responses: dict[str, list[dict]]) -> list[dict]:
    out = []
    for trait, rows in sorted(responses.items()):
        s = separation(rows)
        note = f"{s['pairs']} pairs over {s['questions']} questions"
        out.append(
            _row(
                "pos − neg separation",
                trait,
                "Δ judged score (0–100)",
                s["diff"],
                s["ci_low"],
                s["ci_high"],
                s["questions"],
                "questions",
                MIN_QUESTIONS,
                note,
            )
        )
    return out


# --------------------------------------------------------------------------- projection and shift


def projection_rows(projection: dict, view: str = "response_avg") -> list[dict]:
    """r(projection, judged score) at the asset's layer with the vector held out by question; the in-sample r
    (vector built from these very answers) is in the note, not the estimate."""
    layer, out = projection["layer"], []
    for c in projection["correlations"]:
        if c["layer"] != layer or c["view"] != view:
            continue
        n = c.get("heldout_n") or 0
        note = f"L{layer} {view}; in-sample r {c['r']}" if c.get("r") is not None else f"L{layer} {view}"
        out.append(
            _row(
                "projection–score r",
                c["trait"],
                "Pearson r (held-out vector)",
                c.get("r_heldout"),
                c.get("heldout_ci_low"),
                c.get("heldout_ci_high"),
                n,
                "answers",
                MIN_PAIRS,
                note,
            )
        )
    return out


def shift_rows(finetunes: dict, min_checkpoints: int, view: str = "prompt_last") -> list[dict]:
    """r(shift, trait-score change) across fine-tuned checkpoints at the middle layer of the shifts read."""
    corr = [c for c in finetunes.get("correlation", []) if c["view"] == view]
    if not corr:
        return []
    layers = sorted({c["layer"] for c in corr})
    layer, out = layers[len(layers) // 2], []
    for c in (c for c in corr if c["layer"] == layer):
        note = f"L{layer} {view}" + (f"; {c['note']}" if c.get("note") else "")
        out.append(
            _row(
                "shift–score r",
                c["trait"],
                "Pearson r across checkpoints",
                c.get("r"),
                c.get("ci_low"),
                c.get("ci_high"),
                c.get("n", 0),
                "checkpoints",
                min_checkpoints,
                note,
            )
        )
    return out


# --------------------------------------------------------------------------- SFT vs prompt-only


def sft_rows(leaderboard: Sequence[dict], metrics: Sequence[str] = INDEPENDENT) -> list[dict]:
    """SFT − prompt-only on the same test dialogues (the leaderboard's paired, dialogue-resampled Δ)."""
    row = next((r for r in leaderboard if r.get("persona_id") == "ALL" and r.get("method") == "sft"), None)
    if row is None:
        return []
    return [
        _row(
            "SFT vs prompt-only",
            "all personas",
            f"Δ {m}",
            row.get(f"{m}_diff"),
            row.get(f"{m}_diff_ci_low"),
            row.get(f"{m}_diff_ci_high"),
            int(row.get(f"{m}_n_compared") or 0),
            "dialogues",
            MIN_DIALOGUES,
            f"Holm p {rounded(row.get(f'{m}_p_holm'), 3)}",
        )
        for m in metrics
        if f"{m}_diff" in row
    ]


def shape_table(
    sweeps: dict[str, list[dict]],
    responses: dict[str, list[dict]],
    projection: dict,
    finetunes: dict,
    leaderboard: Sequence[dict],
    min_checkpoints: int,
) -> list[dict]:
    """Every shape's rows, in the order the issue lists them."""
    return (
        steering_rows(sweeps)
        + separation_rows(responses)
        + projection_rows(projection)
        + shift_rows(finetunes, min_checkpoints)
        + sft_rows(leaderboard)
    )


def tally(table: Sequence[dict]) -> dict[str, dict[str, int]]:
    """{shape: {verdict word: count}} — the table's one-line answer."""
    out: dict[str, dict[str, int]] = {}
    for r in table:
        word = r["verdict"].split(" (")[0]
        out.setdefault(r["shape"], {}).setdefault(word, 0)
        out[r["shape"]][word] += 1
    return out
