"""Projection onto a persona vector as a *predictor* of the judged trait score and as a *screen* of
training data, the two monitoring uses in the persona-vectors work (shared/seeds/004).

Predictor. For every trait response (answers under the trait's positive and negative instructions,
each judged 0–100 for the trait) the projection of its activations onto the trait's vector is
correlated with its judged score: Pearson r with a percentile-bootstrap 95 % CI over responses, per
view and per captured layer. The paper reports r = 0.75–0.83 for the last prompt token on 7–8B
models. Two caveats are measured rather than assumed away:

- the stored persona vector was extracted from these same responses, so its r is in-sample; the
  ``heldout`` columns project each response onto a mean-difference vector built from the trait's
  answers to the *other* questions only (cross-fitted by question), which the vector never saw;
- below ``MIN_RESPONSES`` pairs (or when one side is constant) no r is claimed; the row says why.

Screen. For a training pair (prompt x, response y) the *projection difference* is
``(a(x, y) − a(x, y′)) · v̂`` with a(·) the mean response activation at one layer and y′ the base
model's own answer to x: how much further along the trait the data's answer sits than what the
model would have said anyway (paper §5: the dataset mean predicts the post-fine-tuning trait shift).
Here it is divided by ‖v‖ — for a mean-difference vector that is the gap between the base model's
positive- and negative-instructed answers along v̂ — so 0.5 means "half way from the model's
negative to its positive persona", a scale-free threshold for flags. A "dataset" is one data source
of the SFT set (hitl / survey / synthetic) or one persona. Cost is the base model's answers: SFT prompts
carry a long persona system prompt, so each pair is read once and shared by both answers.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np
import torch

from .activations import VIEWS, layer_position
from .control_vector import ControlVector

MIN_RESPONSES = 8  # fewer scored responses → no correlation claimed


# --------------------------------------------------------------------------- correlation with CI


def _paired(x: Sequence, y: Sequence) -> tuple[np.ndarray, np.ndarray]:
    keep = [(float(a), float(b)) for a, b in zip(x, y) if a is not None and b is not None]
    arr = np.asarray(keep, dtype=float).reshape(-1, 2)
    arr = arr[~np.isnan(arr).any(axis=1)]
    return arr[:, 0], arr[:, 1]


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of every row pair of ``x``/``y`` [boot, n]; NaN where a row is constant."""
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean(axis=1, keepdims=True)
    den = np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (x * y).sum(axis=1) / den, np.nan)


def pearson_ci(
    x: Sequence, y: Sequence, min_n: int = MIN_RESPONSES, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0
) -> dict:
    """Pearson r of paired values with a percentile-bootstrap CI (resampling pairs) and ``n``.

    ``r`` is None with a ``note`` when fewer than ``min_n`` complete pairs remain or one side is constant.
    """
    xs, ys = _paired(x, y)
    n = int(xs.size)
    out = {"n": n, "r": None, "ci_low": None, "ci_high": None, "note": ""}
    if n < min_n:
        out["note"] = f"n={n} < {min_n}: no r claimed"
        return out
    if np.ptp(xs) == 0 or np.ptp(ys) == 0:
        out["note"] = "constant projection or score: r undefined"
        return out
    r = float(_pearson_rows(xs[None], ys[None])[0])
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    boots = _pearson_rows(xs[idx], ys[idx])
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.nanpercentile(boots, [tail, 100 - tail])
    out.update(r=round(r, 4), ci_low=round(float(lo), 4), ci_high=round(float(hi), 4))
    return out


# --------------------------------------------------------------------------- projection as a predictor


def _unit(v: torch.Tensor) -> torch.Tensor:
    v = v.float()
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def trait_rows(index: list[dict], trait: str) -> list[int]:
    """Positions of ``trait``'s judged answers in an activations index (unscored answers left out)."""
    return [i for i, r in enumerate(index) if r["source"] == "trait" and r["name"] == trait and r["score"] is not None]


def heldout_vectors(response_avg: torch.Tensor, index: list[dict], rows: list[int]) -> dict[int, torch.Tensor | None]:
    """{question_idx: mean(pos) − mean(neg) response-avg activations over the trait's OTHER questions}
    ([layers × hidden]); None for a question when the others lack a positive or a negative answer."""
    out = {}
    for q in sorted({index[i]["question_idx"] for i in rows}):
        pos = [i for i in rows if index[i]["question_idx"] != q and index[i]["polarity"] == "pos"]
        neg = [i for i in rows if index[i]["question_idx"] != q and index[i]["polarity"] == "neg"]
        out[q] = response_avg[pos].mean(0) - response_avg[neg].mean(0) if pos and neg else None
    return out


