"""CMA-ES persona steering on the pipeline's own inputs: which chats each persona is searched and
held out on, the persona-specific baseline directions, the fitness judge, and the held-out
comparison of every method in one batch.

``steer_search`` holds the optimiser and the batched evaluation; this module turns persona specs
and topics into its ``Target``s and reads its results back as per-method scores.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from . import steer_search as ss
from .contracts import PersonaSpec, Topic
from .control_vector import ControlVector
from .persona_simulator import definitions
from .prompts import neutral_user_chat, teacher_chat
from .teacher_dialogues import plan_dialogues

METHODS = (
    "cmaes",
    "random_search",
    "mean_diff_equal",
    "pca",
    "persona_mean_diff",
    "persona_pca",
    "unsteered",
    "prompt",
)
STEERING_BASELINES = ("random_search", "mean_diff_equal", "pca", "persona_mean_diff", "persona_pca")


def searched_personas(keys: list[str], persona_specs: list[dict], which: str) -> list[str]:
    """The personas of ``keys`` to search: ``all``, or only ``evaluated`` ones — those the held-out
    evaluation (``judge_scores``, the human-eval page) will test. CMA-ES with its baselines is the
    dearest step per persona, and a direction nobody evaluates only costs time on a 2-core demo."""
    if which == "all":
        return list(keys)
    from .eval_methods import evaluated_personas

    chosen = set(evaluated_personas(s["id"] for s in persona_specs))
    return [k for k in keys if k in chosen]


def not_searched(pid: str, searched: list[str]) -> dict:
    """The value a persona skipped by ``searched_personas`` gets: says so, holds no vector."""
    return {
        "persona_id": pid,
        "searched": False,
        "reason": "not an evaluated persona (the profile caps eval_personas; config personas='all' searches every "
        f"persona); searched in this run: {', '.join(searched) or 'none'}",
    }


def searched(cmaes: dict) -> dict:
    """Only the personas that have a CMA-ES direction (see ``not_searched``)."""
    return {pid: r for pid, r in cmaes.items() if r.get("searched", True)}


def _topics(spec: PersonaSpec, topics: list[Topic], n: int, seed: int, split: str = "train") -> list[str]:
    """Search topics (``seed + 7``, the train split) or held-out ones (``seed``) for one persona."""
    if split == "heldout":
        return [d.topic for d in plan_dialogues(spec, topics, n, seed, split="heldout")]
    return [d.topic for d in plan_dialogues(spec, topics, n, seed + 7)]


def contrast_chats(keys: list[str], persona_specs: list[dict], topics: list[dict], n: int, seed: int) -> dict:
    """Per persona: search-topic chats with the persona's prompt, the same topics without it, and its example
    lines — what ``steer_search.persona_directions`` reads (search topics only, never the held-out ones)."""
    specs = {s["id"]: PersonaSpec(**s) for s in persona_specs}
    all_topics = [Topic(**t) for t in topics]
    out = {}
    for pid in keys:
        search = _topics(specs[pid], all_topics, n, seed)
        out[pid] = (
            [teacher_chat(specs[pid], t, []) for t in search],
            [neutral_user_chat(t) for t in search],
            specs[pid].example_lines,
        )
    return out


def targets(keys: list[str], persona_specs: list[dict], topics: list[dict], n: int, seed: int) -> list[ss.Target]:
    """One ``Target`` per persona: neutral search chats, neutral held-out chats, and the prompt-only baseline."""
    specs = {s["id"]: PersonaSpec(**s) for s in persona_specs}
    judged = definitions(persona_specs)  # compact (who + traits): the fitness judge reads it hundreds of times
    all_topics = [Topic(**t) for t in topics]
    out = []
    for pid in keys:
        search = _topics(specs[pid], all_topics, n, seed)
        held = _topics(specs[pid], all_topics, n, seed, "heldout")
        out.append(
            ss.Target(
                pid,
                judged[pid],
                [neutral_user_chat(t) for t in search],
                [neutral_user_chat(t) for t in held],
                [teacher_chat(specs[pid], t, []) for t in held],
            )
        )
    return out


def fitness_judge(judge, choice: str, persona_specs: list[dict]):
    """The ``search_fitness`` judge as ``steer_search`` calls it, and the signal it reads."""
    from .judging import JudgeItem, choose
    from .judging.reward import persona_scores

    scorer = choose.persona_judge("search_fitness", judge, persona_specs, choice=choice)
    fn = lambda items: persona_scores(scorer, [JudgeItem(s, h, line) for s, h, line in items])
    return fn, scorer.signal


def persona_baselines(backend, contrast: dict, s: ss.SearchSettings, warn: Callable[[str], None]) -> dict:
    """pid → {persona_mean_diff, persona_pca}: steering vectors with the push of one unit weight
    (empty, with a warning, for a backend that exposes no local model to read activations from)."""
    if not hasattr(backend, "model"):
        warn("persona-specific baselines need a local model's activations; skipped on this backend")
        return {}
    return {
        pid: {k: ss.unit_push(v, s) for k, v in ss.persona_directions(backend, *c, s.layer).items()}
        for pid, c in contrast.items()
    }


def heldout(backend, judge_fn, targets: list[ss.Target], units, s: ss.SearchSettings, found: dict, own: dict) -> dict:
    """Every method on the same held-out topics, one batch; prompt-only sees the persona, the others don't."""
    fixed = ss.baseline_vectors(units, s)
    cands, labels = [], []
    for t in targets:
        r = found[t.persona_id]
        for m, v in (
            ("cmaes", ss.weighted_vector(r["best"][1], units, s)),
            ("random_search", ss.weighted_vector(r["random_best"][1], units, s)),
            ("mean_diff_equal", fixed["mean_diff_equal"]),
            ("pca", fixed["pca"]),
            *own.get(t.persona_id, {}).items(),
            ("unsteered", None),
        ):
            cands.append((t, v, t.heldout_chats))
            labels.append((t.persona_id, m))
        cands.append((t, None, t.prompt_chats))
        labels.append((t.persona_id, "prompt"))
    scores, texts = ss.evaluate(backend, judge_fn, cands, s)
    out: dict = {t.persona_id: {"scores": {}, "examples": {}} for t in targets}
    for (pid, m), sc, tx in zip(labels, scores, texts):
        out[pid]["scores"][m] = round(sum(sc) / len(sc), 4)
        out[pid]["examples"][m] = tx[:2]
    return out


def wins(out: dict) -> tuple[int, int]:
    """(personas where CMA-ES beats every steering baseline, personas where it beats the unsteered start)."""
    beats = sum(
        r["heldout"]["cmaes"] >= max(r["heldout"][m] for m in STEERING_BASELINES if m in r["heldout"])
        for r in out.values()
    )
    return beats, sum(r["heldout"]["cmaes"] > r["heldout"]["unsteered"] for r in out.values())


def trait_basis(vectors: dict[str, ControlVector], layer: int) -> tuple[torch.Tensor, float]:
    """The CMA-ES weights' basis at ``layer``: unit trait directions [k, hidden] (sorted trait order)
    and the layer's typical residual norm (the first trait's: every vector comes from one capture)."""
    traits = sorted(vectors)
    units = ss.unit_rows(torch.stack([vectors[t].direction(layer) for t in traits]))
    return units, vectors[traits[0]].layer_norm(layer)
