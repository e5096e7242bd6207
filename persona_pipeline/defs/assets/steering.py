"""Representations group, steering half: sweeps per trait and CMA-ES per persona."""

import dagster as dg
import numpy as np
import torch

from persona_pipeline import steer_search as ss
from persona_pipeline import vectors as vec
from persona_pipeline.activations import spread_layers
from persona_pipeline.backends import BackendSpec, SamplingParams, make_backend
from persona_pipeline.contracts import PersonaSpec, Topic, Trait
from persona_pipeline.defs.assets._common import (
    ALL,
    GPU,
    SINGLE_RUN,
    md_table,
    persona_partitions,
    png_meta,
    trait_partitions,
)
from persona_pipeline.defs.assets.representations import GROUP, _pick, score_answers
from persona_pipeline.defs.resources import ModelResource
from persona_pipeline.judging import JudgeItem, choose
from persona_pipeline.judging.reward import persona_scores
from persona_pipeline.plots import line_plot
from persona_pipeline.prompts import neutral_user_chat, teacher_chat
from persona_pipeline.settings import home, profile
from persona_pipeline.simulate import plan_dialogues
from persona_pipeline.simulator import definitions
from persona_pipeline.transcripts import trait_system_prompt


def _policy(base_model: dict, adapter: str | None = None):
    return make_backend(BackendSpec(model=base_model["path"], adapter=adapter), home())


def _vectors_at(vectors: dict, name: str, layers: list[int]) -> dict[int, torch.Tensor]:
    tensors = vec.load_tensors(vectors["path"])
    if name not in tensors:
        raise ValueError(f"config vector={name!r}: {vectors['path']} holds {sorted(tensors)}")
    return {layer: tensors[name][vectors["layers"].index(layer)] for layer in layers}


class SweepConfig(dg.Config):
    """Relative coefs: c × the layer's typical residual norm. None → the active profile."""

    layers: list[int] | None = None
    coefs: list[float] | None = None
    questions: int | None = None
    max_new_tokens: int | None = None
    vector: str = "mean_diff_response_avg"
    judge_method: str = "auto"
    min_coherence: float = 50.0
    seed: int = 0


