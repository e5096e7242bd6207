"""Representations group, steering half: sweeps per trait and CMA-ES per persona."""

from typing import Literal

import dagster as dg
import numpy as np

from persona_pipeline import persona_steering as ps
from persona_pipeline import steer_search as ss
from persona_pipeline import vectors as vec
from persona_pipeline.backends import SamplingParams
from persona_pipeline.contracts import Trait
from persona_pipeline.control_vector import ControlVector
from persona_pipeline.defs.assets._common import (
    ALL,
    GPU,
    SINGLE_RUN,
    FilterJudge,
    PersonaJudge,
    ProfileConfig,
    md_table,
    persona_partitions,
    png_meta,
    sweep_plot,
    trait_partitions,
)
from persona_pipeline.defs.assets.representations import GROUP
from persona_pipeline.defs.resources import ModelResource
from persona_pipeline.judging import choose
from persona_pipeline.layout import layout
from persona_pipeline.plots import line_plot
from persona_pipeline.policy import policy_backend
from persona_pipeline.settings import profile
from persona_pipeline.transcripts import score_answers, trait_system_prompt


class SweepConfig(ProfileConfig):
    """Relative coefs: c × the layer's typical residual norm. None → the active profile."""

    PROFILE = {"coefs": "sweep_coefs", "questions": "sweep_questions", "max_new_tokens": "trait_max_new_tokens"}

    layers: list[int] | None = None
    coefs: list[float] | None = None
    questions: int | None = None
    max_new_tokens: int | None = None
    vector: str = "mean_diff_response_avg"
    judge_method: FilterJudge = "auto"
    min_coherence: float = 50.0
    seed: int = 0


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
    backend, method = policy_backend(base_model), choose.method("filter", judge, config.judge_method)
    params = SamplingParams(max_new_tokens=config.max_new_tokens, temperature=0, seed=config.seed)
    out, table, plots = {}, [], {}
    for key in context.partition_keys:
        v, trait = persona_vectors[key], traits[key]
        cv = ControlVector.load(v, config.vector)
        layers = ss.sweep_layers(config.layers, cv.layers, profile().sweep_layers)
        system = trait_system_prompt(key, trait.instructions[0].pos, True)
        rows = ss.sweep_rows(
            trait.eval_questions[: config.questions],
            layers,
            config.coefs,
            system,
        )
        for row, text in zip(rows, ss.run_sweep(backend, rows, *cv.at(layers), params)):
            row["trait"], row["response"] = key, text
            # a vector the trait judge cannot separate (or that fell back to unfiltered pairs) is marked, not hidden
            row["vector_reliable"], row["vector_issues"] = v.get("reliable", True), "; ".join(v.get("issues", []))
        score_answers(rows, trait, judge, config.judge_method, judge.backend())
        summary = ss.summarise_sweep(rows)
        table.append(ss.sweep_result(key, rows, layers, config.min_coherence, v.get("reliable", True)))
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
            sweep_plot(trait, "trait"),
            f"{trait}_trait",
        ),
        **png_meta(
            line_plot(series("coherence"), f"{trait}: coherence vs coef", "relative coef", "coherence 0–100", hline=50),
            sweep_plot(trait, "coherence"),
            f"{trait}_coherence",
        ),
    }


class CmaesConfig(ProfileConfig):
    PROFILE = {
        "generations": "cmaes_generations",
        "popsize": "cmaes_popsize",
        "prompts": "cmaes_prompts",
        "max_new_tokens": "cmaes_max_new_tokens",
    }

    layer: int | None = None  # default: the middle captured layer
    alpha: float = 0.5
    bound: float = 1.0
    sigma0: float = 0.4
    generations: int | None = None
    popsize: int | None = None
    prompts: int | None = None
    max_new_tokens: int | None = None  # None → profile (cmaes_max_new_tokens)
    vector: str = "mean_diff_response_avg"
    judge_method: PersonaJudge = "auto"  # auto: MiniLM voice judge with the local judge model, logprob with an endpoint
    # evaluated: only the personas judge_scores tests (the profile's eval_personas); all: every partition
    personas: Literal["evaluated", "all"] = "evaluated"
    seed: int = 0


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
    vectors = {t: ControlVector.load(persona_vectors[t], config.vector) for t in traits}
    captured = vectors[traits[0]].layers
    layer = config.layer if config.layer is not None else captured[len(captured) // 2]
    units, layer_norm = ps.trait_basis(vectors, layer)
    s = ss.SearchSettings(
        layer=layer,
        layer_norm=layer_norm,
        alpha=config.alpha,
        bound=config.bound,
        sigma0=config.sigma0,
        generations=config.generations,
        popsize=config.popsize,
        seed=config.seed,
        max_new_tokens=config.max_new_tokens,
    )
    n_prompts = config.prompts
    keys = ps.searched_personas(context.partition_keys, persona_specs, config.personas)
    out = {pid: ps.not_searched(pid, keys) for pid in context.partition_keys if pid not in keys}
    if not keys:
        context.log.info("no evaluated persona in this run: nothing to search")
        return out
    targets = ps.targets(keys, persona_specs, topics, n_prompts, config.seed)
    backend, (judge_fn, signal) = (
        policy_backend(base_model),
        ps.fitness_judge(judge, config.judge_method, persona_specs),
    )
    found = ss.cmaes_search(
        backend,
        judge_fn,
        targets,
        units,
        s,
        lambda g, n: context.log.info(f"CMA-ES generation {g}/{n} done for {len(targets)} personas"),
    )
    contrast = ps.contrast_chats(keys, persona_specs, topics, n_prompts, config.seed)
    own = ps.persona_baselines(backend, contrast, s, context.log.warning)
    results = ps.heldout(backend, judge_fn, targets, units, s, found, own)
    files = {}
    for t in targets:
        r = found[t.persona_id]
        path = layout().cmaes_vector(t.persona_id)
        files[t.persona_id] = {"vector": ss.weighted_vector(r["best"][1], units, s)}
        out[t.persona_id] = {
            "persona_id": t.persona_id,
            "searched": True,
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
    vec.save_tensor_files(layout().cmaes_steering, files)  # every persona of this run swapped in at once
    plots: dict[str, str] = {}
    done = ps.searched(out)
    context.add_output_metadata(_cmaes_meta(done, traits, s, plots) | {"not_searched": len(out) - len(done)})
    for r in done.values():
        r["plots"] = plots  # the convergence plot covers every persona of this run
    return out


def _cmaes_meta(out: dict, traits: list[str], s: ss.SearchSettings, plots: dict) -> dict:
    curves = {}
    for pid, r in out.items():
        curves[f"{pid} cma"] = ([h["generation"] for h in r["history"]], [h["best_so_far"] for h in r["history"]])
    rows = [{"persona": pid, **r["heldout"]} for pid, r in out.items()]
    weights = [{"persona": pid, **r["weights"]} for pid, r in out.items()]
    wins, beats_start = ps.wins(out)
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
            plots=plots,
        ),
    }
