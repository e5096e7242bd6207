"""Representations group: role transcripts, trait responses, activations across checkpoints,
the persona space / Assistant Axis, persona vectors and how fine-tuning moved along them."""

from typing import Literal

import dagster as dg
import torch

from persona_pipeline import activations as act
from persona_pipeline import transcripts as tr
from persona_pipeline import vectors as vec
from persona_pipeline.backends import SamplingParams
from persona_pipeline.contracts import RoleSet, Trait
from persona_pipeline.control_vector import ControlVector
from persona_pipeline.defs.assets._common import (
    ALL,
    GPU,
    SINGLE_RUN,
    TABLE_PLOTS,
    FilterJudge,
    ProfileConfig,
    checkpoint_partitions,
    extra_checkpoints,
    md_table,
    png_meta,
    role_partitions,
    trait_partitions,
)
from persona_pipeline.defs.resources import ModelResource
from persona_pipeline.judging import choose
from persona_pipeline.judging.roles import score_roles
from persona_pipeline.layout import layout
from persona_pipeline.plots import bar_plot, heatmap, line_plot, scatter_plot
from persona_pipeline.policy import policy_backend
from persona_pipeline.transcripts import mean_score, score_answers, trait_separation

GROUP = "representations"


class TranscriptConfig(ProfileConfig):
    """None → the active profile. Transcripts come from one model and are reused for every checkpoint."""

    PROFILE = {
        "system_prompts": "role_system_prompts",
        "questions": "role_questions",
        "rollouts": "role_rollouts",
        "max_new_tokens": "role_max_new_tokens",
    }

    system_prompts: int | None = None
    questions: int | None = None
    rollouts: int | None = None
    max_new_tokens: int | None = None
    temperature: float = 0.8
    judge_method: FilterJudge = "auto"  # auto: embedding role judge with a local judge model, logprob with an endpoint
    chunk: int = 64  # rollouts per batched call; each finished chunk is checkpointed
    seed: int = 0


def _generate(context, asset: str, what: str, rows: list, params: SamplingParams, base_model: dict, key, **kw) -> list:
    """Every row's ``response`` from the policy base, resumable from ``work/<asset>`` (see ``transcripts``)."""
    work = tr.ResumableRows(layout().work(asset), tr.fingerprint(rows, params, base_model["path"]), key)
    progress = lambda done, total: context.log.info(f"{what}: {done}/{total} generated")
    return tr.generate_rows(policy_backend(base_model), rows, params, work, on_chunk=progress, **kw)


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "parquet"},
    partitions_def=role_partitions,
    backfill_policy=SINGLE_RUN,
    **GPU,
    description="Role-play rollouts (system prompt × question × rollout) per role, judged 0–3 for role adherence; resumable.",
)
def role_transcripts(
    context: dg.AssetExecutionContext,
    config: TranscriptConfig,
    role_specs: dict,
    base_model: dict,
    judge: ModelResource,
) -> dict:
    roles = {r.role: r for r in RoleSet(**role_specs).roles}
    sizes = [config.system_prompts, config.questions, config.rollouts]
    rows = [row for key in context.partition_keys for row in tr.role_rows(roles[key], role_specs["questions"], *sizes)]
    params = SamplingParams(
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        seed=config.seed,
    )
    rows = _generate(context, "role_transcripts", "rollouts", rows, params, base_model, tr.ROLE_KEY, chunk=config.chunk)
    method = choose.role_method(judge, config.judge_method)
    backend = judge.backend() if method == "logprob" else None  # the MiniLM role judge needs no model
    for row, score in zip(rows, score_roles(backend, rows, roles, method)):
        row["score"] = score
        row.pop("chat")
    by_role = {k: [r for r in rows if r["role"] == k] for k in context.partition_keys}
    context.add_output_metadata(
        {
            "rollouts": len(rows),
            "role_judge": method,
            "per_role": md_table(
                [
                    {
                        "role": k,
                        "rollouts": len(v),
                        "mean_score": mean_score([r["score"] for r in v]),
                        "fully_in_role": sum((r["score"] or 0) >= 2.5 for r in v),
                    }
                    for k, v in by_role.items()
                ]
            ),
            "sample": md_table(
                [
                    {
                        "role": r["role"],
                        "question": r["question"][:60],
                        "response": r["response"][:140],
                        "score": r["score"],
                    }
                    for r in rows[:: max(1, len(rows) // 8)]
                ]
            ),
        }
    )
    return by_role


class TraitResponseConfig(ProfileConfig):
    PROFILE = {
        "instruction_pairs": "trait_instruction_pairs",
        "questions": "trait_questions",
        "samples": "trait_samples",
        "max_new_tokens": "trait_max_new_tokens",
    }

    instruction_pairs: int | None = None
    questions: int | None = None
    samples: int | None = None
    max_new_tokens: int | None = None
    temperature: float = 0.8
    judge_method: FilterJudge = "auto"  # auto: embedding judge with a local judge model, logprob judge with an endpoint
    seed: int = 0


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "parquet"},
    partitions_def=trait_partitions,
    backfill_policy=SINGLE_RUN,
    **GPU,
    description="Answers under positive vs negative trait instructions, scored 0–100 for trait expression and coherence.",
)
def trait_responses(
    context: dg.AssetExecutionContext,
    config: TraitResponseConfig,
    trait_specs: list[dict],
    base_model: dict,
    judge: ModelResource,
) -> dict:
    traits = {t["trait"]: Trait(**t) for t in trait_specs}
    sizes = [config.instruction_pairs, config.questions, config.samples]
    rows = [row for key in context.partition_keys for row in tr.trait_rows(traits[key], *sizes)]
    params = SamplingParams(
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        seed=config.seed,
    )
    rows = _generate(context, "trait_responses", "answers", rows, params, base_model, tr.TRAIT_KEY)
    judge_backend, method = judge.backend(), "n/a"
    out = {}
    for key in context.partition_keys:
        out[key] = [r for r in rows if r["trait"] == key]
        method = score_answers(out[key], traits[key], judge, config.judge_method, judge_backend)
    for r in rows:
        r.pop("chat")
    table = [{"trait": k, **trait_separation(v)} for k, v in out.items()]
    for t in table:
        if not t["separates"]:
            context.log.warning(
                f"trait {t['trait']}: positive answers do not reliably score above negative ones ({t['pos_trait']} "
                f"vs {t['neg_trait']}, paired Δ 95% CI {t['diff_ci']}); its persona vector will be flagged unreliable"
            )
    context.add_output_metadata(
        {
            "answers": len(rows),
            "trait_judge": method,
            "traits_not_separated": ", ".join(t["trait"] for t in table if not t["separates"]) or "none",
            "per_trait": md_table(table),
        }
    )
    return out


