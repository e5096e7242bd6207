"""Steering sweeps and CMA-ES search over trait weights, each evaluated in one batched pass.

Both build one batch whose rows carry their own steering (``hooks.Steer`` with
per-row coefficients or vectors), so a whole sweep grid or a whole CMA-ES
population is a single batched ``generate`` instead of one call per setting.

Sweep protocol (persona vectors): layers × coefficients → mean trait score and
coherence; the chosen point is the highest trait score whose coherence stays
≥ 50; the prompt-only answers on the same questions are the baseline.

CMA-ES protocol (persona steering): weights over unit trait vectors at one
layer, v(w) = α · ‖h_L‖ · Σ wᵢ ûᵢ with wᵢ bounded, fitness = the persona judge
on the steered model's lines; random search gets the same evaluation budget.
Fixed baselines push as hard as one unit weight: the equal-weight trait mix, the
PCA direction of the trait vectors, and two *persona-specific* directions — the
mean difference of activations with the persona's prompt minus without on the
same texts, and the top principal direction of those activations.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import spearmanr

from .backends import SamplingParams
from .control_vector import push
from .hooks import Steer
from .stats import rounded

# ---------------------------------------------------------------- sweeps


def sweep_rows(
    questions: list[str], layers: list[int], rels: list[float], baseline_system: str | None = None
) -> list[dict]:
    """The grid (layer × coef × question), plus prompt-only baseline rows when ``baseline_system`` is given."""
    ask = lambda q: [{"role": "user", "content": q}]
    rows = [
        {"condition": "steer", "question_idx": q, "question": text, "layer": layer, "rel_coef": rel, "chat": ask(text)}
        for layer in layers
        for rel in rels
        for q, text in enumerate(questions)
    ]
    if baseline_system:
        rows += [
            {
                "condition": "prompt",
                "question_idx": q,
                "question": text,
                "layer": None,
                "rel_coef": None,
                "chat": [{"role": "system", "content": baseline_system}, *ask(text)],
            }
            for q, text in enumerate(questions)
        ]
    return rows


def sweep_steers(rows: list[dict], vectors: dict[int, torch.Tensor], layer_norms: dict[int, float]) -> list[Steer]:
    """One add-steer per layer; each row's coefficient is zero except at its own layer.

    A relative coef c means a push of c × the layer's typical residual norm along the unit vector
    (``control_vector.push``, here in its per-row form: one unit vector, one coefficient per row).
    Rows with ``layer`` None (baselines) are never steered.
    """
    steers = []
    for layer in sorted({r["layer"] for r in rows if r["layer"] is not None}):
        unit = vectors[layer] / vectors[layer].norm()
        coefs = torch.tensor([r["rel_coef"] * layer_norms[layer] if r["layer"] == layer else 0.0 for r in rows])
        steers.append(Steer(vector=unit, layer=layer, coef=coefs, positions="all"))
    return steers


def run_sweep(
    backend, rows: list[dict], vectors: dict[int, torch.Tensor], layer_norms: dict[int, float], params: SamplingParams
) -> list[str]:
    """Every row's ``chat`` completed in one batched pass, each row with its own steering."""
    with backend.steered(sweep_steers(rows, vectors, layer_norms)):
        return backend.complete([r["chat"] for r in rows], params)


def mean(xs) -> float | None:
    vals = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return sum(vals) / len(vals) if vals else None


def summarise_sweep(rows: list[dict]) -> list[dict]:
    """Mean trait score and coherence per (layer, rel_coef)."""
    cells: dict[tuple, list[dict]] = {}
    for r in (r for r in rows if r.get("condition", "steer") == "steer"):
        cells.setdefault((r["layer"], r["rel_coef"]), []).append(r)
    return [
        {
            "layer": k[0],
            "rel_coef": k[1],
            "trait": mean(r["trait_score"] for r in v),
            "coherence": mean(r["coherence"] for r in v),
            "n": len(v),
        }
        for k, v in sorted(cells.items())
    ]