def trait_projections(
    tensors: dict[str, torch.Tensor], index: list[dict], captured: list[int], trait: str, vector: ControlVector
) -> dict:
    """Every judged answer of ``trait`` projected at every layer of ``vector``, for every view:
    ``stored`` onto the persona vector, ``heldout`` onto the question-held-out mean difference
    (NaN where none could be built). Tensors are [answers × layers]."""
    rows = trait_rows(index, trait)
    pos = [captured.index(x) for x in vector.layers]
    unit = _unit(vector.directions)  # [layers, hidden]
    held = heldout_vectors(tensors["response_avg"][:, pos], index, rows)
    held_units = {q: None if v is None else _unit(v) for q, v in held.items()}
    stored, heldout = {}, {}
    for view in VIEWS:
        acts = tensors[view][rows][:, pos].float()  # [answers, layers, hidden]
        stored[view] = (acts * unit).sum(-1)
        heldout[view] = _project_heldout(acts, [index[i]["question_idx"] for i in rows], held_units)
    return {
        "trait": trait,
        "layers": list(vector.layers),
        "rows": [index[i] for i in rows],
        "scores": [float(index[i]["score"]) for i in rows],
        "stored": stored,
        "heldout": heldout,
    }


def _project_heldout(acts: torch.Tensor, questions: list[int], units: dict) -> torch.Tensor:
    """[answers × layers] projections, each answer onto its own question's held-out unit vector (NaN: none)."""
    out = torch.full(acts.shape[:2], math.nan)
    for k, q in enumerate(questions):
        if units[q] is not None:
            out[k] = (acts[k] * units[q]).sum(-1)
    return out


def _nan_to_none(values: torch.Tensor) -> list[float | None]:
    return [None if math.isnan(float(v)) else float(v) for v in values]


def correlations(tp: dict, min_n: int = MIN_RESPONSES, seed: int = 0) -> list[dict]:
    """One row per (view, layer): r between projection and judged score, stored vector and held-out."""
    out = []
    for view in VIEWS:
        for j, layer in enumerate(tp["layers"]):
            stored = pearson_ci(tp["stored"][view][:, j].tolist(), tp["scores"], min_n, seed=seed)
            held = pearson_ci(_nan_to_none(tp["heldout"][view][:, j]), tp["scores"], min_n, seed=seed)
            out.append(
                {
                    "trait": tp["trait"],
                    "view": view,
                    "layer": layer,
                    **stored,
                    "r_heldout": held["r"],
                    "heldout_ci_low": held["ci_low"],
                    "heldout_ci_high": held["ci_high"],
                    "heldout_n": held["n"],
                }
            )
    return out


def response_table(tp: dict, layer: int) -> list[dict]:
    """Per answer at one layer: who it is, its judged score and its projection in every view."""
    j = tp["layers"].index(layer)
    return [
        {
            "trait": tp["trait"],
            "polarity": r["polarity"],
            "instruction_idx": r["prompt_idx"],
            "question_idx": r["question_idx"],
            "sample_idx": r["sample_idx"],
            "score": r["score"],
            "layer": layer,
            **{f"proj_{v}": round(float(tp["stored"][v][k, j]), 4) for v in VIEWS},
            **{f"heldout_{v}": _round_or_none(float(tp["heldout"][v][k, j])) for v in VIEWS},
        }
        for k, r in enumerate(tp["rows"])
    ]


def _round_or_none(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 4)


def headline(rows: list[dict], trait: str, layer: int) -> dict:
    """One trait in a line at ``layer``: r [CI] for the last prompt token (the paper's monitor) and the
    response average, stored and held-out vectors."""
    at = {r["view"]: r for r in rows if r["trait"] == trait and r["layer"] == layer}
    fmt = lambda r, lo, hi: "n/a" if r is None else f"{r:+.2f} [{lo:+.2f}, {hi:+.2f}]"
    line = {"trait": trait, "layer": layer, "n": at["response_avg"]["n"]}
    for view in ("prompt_last", "response_avg"):
        a = at[view]
        line[f"r_{view}"] = fmt(a["r"], a["ci_low"], a["ci_high"])
        line[f"r_heldout_{view}"] = fmt(a["r_heldout"], a["heldout_ci_low"], a["heldout_ci_high"])
    line["note"] = at["response_avg"]["note"]
    return line


# --------------------------------------------------------------------------- projection-difference screen


def sample_pairs(pairs: list[dict], n: int, seed: int = 0) -> list[dict]:
    """A seeded sample of ``n`` pairs (all when ``n`` ≤ 0 or ≥ the set), in a fixed order by id."""
    ordered = sorted(pairs, key=lambda p: p["id"])
    if n <= 0 or n >= len(ordered):
        return ordered
    return sorted(random.Random(seed).sample(ordered, n), key=lambda p: p["id"])


def pair_chat(pair: dict) -> tuple[list[dict], str]:
    """(prompt messages, the dataset's response) of one SFT pair (TRL's prompt/completion layout)."""
    return [{"role": m["role"], "content": m["content"]} for m in pair["prompt"]], pair["completion"][-1]["content"]


def projection_differences(
    data_acts: torch.Tensor, base_acts: torch.Tensor, vectors: dict[str, ControlVector], layer: int
) -> dict[str, torch.Tensor]:
    """{trait: (a_data − a_base) · v̂ / ‖v‖ per sample} from response-avg activations [n × hidden] at ``layer``."""
    out = {}
    for trait, cv in vectors.items():
        v = cv.direction(layer).float()
        out[trait] = (data_acts.float() - base_acts.float()) @ v / v.norm().clamp_min(1e-12) ** 2
    return out