class ActivationsConfig(dg.Config):
    layers: str = "all"  # all | middle | comma-separated layer indices
    response_agg: Literal["mean", "last"] = "mean"  # none keeps every token: use the core API for that
    batch_size: int = 16


def _checkpoint(key: str, base_model: dict, sft_adapter: dict, rl_adapter: dict) -> tuple[str, str | None]:
    adapters = {"base": None, "sft": sft_adapter["path"], "rl": rl_adapter["path"]}
    if key in adapters:
        return base_model["path"], adapters[key]
    return extra_checkpoints()[key], None


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "safetensors"},
    partitions_def=checkpoint_partitions,
    backfill_policy=SINGLE_RUN,
    **GPU,
    ins={"role_transcripts": dg.AssetIn(partition_mapping=ALL), "trait_responses": dg.AssetIn(partition_mapping=ALL)},
    description="Per-layer activations (response mean/last, prompt mean, last prompt token) of the same texts under "
    "each checkpoint, all layers in one forward pass; safetensors + Parquet index.",
)
def activations(
    context: dg.AssetExecutionContext,
    config: ActivationsConfig,
    role_transcripts: list[dict],
    trait_responses: list[dict],
    base_model: dict,
    sft_adapter: dict,
    rl_adapter: dict,
) -> dict:
    from persona_pipeline.modelio import inference_options, load_model

    items, index = act.activation_items(role_transcripts, trait_responses)
    out = {}
    for key in context.partition_keys:
        base, adapter = _checkpoint(key, base_model, sft_adapter, rl_adapter)
        model, tok = load_model(base, adapter, opts=inference_options(exact=True))  # checkpoints compared: one dtype
        layers = act.parse_layers(config.layers, len(act.decoder_layers(model)))
        tensors = act.extract(model, tok, items, layers, config.batch_size, config.response_agg)
        folder = layout().activations(key)
        act.save(folder, tensors, index)
        norms = act.layer_norms(tensors["response_avg"])
        out[key] = {
            "checkpoint": key,
            "path": str(folder),
            "layers": layers,
            "hidden": tensors["response_avg"].shape[-1],
            "items": len(items),
            "views": list(tensors),
            "layer_norms": norms,
            "response_agg": config.response_agg,
        }
        context.log.info(f"{key}: {len(items)} items × {len(layers)} layers")
    context.add_output_metadata(
        {
            "items": len(items),
            "checkpoints": ", ".join(out),
            **png_meta(
                line_plot(
                    {k: (v["layers"], v["layer_norms"]) for k, v in out.items()},
                    "Residual norm by layer",
                    "layer",
                    "mean ‖h‖",
                ),
                "activation_norms",
                "norms_by_layer",
            ),
        }
    )
    return out