def best_point(summary: list[dict], min_coherence: float = 50.0) -> dict | None:
    """Highest mean trait score among the cells that stay coherent (None if none do)."""
    ok = [s for s in summary if s["trait"] is not None and (s["coherence"] or 0) >= min_coherence and s["rel_coef"] > 0]
    return max(ok, key=lambda s: s["trait"]) if ok else None


def rank_correlation(summary: list[dict], layer: int) -> float | None:
    """Spearman ρ between coefficient and mean trait score at one layer (does more push mean more trait?)."""
    cells = [s for s in summary if s["layer"] == layer and s["trait"] is not None]
    if len(cells) < 3 or len({s["trait"] for s in cells}) < 2:
        return None
    rho = spearmanr([s["rel_coef"] for s in cells], [s["trait"] for s in cells]).statistic
    return None if math.isnan(rho) else round(float(rho), 3)


def sweep_layers(requested: list[int] | None, captured: list[int], k: int) -> list[int]:
    """The layers to sweep: ``requested``, else ``k`` spread over the middle of the captured ones."""
    from .activations import spread_layers

    layers = requested or [captured[min(len(captured) - 1, i)] for i in spread_layers(len(captured), k)]
    missing = [x for x in layers if x not in captured]
    if missing:
        raise ValueError(f"config layers={missing}: activations were captured at {captured}")
    return layers


def cell(summary: list[dict], layer: int, coef: float) -> float | None:
    """The mean trait score at one (layer, coef) of a summarised sweep, rounded; None if absent or failed."""
    hit = [s["trait"] for s in summary if s["layer"] == layer and s["rel_coef"] == coef]
    return round(hit[0], 1) if hit and hit[0] is not None else None