def _sweep_layers(config: SweepConfig, captured: list[int]) -> list[int]:
    layers = config.layers or [
        captured[min(len(captured) - 1, i)] for i in spread_layers(len(captured), profile().sweep_layers)
    ]
    missing = [x for x in layers if x not in captured]
    if missing:
        raise ValueError(f"config layers={missing}: activations were captured at {captured}")
    return layers


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "parquet"},
    partitions_def=trait_partitions,
    backfill_policy=SINGLE_RUN,
    **GPU,
    description="Layers × coefficients → mean trait score and coherence (one batched pass per trait), with the "
    "prompt-only baseline on the same questions; best = highest trait with coherence ≥ 50.",
)
def steering_sweep(
    context: dg.AssetExecutionContext,
    config: SweepConfig,
    persona_vectors: dict,
    trait_specs: list[dict],
    base_model: dict,
    judge: ModelResource,
) -> dict:
    traits = {t["trait"]: Trait(**t) for t in trait_specs}
    backend, method = _policy(base_model), choose.method("filter", judge, config.judge_method)
    params = SamplingParams(
        max_new_tokens=_pick(config.max_new_tokens, "trait_max_new_tokens"), temperature=0, seed=config.seed
    )
    out, table, plots = {}, [], {}
    for key in context.partition_keys:
        v, trait = persona_vectors[key], traits[key]
        layers = _sweep_layers(config, v["layers"])
        norms = {layer: v["layer_norms"][v["layers"].index(layer)] for layer in layers}
        system = trait_system_prompt(key, trait.instructions[0].pos, True)
        rows = ss.sweep_rows(
            trait.eval_questions[: _pick(config.questions, "sweep_questions")],
            layers,
            config.coefs or profile().sweep_coefs,
            system,
        )
        for row, text in zip(rows, ss.run_sweep(backend, rows, _vectors_at(v, config.vector, layers), norms, params)):
            row["trait"], row["response"] = key, text
            # a vector the trait judge cannot separate (or that fell back to unfiltered pairs) is marked, not hidden
            row["vector_reliable"], row["vector_issues"] = v.get("reliable", True), "; ".join(v.get("issues", []))
        score_answers(rows, trait, judge, config.judge_method, judge.backend())
        summary = ss.summarise_sweep(rows)
        best = ss.best_point(summary, config.min_coherence)
        layer = best["layer"] if best else layers[len(layers) // 2]
        prompt = [r for r in rows if r["condition"] == "prompt"]
        table.append(
            {
                "trait": key,
                "vector_reliable": v.get("reliable", True),
                "best_layer": best and best["layer"],
                "best_coef": best and best["rel_coef"],
                "best_trait": best and round(best["trait"], 1),
                "rank_corr": ss.rank_correlation(summary, layer),
                "unsteered": _cell(summary, layer, 0.0),
                "prompt_only": ss._mean(r["trait_score"] for r in prompt),
                "prompt_coherence": ss._mean(r["coherence"] for r in prompt),
            }
        )
        plots[key] = summary
        for r in rows:
            r.pop("chat")
        out[key] = rows
    context.add_output_metadata(
        {
            "trait_judge": method,
            "unreliable_vectors": ", ".join(t["trait"] for t in table if not t["vector_reliable"]) or "none",
            "results": md_table(table),
            **{k: v for key, summary in plots.items() for k, v in _sweep_plots(key, summary, table).items()},
        }
    )
    return out


def _cell(summary: list[dict], layer: int, coef: float):
    hit = [s["trait"] for s in summary if s["layer"] == layer and s["rel_coef"] == coef]
    return round(hit[0], 1) if hit and hit[0] is not None else None


def _sweep_plots(trait: str, summary: list[dict], table: list[dict]) -> dict:
    baseline = next(t["prompt_only"] for t in table if t["trait"] == trait)
    series = lambda field: {
        f"layer {layer}": (
            [s["rel_coef"] for s in summary if s["layer"] == layer],
            [s[field] or 0 for s in summary if s["layer"] == layer],
        )
        for layer in sorted({s["layer"] for s in summary})
    }
    return {
        **png_meta(
            line_plot(
                series("trait"),
                f"{trait}: trait score vs coef (dashed: prompt-only)",
                "relative coef",
                "trait 0–100",
                hline=baseline,
            ),
            f"sweep_{trait}_trait",
            f"{trait}_trait",
        ),
        **png_meta(
            line_plot(series("coherence"), f"{trait}: coherence vs coef", "relative coef", "coherence 0–100", hline=50),
            f"sweep_{trait}_coherence",
            f"{trait}_coherence",
        ),
    }


class CmaesConfig(dg.Config):
    layer: int | None = None  # default: the middle captured layer
    alpha: float = 0.5
    bound: float = 1.0
    sigma0: float = 0.4
    generations: int | None = None
    popsize: int | None = None
    prompts: int | None = None
    max_new_tokens: int | None = None  # None → profile (cmaes_max_new_tokens)
    vector: str = "mean_diff_response_avg"
    judge_method: str = "auto"  # auto: MiniLM voice judge with the local judge model, logprob with an endpoint
    seed: int = 0


def _contrast(keys: list[str], persona_specs: list[dict], topics: list[dict], n: int, seed: int) -> dict:
    """Per persona: search-topic chats with the persona's prompt, the same topics without it, and its example
    lines — what ``steer_search.persona_directions`` reads (search topics only, never the held-out ones)."""
    specs = {s["id"]: PersonaSpec(**s) for s in persona_specs}
    all_topics = [Topic(**t) for t in topics]
    out = {}
    for pid in keys:
        search = [d.topic for d in plan_dialogues(specs[pid], all_topics, n, seed + 7)]
        out[pid] = (
            [teacher_chat(specs[pid], t, []) for t in search],
            [neutral_user_chat(t) for t in search],
            specs[pid].example_lines,
        )
    return out


def _targets(keys: list[str], persona_specs: list[dict], topics: list[dict], n: int, seed: int) -> list[ss.Target]:
    specs = {s["id"]: PersonaSpec(**s) for s in persona_specs}
    judged = definitions(persona_specs)  # compact (who + traits): the fitness judge reads it hundreds of times
    all_topics = [Topic(**t) for t in topics]
    targets = []
    for pid in keys:
        search = [d.topic for d in plan_dialogues(specs[pid], all_topics, n, seed + 7)]
        held = [d.topic for d in plan_dialogues(specs[pid], all_topics, n, seed, split="heldout")]
        targets.append(
            ss.Target(
                pid,
                judged[pid],
                [neutral_user_chat(t) for t in search],
                [neutral_user_chat(t) for t in held],
                [teacher_chat(specs[pid], t, []) for t in held],
            )
        )
    return targets


def _judge_fn(judge: ModelResource, choice: str, persona_specs: list[dict]):
    """The ``search_fitness`` judge as ``steer_search`` calls it, and the signal it reads."""
    scorer = choose.persona_judge("search_fitness", judge, persona_specs, choice=choice)
    fn = lambda items: persona_scores(scorer, [JudgeItem(s, h, line) for s, h, line in items])
    return fn, scorer.signal


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "safetensors"},
    partitions_def=persona_partitions,
    backfill_policy=SINGLE_RUN,
    **GPU,
    ins={"persona_vectors": dg.AssetIn(partition_mapping=ALL)},
    description="CMA-ES over trait-vector weights so the steered model writes like the target persona (persona judge "
    "fitness), vs random search (same budget), equal-weight trait mean-diff and PCA, the persona's own mean-diff "
    "(with − without its prompt) and PCA directions, unsteered and prompt-only, on held-out topics.",
)
def cmaes_steering(
    context: dg.AssetExecutionContext,
    config: CmaesConfig,
    persona_vectors: dict,
    persona_specs: list[dict],
    topics: list[dict],
    base_model: dict,
    judge: ModelResource,
) -> dict:
    traits = sorted(persona_vectors)
    first = persona_vectors[traits[0]]
    layer = config.layer if config.layer is not None else first["layers"][len(first["layers"]) // 2]
    units = ss.unit_rows(torch.stack([_vectors_at(persona_vectors[t], config.vector, [layer])[layer] for t in traits]))
    s = ss.SearchSettings(
        layer=layer,
        layer_norm=first["layer_norms"][first["layers"].index(layer)],
        alpha=config.alpha,
        bound=config.bound,
        sigma0=config.sigma0,
        generations=_pick(config.generations, "cmaes_generations"),
        popsize=_pick(config.popsize, "cmaes_popsize"),
        seed=config.seed,
        max_new_tokens=_pick(config.max_new_tokens, "cmaes_max_new_tokens"),
    )
    targets = _targets(
        context.partition_keys, persona_specs, topics, _pick(config.prompts, "cmaes_prompts"), config.seed
    )
    backend, (judge_fn, signal) = _policy(base_model), _judge_fn(judge, config.judge_method, persona_specs)
    found = ss.cmaes_search(
        backend,
        judge_fn,
        targets,
        units,
        s,
        lambda g, n: context.log.info(f"CMA-ES generation {g}/{n} done for {len(targets)} personas"),
    )
    own = _persona_baselines(backend, context, persona_specs, topics, config, s)
    results = _heldout(backend, judge_fn, targets, units, s, found, own)
    out, files = {}, {}
    for t in targets:
        r = found[t.persona_id]
        path = home() / "cmaes_steering" / f"{t.persona_id}.safetensors"
        files[t.persona_id] = {"vector": ss.direction(r["best"][1], units) * s.alpha * s.layer_norm}
        out[t.persona_id] = {
            "persona_id": t.persona_id,
            "layer": layer,
            "alpha": s.alpha,
            "traits": traits,
            "path": str(path),
            "weights": dict(zip(traits, np.round(r["best"][1], 4).tolist())),
            "search_fitness": r["best"][0],
            "random_fitness": r["random_best"][0],
            "judge_signal": signal,  # what the search was optimised against: never its evaluator
            "heldout": results[t.persona_id]["scores"],
            "examples": results[t.persona_id]["examples"],
            "history": r["history"],
            "random_history": r["random_history"],
        }
    vec.save_tensor_files(home() / "cmaes_steering", files)  # every persona of this run swapped in at once
    context.add_output_metadata(_cmaes_meta(out, traits, s))
    return out


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


def _persona_baselines(backend, context, persona_specs, topics, config: CmaesConfig, s: ss.SearchSettings) -> dict:
    """pid → {persona_mean_diff, persona_pca}: steering vectors with the push of one unit weight
    (empty, with a warning, for a backend that exposes no local model to read activations from)."""
    if not hasattr(backend, "model"):
        context.log.warning("persona-specific baselines need a local model's activations; skipped on this backend")
        return {}
    contrast = _contrast(
        context.partition_keys, persona_specs, topics, _pick(config.prompts, "cmaes_prompts"), config.seed
    )
    return {
        pid: {k: s.alpha * s.layer_norm * v for k, v in ss.persona_directions(backend, *c, s.layer).items()}
        for pid, c in contrast.items()
    }


def _heldout(backend, judge_fn, targets: list[ss.Target], units, s: ss.SearchSettings, found: dict, own: dict) -> dict:
    """Every method on the same held-out topics, one batch; prompt-only sees the persona, the others don't."""
    fixed = ss.baseline_vectors(units, s)
    cands, labels = [], []
    for t in targets:
        r = found[t.persona_id]
        for m, v in (
            ("cmaes", ss._vector(r["best"][1], units, s)),
            ("random_search", ss._vector(r["random_best"][1], units, s)),
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


def _cmaes_meta(out: dict, traits: list[str], s: ss.SearchSettings) -> dict:
    curves = {}
    for pid, r in out.items():
        curves[f"{pid} cma"] = ([h["generation"] for h in r["history"]], [h["best_so_far"] for h in r["history"]])
    rows = [{"persona": pid, **r["heldout"]} for pid, r in out.items()]
    weights = [{"persona": pid, **r["weights"]} for pid, r in out.items()]
    wins = sum(
        r["heldout"]["cmaes"] >= max(r["heldout"][m] for m in STEERING_BASELINES if m in r["heldout"])
        for r in out.values()
    )
    beats_start = sum(r["heldout"]["cmaes"] > r["heldout"]["unsteered"] for r in out.values())
    return {
        "fitness_judge": next(iter(out.values()))["judge_signal"] if out else "n/a",
        "note": "held-out scores use the search's own fitness judge; judge_scores evaluates CMA-ES independently",
        "cmaes_beats_unsteered_start": f"{beats_start}/{len(out)}",
        "layer": s.layer,
        "alpha": s.alpha,
        "evaluations_per_method": s.generations * s.popsize,
        "heldout_persona_score": md_table(rows),
        "weights": md_table(weights),
        "cmaes_beats_steering_baselines": f"{wins}/{len(out)}",
        **png_meta(
            line_plot(curves, "CMA-ES convergence (best-so-far fitness)", "generation", "persona score [-1, 1]"),
            "cmaes_convergence",
            "convergence",
        ),
    }