class SpaceConfig(dg.Config):
    layer: int | None = None  # default: the middle captured layer
    min_role_score: float = 2.5  # keep fully-expressed rollouts (0–3 judge); roles with none fall back to all
    components: int = 3


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "safetensors"},
    ins={"activations": dg.AssetIn(partition_mapping=ALL), "role_transcripts": dg.AssetIn(partition_mapping=ALL)},
    description="PCA of standardised per-role mean activations; the Assistant Axis (default − roles), its cosine "
    "with PC1, and where every checkpoint sits on the axis and the top PCs.",
)
def persona_space(
    context: dg.AssetExecutionContext, config: SpaceConfig, activations: dict, role_transcripts: list[dict]
) -> dict:
    tensors, index, manifest = act.checkpoint(activations, "base")
    layer, pos = act.layer_position(manifest["layers"], config.layer)
    space = vec.role_space(tensors["response_avg"], index, pos, config.min_role_score, config.components)
    roles, keep, fallback, coords, pc1_cos = (space[k] for k in ("roles", "keep", "fallback", "coords", "pc1_cos"))
    comps, ratio, mu, sigma, axis = (space[k] for k in ("pcs", "ratio", "mu", "sigma", "axis"))
    movement = vec.checkpoint_projections(activations, roles, pos, axis, comps, mu, sigma, keep)
    axis_path = layout().assistant_axis
    vec.save_tensors(
        axis_path,
        {
            "axis": space["axes"],
            "pcs": comps,
            "mu": mu,
            "sigma": sigma,
        },
    )
    points = [(float(coords[i, 0]), float(coords[i, 1]), r) for i, r in enumerate(roles)]
    plots: dict[str, str] = {}
    context.add_output_metadata(
        {
            "layer": layer,
            "roles": len(roles),
            "explained_variance": ", ".join(f"{x:.3f}" for x in ratio.tolist()),
            "axis_cos_pc1": round(pc1_cos, 3),
            "roles_unfiltered": ", ".join(fallback) or "none",
            "movement": md_table(movement),
            **png_meta(
                scatter_plot(points, f"Persona space (layer {layer})", "PC1", "PC2", highlight="default"),
                "persona_space_pca",
                "pca_scatter",
                plots=plots,
            ),
            **png_meta(
                bar_plot(
                    [m["checkpoint"] for m in movement],
                    {
                        "default": [m["default_on_axis"] for m in movement],
                        "roles": [m["roles_on_axis"] for m in movement],
                    },
                    "Checkpoints along the Assistant Axis",
                    "projection",
                ),
                "persona_space_axis",
                "axis_movement",
                plots=plots,
            ),
        }
    )
    return {
        "layer": layer,
        "layers": manifest["layers"],
        "roles": roles,
        "explained_variance": ratio.tolist(),
        "axis_cos_pc1": pc1_cos,
        "axis_path": str(axis_path),
        "movement": movement,
        "coords": {r: coords[i].tolist() for i, r in enumerate(roles)},
        "roles_unfiltered": fallback,
        "role_rollouts": {r: sum(x["source"] == "role" and x["name"] == r for x in index) for r in roles},
        "plots": plots,
    }