def sweep_result(trait: str, rows: list[dict], layers: list[int], min_coherence: float, reliable: bool) -> dict:
    """One trait's sweep in a line: the best coherent point, the coef→trait rank correlation at the best
    (or middle) layer, the unsteered score there, and the prompt-only baseline on the same questions."""
    from .study import monotonicity

    summary = summarise_sweep(rows)
    best = best_point(summary, min_coherence)
    layer = best["layer"] if best else layers[len(layers) // 2]
    prompt = [r for r in rows if r["condition"] == "prompt"]
    mono = monotonicity(rows, layer)
    return {
        "trait": trait,
        "vector_reliable": reliable,
        "best_layer": best and best["layer"],
        "best_coef": best and best["rel_coef"],
        "best_trait": best and round(best["trait"], 1),
        "rank_corr": rank_correlation(summary, layer),
        # the same over every answer, CI resampling questions (the cell means above hide the spread)
        "rho_answers": rounded(mono["rho"], 3),
        "rho_ci": f"[{rounded(mono['ci_low'], 2)}, {rounded(mono['ci_high'], 2)}]",
        "questions": mono["questions"],
        "unsteered": cell(summary, layer, 0.0),
        "prompt_only": mean(r["trait_score"] for r in prompt),
        "prompt_coherence": mean(r["coherence"] for r in prompt),
    }


# ---------------------------------------------------------------- CMA-ES


def unit_rows(vectors: torch.Tensor) -> torch.Tensor:
    return vectors / vectors.norm(dim=-1, keepdim=True)


def direction(weights: np.ndarray, units: torch.Tensor) -> torch.Tensor:
    """Σ wᵢ ûᵢ for one weight vector [k] over unit trait vectors [k, hidden]."""
    return torch.as_tensor(weights, dtype=units.dtype) @ units


def pca_direction(units: torch.Tensor) -> torch.Tensor:
    """Top principal direction of the trait vectors, signed towards their sum, unit norm."""
    _, _, vh = torch.linalg.svd(units, full_matrices=False)
    v = vh[0]
    return v if torch.dot(v, units.sum(0)) >= 0 else -v


@dataclass
class SearchSettings:
    layer: int
    layer_norm: float
    alpha: float = 0.5  # push per unit weight, relative to the layer's typical residual norm
    bound: float = 1.0
    sigma0: float = 0.4
    generations: int = 3
    popsize: int = 6
    seed: int = 0
    max_new_tokens: int = 40
    temperature: float = 0.0


@dataclass
class Target:
    """One persona to reproduce: its search prompts, held-out prompts and judge spec."""

    persona_id: str
    spec: str
    search_chats: list[list[dict]]
    heldout_chats: list[list[dict]]
    prompt_chats: list[list[dict]] = field(default_factory=list)  # persona-in-the-prompt baseline (held-out)


def _history(chat: list[dict]) -> list[dict]:
    """The dialogue so far as the judge sees it (the opening cue is not a real turn)."""
    return [m for m in chat[2:] if m["role"] in ("user", "assistant")]


def evaluate(
    backend, judge_fn, targets_vectors: list[tuple[Target, torch.Tensor | None, list[list[dict]]]], s: SearchSettings
) -> tuple[list[list[float]], list[list[str]]]:
    """Score many (target, steering vector, chats) candidates in ONE batched generation.

    ``judge_fn(spec, history, line) -> score in [-1, 1] | None`` is applied in
    one batch too; a failed judgement counts as -1 (the worst), never skipped.
    """
    chats, vecs, owners = [], [], []
    for c, (_target, vec, cand_chats) in enumerate(targets_vectors):
        for chat in cand_chats:
            chats.append(chat)
            vecs.append(vec if vec is not None else None)
            owners.append(c)
    hidden = next(v for v in vecs if v is not None).shape[-1] if any(v is not None for v in vecs) else None
    params = SamplingParams(max_new_tokens=s.max_new_tokens, temperature=s.temperature, seed=s.seed)
    if hidden is None:
        lines = backend.complete(chats, params)
    else:
        rows = torch.stack([v if v is not None else torch.zeros(hidden) for v in vecs])
        with backend.steered([Steer(vector=rows, layer=s.layer, coef=1.0)]):
            lines = backend.complete(chats, params)
    items = [(targets_vectors[o][0].spec, _history(chat), line) for o, chat, line in zip(owners, chats, lines)]
    scores = judge_fn(items)
    per: list[list[float]] = [[] for _ in targets_vectors]
    texts: list[list[str]] = [[] for _ in targets_vectors]
    for o, sc, line in zip(owners, scores, lines):
        per[o].append(-1.0 if sc is None else float(sc))
        texts[o].append(line)
    return per, texts


def weighted_vector(weights, units, s: SearchSettings) -> torch.Tensor:
    """v(w) = α · ‖h_L‖ · Σ wᵢ ûᵢ: one unit weight pushes as hard as ``push(direction, α, ‖h_L‖)``."""
    return s.alpha * s.layer_norm * direction(np.asarray(weights), units)


def unit_push(unit: torch.Tensor, s: SearchSettings) -> torch.Tensor:
    """A fixed direction with the push of one unit weight (α × the layer's typical norm)."""
    return push(unit, s.alpha, s.layer_norm)


def cmaes_search(
    backend,
    judge_fn,
    targets: list[Target],
    units: torch.Tensor,
    s: SearchSettings,
    on_generation=None,
    evaluate_fn=None,
) -> dict[str, dict]:
    """CMA-ES over trait weights for every target in lockstep (one batch per generation),
    plus random search with the same number of evaluations. Returns per-target history and bests.

    ``evaluate_fn`` (default :func:`evaluate`: generate and judge) scores a batch of candidates;
    a test passes an analytic objective to check the optimiser itself."""
    evaluate_fn = evaluate_fn or evaluate
    import cma

    k = units.shape[0]
    opts = {
        "bounds": [-s.bound, s.bound],
        "popsize": s.popsize,
        "seed": s.seed + 1,
        "verbose": -9,
        "maxiter": s.generations,
    }
    es = {t.persona_id: cma.CMAEvolutionStrategy(np.zeros(k), s.sigma0, opts) for t in targets}
    rng = np.random.default_rng(s.seed)
    out = {
        t.persona_id: {
            "history": [],
            "random_history": [],
            "best": (-math.inf, np.zeros(k)),
            "random_best": (-math.inf, np.zeros(k)),
        }
        for t in targets
    }
    for gen in range(s.generations):
        asks = {t.persona_id: es[t.persona_id].ask() for t in targets}
        randoms = {t.persona_id: rng.uniform(-s.bound, s.bound, size=(s.popsize, k)) for t in targets}
        cands = [(t, weighted_vector(w, units, s), t.search_chats) for t in targets for w in asks[t.persona_id]]
        cands += [(t, weighted_vector(w, units, s), t.search_chats) for t in targets for w in randoms[t.persona_id]]
        scores, _ = evaluate_fn(backend, judge_fn, cands, s)
        fit = [sum(x) / len(x) for x in scores]
        i = 0
        for t in targets:
            pid, pop = t.persona_id, len(asks[t.persona_id])
            f_cma, f_rand = fit[i : i + pop], fit[len(targets) * pop + i : len(targets) * pop + i + pop]
            es[pid].tell(asks[pid], [-f for f in f_cma])  # cma minimises
            _track(out[pid], "history", "best", gen, f_cma, asks[pid])
            _track(out[pid], "random_history", "random_best", gen, f_rand, list(randoms[pid]))
            i += pop
        if on_generation:
            on_generation(gen + 1, s.generations)
    return out


def _track(rec: dict, hist: str, best: str, gen: int, fits: list[float], weights) -> None:
    j = int(np.argmax(fits))
    if fits[j] > rec[best][0]:
        rec[best] = (fits[j], np.asarray(weights[j]))
    rec[hist].append(
        {
            "generation": gen,
            "best": round(max(fits), 4),
            "mean": round(sum(fits) / len(fits), 4),
            "best_so_far": round(rec[best][0], 4),
        }
    )


def baseline_vectors(units: torch.Tensor, s: SearchSettings) -> dict[str, torch.Tensor | None]:
    """Fixed comparison points, all with the same push size as one unit weight."""
    k = units.shape[0]
    eq = direction(np.ones(k) / math.sqrt(k), units)
    return {
        "unsteered": None,
        "mean_diff_equal": unit_push(eq, s),
        "pca": unit_push(pca_direction(units), s),
    }


def persona_directions(
    backend, with_persona: list[list[dict]], without: list[list[dict]], texts: list[str], layer: int
) -> dict[str, torch.Tensor]:
    """The target persona's own directions at ``layer`` (unit norm), from ONE forward pass, no generation.

    The same ``texts`` (the persona's example lines) are read after each chat with the
    persona's prompt and after the same topic without it; activations are averaged over
    the text's tokens. ``persona_mean_diff``: mean of (with − without) over topics × texts.
    ``persona_pca``: the top principal direction of all those activations (centred), signed
    so the persona side projects higher — the unsupervised version of the same contrast.
    """
    from .activations import Item, extract

    pairs = [(w, o, t) for w, o in zip(with_persona, without) for t in texts]
    if not pairs:
        raise ValueError("persona directions need at least one topic and one example line")
    items = [Item(w, t) for w, _, t in pairs] + [Item(o, t) for _, o, t in pairs]
    acts = extract(backend.model, backend.tok, items, [layer])["response_avg"][:, 0]
    on, off = acts[: len(pairs)], acts[len(pairs) :]
    diff = (on - off).mean(0)
    _, _, vh = torch.linalg.svd(acts - acts.mean(0), full_matrices=False)
    pc = vh[0] if torch.dot(vh[0], diff) >= 0 else -vh[0]
    return {"persona_mean_diff": diff / diff.norm(), "persona_pca": pc / pc.norm()}


def seeded_sample(items: list, n: int, key: str) -> list:
    rng = random.Random(key)
    pool = list(items)
    rng.shuffle(pool)
    return pool[:n]