@torch.inference_mode()
def shared_prompt_activations(model, tok, chat: list[dict], responses: list[str], layer: int) -> torch.Tensor:
    """Mean response activation at ``layer`` [len(responses) × hidden] of several answers to ONE prompt.

    Equal to :func:`activations.extract` on each (chat, response) item, but the prompt — here a long
    persona system prompt, most of the tokens — is read once and its key/value cache reused for every
    answer, and no layer above ``layer`` is computed.
    """
    import copy

    from transformers import DynamicCache

    from .activations import read_layers  # the same early stop extract uses

    device = next(model.parameters()).device
    text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    p_ids = tok(text, add_special_tokens=False)["input_ids"]

    def read(ids: list[int], cache) -> torch.Tensor:
        with read_layers(model, [layer]) as store:
            model(input_ids=torch.tensor([ids], device=device), past_key_values=cache, use_cache=True)
        return store[layer][0][0].float().cpu()  # [tokens, hidden]

    cache = DynamicCache()
    prompt = read(p_ids, cache)
    out = []
    for response in responses:
        r_ids = tok(response, add_special_tokens=False)["input_ids"]
        out.append(read(r_ids, copy.deepcopy(cache)).mean(0) if r_ids else prompt[-1])  # empty: the boundary
    return torch.stack(out)


def screen_activations(model, tok, chats: list[list[dict]], data: list[str], base: list[str], layer: int):
    """Response-avg activations at ``layer`` [n × hidden] of the dataset's answers and of the base model's."""
    both = [shared_prompt_activations(model, tok, c, [d, b], layer) for c, d, b in zip(chats, data, base)]
    return torch.stack([x[0] for x in both]), torch.stack([x[1] for x in both])


def screen(
    backend,
    pairs: list[dict],
    vectors: dict[str, ControlVector],
    layer: int,
    params,
    threshold: float,
    group_by="source",
):
    """The whole screen on a local backend: the base model answers each pair's prompt (``params``), both
    answers are read at ``layer`` with the prompt read once, and each pair gets its per-trait difference
    and flags (no pairs: no rows)."""
    if not pairs:
        return []
    chats, data = (list(x) for x in zip(*(pair_chat(p) for p in pairs)))
    base = [backend.complete([c], params)[0] for c in chats]  # one at a time: prompt lengths vary, no padding
    data_acts, base_acts = screen_activations(backend.model, backend.tok, chats, data, base, layer)
    return screen_rows(pairs, base, projection_differences(data_acts, base_acts, vectors, layer), threshold, group_by)


def screen_layer(vectors: dict[str, ControlVector], layer: int | None) -> int:
    """The screen's layer: ``layer``, else the middle layer the vectors were captured at."""
    return layer_position(next(iter(vectors.values())).layers, layer)[0]


def screen_rows(
    pairs: list[dict], base: list[str], diffs: dict[str, torch.Tensor], threshold: float, group_by: str = "source"
) -> list[dict]:
    """One row per pair: its dataset (the pair's ``group_by`` field: data source or persona), the base
    model's answer, the normalised difference per trait, and the traits where it exceeds ``threshold``
    (the per-sample flag)."""
    rows = []
    for k, (p, b) in enumerate(zip(pairs, base)):
        d = {t: round(float(v[k]), 4) for t, v in diffs.items()}
        rows.append(
            {
                "id": p["id"],
                "dataset": p[group_by],
                "persona_id": p["persona_id"],
                "response": pair_chat(p)[1],
                "base_response": b,
                **{f"diff_{t}": x for t, x in d.items()},
                "flagged_traits": ", ".join(t for t, x in d.items() if x > threshold),
            }
        )
    return rows


MIN_DATASET = 3  # fewer screened samples of a dataset → its mean is reported but not flagged


def dataset_flags(
    rows: list[dict], traits: list[str], threshold: float, seed: int = 0, min_n: int = MIN_DATASET
) -> list[dict]:
    """Per dataset (and ``ALL``) × trait: mean normalised difference with a bootstrap CI, the number of
    flagged samples, and the per-dataset flag (mean above ``threshold``, with at least ``min_n`` samples)."""
    from .stats import bootstrap_ci

    groups = {"ALL": rows, **{d: [r for r in rows if r["dataset"] == d] for d in sorted({r["dataset"] for r in rows})}}
    out = []
    for name, group in groups.items():
        for t in traits:
            vals = [r[f"diff_{t}"] for r in group]
            if not vals:
                continue
            lo, hi = bootstrap_ci(vals, seed=seed)
            mean = float(np.mean(vals))
            out.append(
                {
                    "dataset": name,
                    "trait": t,
                    "n": len(vals),
                    "mean_diff": round(mean, 4),
                    "ci_low": round(lo, 4),
                    "ci_high": round(hi, 4),
                    "flagged_samples": sum(t in r["flagged_traits"].split(", ") for r in group),
                    "flagged": mean > threshold and len(vals) >= min_n,
                    "note": f"n={len(vals)} < {min_n}: not flagged" if len(vals) < min_n else "",
                }
            )
    return out