class VectorConfig(dg.Config):
    threshold: float = 50.0
    coherence: float = 50.0
    min_pairs: int = 2  # fewer surviving pairs → fall back to every pair (flagged in metadata)
    checkpoint: str = "base"


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "safetensors"},
    partitions_def=trait_partitions,
    backfill_policy=SINGLE_RUN,
    ins={"activations": dg.AssetIn(partition_mapping=ALL)},
    description="Persona vectors per trait: judge-filtered mean differences [layers × hidden] for response-avg, "
    "prompt-avg and last prompt token, plus an SVD direction aligned with the mean difference.",
)
def persona_vectors(
    context: dg.AssetExecutionContext, config: VectorConfig, activations: dict, trait_responses: list[dict]
) -> dict:
    tensors, index, manifest = act.checkpoint(activations, config.checkpoint)
    out, table, files = {}, [], {}
    for key in context.partition_keys:
        pos, neg, stats = vec.trait_pairs(
            index,
            key,
            config.threshold,
            config.coherence,
            config.min_pairs,
            {
                (r["instruction_idx"], r["question_idx"], r["sample_idx"], r["polarity"]): r
                for r in trait_responses
                if r["trait"] == key
            },
        )
        found = {f"mean_diff_{view}": vec.mean_diff(tensors[view][pos], tensors[view][neg]) for view in act.VIEWS}
        found["svd_response_avg"] = vec.svd_direction(tensors["response_avg"][pos], tensors["response_avg"][neg])
        path = layout().persona_vector(key)
        files[key] = found
        norms = [round(float(x), 3) for x in found["mean_diff_response_avg"].norm(dim=-1)]
        sep = trait_separation([r for r in trait_responses if r["trait"] == key])
        issues = vec.vector_issues(sep, stats)
        out[key] = {
            "trait": key,
            "path": str(path),
            "layers": manifest["layers"],
            "norms": norms,
            "layer_norms": manifest["layer_norms"],
            **stats,
            "pos_trait": sep["pos_trait"],
            "neg_trait": sep["neg_trait"],
            "reliable": not issues,
            "issues": issues,
        }
        table.append(
            {
                "trait": key,
                **stats,
                "reliable": not issues,
                "peak_layer": manifest["layers"][max(range(len(norms)), key=norms.__getitem__)],
            }
        )
    vec.save_tensor_files(layout().persona_vectors, files)  # every trait of this run swapped in at once
    context.add_output_metadata(
        {
            "unreliable": ", ".join(f"{k} ({'; '.join(v['issues'])})" for k, v in out.items() if v["issues"]) or "none",
            "vectors": md_table(table),
            **png_meta(
                line_plot(
                    {k: (v["layers"], v["norms"]) for k, v in out.items()},
                    "Mean-difference norm by layer",
                    "layer",
                    "‖v‖",
                ),
                "persona_vector_norms",
                "norms_by_layer",
            ),
        }
    )
    return out


class InterferenceConfig(dg.Config):
    layer: int | None = None


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch"},
    ins={"persona_vectors": dg.AssetIn(partition_mapping=ALL)},
    description="Trait × trait cosine similarity of persona vectors (multi-persona interference) and how much of "
    "each trait lies in the span of the others (linearity).",
)
def trait_interference(context: dg.AssetExecutionContext, config: InterferenceConfig, persona_vectors: dict) -> dict:
    traits = sorted(persona_vectors)
    vectors = {t: ControlVector.load(persona_vectors[t]) for t in traits}
    layer, _ = act.layer_position(vectors[traits[0]].layers, config.layer)
    stack = torch.stack([vectors[t].direction(layer) for t in traits])
    cos = vec.cosine_matrix(stack)
    span = {t: round(vec.span_share(stack[i], torch.cat([stack[:i], stack[i + 1 :]])), 3) for i, t in enumerate(traits)}
    plots: dict[str, str] = {}
    context.add_output_metadata(
        {
            "layer": layer,
            "span_share": md_table([{"trait": t, "share_in_span_of_others": s} for t, s in span.items()]),
            **png_meta(
                heatmap(cos.tolist(), traits, f"Persona vector cosine (layer {layer})"),
                "trait_cosine",
                "cosine_heatmap",
                plots=plots,
            ),
        }
    )
    issues = {t: persona_vectors[t].get("issues", []) for t in traits}
    return {
        "layer": layer,
        "traits": traits,
        "cosine": cos.tolist(),
        "span_share": span,
        "vector_issues": issues,
        "plots": plots,
    }


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch"},
    ins={"activations": dg.AssetIn(partition_mapping=ALL), "persona_vectors": dg.AssetIn(partition_mapping=ALL)},
    description="How far each checkpoint moved along each persona vector vs base, on the same texts (fine-tuning shift).",
)
def finetuning_shift(context: dg.AssetExecutionContext, activations: dict, persona_vectors: dict) -> list[dict]:
    vectors = {t: ControlVector.load(v) for t, v in persona_vectors.items()}
    rows = vec.finetuning_shift(activations, vectors)
    traits = sorted(persona_vectors)
    series = {
        c: [next(r["mean_shift"] for r in rows if r["checkpoint"] == c and r["trait"] == t) for t in traits]
        for c in sorted(activations)
        if c != "base"
    }
    context.add_output_metadata(
        {
            "shift": md_table(rows),
            **png_meta(
                bar_plot(traits, series, "Projection shift vs base", "Δ projection"),
                TABLE_PLOTS["finetuning_shift"],
                "shift_plot",
            ),
        }
    )
    return rows
