"""Representations group: role transcripts, trait responses, activations across checkpoints,
the persona space / Assistant Axis, persona vectors and how fine-tuning moved along them."""

import dagster as dg
import torch

from persona_pipeline import activations as act
from persona_pipeline import transcripts as tr
from persona_pipeline import vectors as vec
from persona_pipeline.backends import BackendSpec, SamplingParams, make_backend
from persona_pipeline.contracts import RoleSet, Trait
from persona_pipeline.defs.assets._common import (
    ALL,
    GPU,
    SINGLE_RUN,
    checkpoint_partitions,
    extra_checkpoints,
    md_table,
    png_meta,
    role_partitions,
    trait_partitions,
)
from persona_pipeline.defs.resources import ModelResource
from persona_pipeline.judging import JudgeItem, choose
from persona_pipeline.judging.base import values
from persona_pipeline.judging.roles import score_roles
from persona_pipeline.loaders import load_coherence_prompt
from persona_pipeline.plots import bar_plot, heatmap, line_plot, scatter_plot
from persona_pipeline.settings import data_root, home, profile

GROUP = "representations"


def _pick(value, name: str):
    return value if value is not None else getattr(profile(), name)


class TranscriptConfig(dg.Config):
    """None → the active profile. Transcripts come from one model and are reused for every checkpoint."""

    system_prompts: int | None = None
    questions: int | None = None
    rollouts: int | None = None
    max_new_tokens: int | None = None
    temperature: float = 0.8
    judge_method: str = "auto"  # auto: embedding role judge with a local judge model, logprob with an endpoint
    chunk: int = 64  # rollouts per batched call; each finished chunk is checkpointed
    seed: int = 0


def _generator(base_model: dict):
    return make_backend(BackendSpec(model=base_model["path"]), home())


def _progress(context, what: str):
    return lambda done, total: context.log.info(f"{what}: {done}/{total} generated")


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
    sizes = [
        _pick(config.system_prompts, "role_system_prompts"),
        _pick(config.questions, "role_questions"),
        _pick(config.rollouts, "role_rollouts"),
    ]
    rows = [row for key in context.partition_keys for row in tr.role_rows(roles[key], role_specs["questions"], *sizes)]
    params = SamplingParams(
        max_new_tokens=_pick(config.max_new_tokens, "role_max_new_tokens"),
        temperature=config.temperature,
        seed=config.seed,
    )
    work = tr.ResumableRows(
        home() / "work" / "role_transcripts", tr.fingerprint(rows, params, base_model["path"]), tr.ROLE_KEY
    )
    rows = tr.generate_rows(_generator(base_model), rows, params, work, config.chunk, _progress(context, "rollouts"))
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
                        "mean_score": _mean([r["score"] for r in v]),
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


def _mean(xs) -> float | None:
    vals = [x for x in xs if x is not None]
    return round(sum(vals) / len(vals), 3) if vals else None


class TraitResponseConfig(dg.Config):
    instruction_pairs: int | None = None
    questions: int | None = None
    samples: int | None = None
    max_new_tokens: int | None = None
    temperature: float = 0.8
    judge_method: str = "auto"  # auto: embedding judge with a local judge model, logprob judge with an endpoint
    seed: int = 0


def score_answers(rows: list[dict], trait: Trait, judge: ModelResource, choice: str, backend) -> str:
    """Add ``trait_score`` and ``coherence`` (0–100, None where the judge failed) in place; returns
    the trait judge's method. Both are ``filter`` judges chosen by ``judging.choose``: for the
    small local judge the trait score is MiniLM similarity to the trait's instructions and
    coherence the local model's own likelihood of the answer; with an endpoint, the LLM prompts.
    """
    items = [JudgeItem("", [{"role": "user", "content": r["question"]}], r["response"]) for r in rows]
    trait_judge = choose.trait_judge(judge, trait, choice, backend)
    prompt = None if hasattr(backend, "tok") else load_coherence_prompt(data_root() / "traits")
    coherence = choose.coherence_judge(backend, prompt)
    for r, t, c in zip(rows, values(trait_judge.score(items), 0, 100), values(coherence.score(items), 0, 100)):
        r["trait_score"], r["coherence"] = t, c
    return choose.method("filter", judge, choice)


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
    sizes = [
        _pick(config.instruction_pairs, "trait_instruction_pairs"),
        _pick(config.questions, "trait_questions"),
        _pick(config.samples, "trait_samples"),
    ]
    rows = [row for key in context.partition_keys for row in tr.trait_rows(traits[key], *sizes)]
    params = SamplingParams(
        max_new_tokens=_pick(config.max_new_tokens, "trait_max_new_tokens"),
        temperature=config.temperature,
        seed=config.seed,
    )
    work = tr.ResumableRows(
        home() / "work" / "trait_responses", tr.fingerprint(rows, params, base_model["path"]), tr.TRAIT_KEY
    )
    rows = tr.generate_rows(_generator(base_model), rows, params, work, on_chunk=_progress(context, "answers"))
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
                f"trait {t['trait']}: positive answers score {t['pos_trait']} ≤ negative {t['neg_trait']}; "
                "its persona vector will be flagged unreliable"
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


def trait_separation(rows: list[dict]) -> dict:
    """Mean trait score of positive vs negative answers; ``separates`` only when positive scores higher."""
    pos = _mean([r["trait_score"] for r in rows if r["polarity"] == "pos"])
    neg = _mean([r["trait_score"] for r in rows if r["polarity"] == "neg"])
    return {
        "pos_trait": pos,
        "neg_trait": neg,
        "coherence": _mean([r["coherence"] for r in rows]),
        "separates": pos is not None and neg is not None and pos > neg,
    }


class ActivationsConfig(dg.Config):
    layers: str = "all"  # all | middle | comma-separated layer indices
    response_agg: str = "mean"  # mean | last (none keeps every token: use the core API for that)
    batch_size: int = 16


def _checkpoint(key: str, base_model: dict, sft_adapter: dict, rl_adapter: dict) -> tuple[str, str | None]:
    adapters = {"base": None, "sft": sft_adapter["path"], "rl": rl_adapter["path"]}
    if key in adapters:
        return base_model["path"], adapters[key]
    return extra_checkpoints()[key], None


def _layers(spec: str, n: int) -> list[int]:
    if spec == "all":
        return list(range(n))
    if spec == "middle":
        return [n // 2]
    try:
        layers = [int(x) for x in spec.split(",")]
    except ValueError:
        raise ValueError(f"config layers={spec!r}: use all, middle or comma-separated integers") from None
    if any(not 0 <= x < n for x in layers):
        raise ValueError(f"config layers={spec!r}: the model has layers 0..{n - 1}")
    return layers


def activation_items(role_rows: list[dict], trait_rows: list[dict]) -> tuple[list[act.Item], list[dict]]:
    """The same texts for every checkpoint: role rollouts then trait answers, with a joinable index."""
    items, index = [], []
    for r in role_rows:
        items.append(
            act.Item(
                [{"role": "system", "content": r["system_prompt"]}, {"role": "user", "content": r["question"]}],
                r["response"],
            )
        )
        index.append(
            {
                "source": "role",
                "name": r["role"],
                "polarity": "",
                "prompt_idx": r["system_prompt_idx"],
                "question_idx": r["question_idx"],
                "sample_idx": r["rollout_idx"],
                "score": r.get("score"),
            }
        )
    for r in trait_rows:
        items.append(
            act.Item(
                [{"role": "system", "content": r["system_prompt"]}, {"role": "user", "content": r["question"]}],
                r["response"],
            )
        )
        index.append(
            {
                "source": "trait",
                "name": r["trait"],
                "polarity": r["polarity"],
                "prompt_idx": r["instruction_idx"],
                "question_idx": r["question_idx"],
                "sample_idx": r["sample_idx"],
                "score": r.get("trait_score"),
            }
        )
    return items, index


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
    from persona_pipeline.modelio import load_model

    items, index = activation_items(role_transcripts, trait_responses)
    out = {}
    for key in context.partition_keys:
        model, tok = load_model(*_checkpoint(key, base_model, sft_adapter, rl_adapter))
        layers = _layers(config.layers, len(act.decoder_layers(model)))
        tensors = act.extract(model, tok, items, layers, config.batch_size, config.response_agg)
        folder = home() / "activations" / key
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


def _at(manifests: dict, key: str) -> tuple[dict, list[dict], dict]:
    if key not in manifests:
        raise ValueError(f"activations[{key}] is not materialised; materialise that checkpoint first")
    tensors, index = act.load(manifests[key]["path"])
    return tensors, index, manifests[key]


def _position(manifest: dict, layer: int | None) -> tuple[int, int]:
    """(layer index in the model, position in the stored tensor); default: the middle captured layer."""
    layers = manifest["layers"]
    layer = layers[len(layers) // 2] if layer is None else layer
    if layer not in layers:
        raise ValueError(f"config layer={layer}: activations hold layers {layers}")
    return layer, layers.index(layer)


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
    tensors, index, manifest = _at(activations, "base")
    layer, pos = _position(manifest, config.layer)
    roles = sorted({r["name"] for r in index if r["source"] == "role"})
    keep, fallback = vec.role_filter(index, config.min_role_score)
    means = torch.stack([vec.group_mean(tensors["response_avg"][:, pos], index, "role", r, keep) for r in roles])
    comps, ratio, mu, sigma = vec.pca(means, config.components)
    axes = {
        layer_i: vec.assistant_axis(*vec.default_vs_roles(tensors["response_avg"][:, i], index, roles, keep))
        for i, layer_i in enumerate(manifest["layers"])
    }
    axis = axes[layer]
    coords = ((means - mu) / sigma) @ comps.T
    d = roles.index("default")
    if vec.orient_pc1(comps, coords[d], torch.cat([coords[:d], coords[d + 1 :]])):
        coords[:, 0] = -coords[:, 0]
    pc1_cos = float(torch.nn.functional.cosine_similarity(axis / sigma, comps[0], dim=0))
    movement = vec.checkpoint_projections(activations, roles, pos, axis, comps, mu, sigma, keep)
    axis_path = home() / "persona_space" / "assistant_axis.safetensors"
    vec.save_tensors(
        axis_path,
        {
            "axis": torch.stack([axes[layer_i] for layer_i in manifest["layers"]]),
            "pcs": comps,
            "mu": mu,
            "sigma": sigma,
        },
    )
    points = [(float(coords[i, 0]), float(coords[i, 1]), r) for i, r in enumerate(roles)]
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
    tensors, index, manifest = _at(activations, config.checkpoint)
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
        path = home() / "persona_vectors" / f"{key}.safetensors"
        files[key] = found
        norms = [round(float(x), 3) for x in found["mean_diff_response_avg"].norm(dim=-1)]
        sep = trait_separation([r for r in trait_responses if r["trait"] == key])
        issues = vector_issues(sep, stats)
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
    vec.save_tensor_files(home() / "persona_vectors", files)  # every trait of this run swapped in at once
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


def vector_issues(separation: dict, pair_stats: dict) -> list[str]:
    """Why a persona vector should not be trusted: the judge cannot tell its positive answers from its
    negative ones, or too few pairs passed the filter so every pair was used."""
    issues = []
    if not separation["separates"]:
        issues.append(
            f"positive answers do not score above negative ones ({separation['pos_trait']} vs {separation['neg_trait']})"
        )
    if pair_stats.get("fallback"):
        issues.append(f"filter kept {pair_stats['kept']}/{pair_stats['pairs']} pairs; fell back to all pairs")
    return issues


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
    layer, pos = _position(persona_vectors[traits[0]], config.layer)
    stack = torch.stack([vec.load_tensors(persona_vectors[t]["path"])["mean_diff_response_avg"][pos] for t in traits])
    cos = vec.cosine_matrix(stack)
    span = {t: round(vec.span_share(stack[i], torch.cat([stack[:i], stack[i + 1 :]])), 3) for i, t in enumerate(traits)}
    context.add_output_metadata(
        {
            "layer": layer,
            "span_share": md_table([{"trait": t, "share_in_span_of_others": s} for t, s in span.items()]),
            **png_meta(
                heatmap(cos.tolist(), traits, f"Persona vector cosine (layer {layer})"),
                "trait_cosine",
                "cosine_heatmap",
            ),
        }
    )
    issues = {t: persona_vectors[t].get("issues", []) for t in traits}
    return {"layer": layer, "traits": traits, "cosine": cos.tolist(), "span_share": span, "vector_issues": issues}


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch"},
    ins={"activations": dg.AssetIn(partition_mapping=ALL), "persona_vectors": dg.AssetIn(partition_mapping=ALL)},
    description="How far each checkpoint moved along each persona vector vs base, on the same texts (fine-tuning shift).",
)
def finetuning_shift(context: dg.AssetExecutionContext, activations: dict, persona_vectors: dict) -> list[dict]:
    base, _, manifest = _at(activations, "base")
    rows = []
    for key in sorted(activations):
        tensors, _, _ = _at(activations, key)
        for trait, v in sorted(persona_vectors.items()):
            layer, pos = _position(manifest, None)
            vector = vec.load_tensors(v["path"])["mean_diff_response_avg"][pos]
            shift = vec.project(tensors["response_avg"][:, pos], vector) - vec.project(
                base["response_avg"][:, pos], vector
            )
            rows.append(
                {
                    "checkpoint": key,
                    "trait": trait,
                    "layer": layer,
                    "mean_shift": round(float(shift.mean()), 4),
                    "std_shift": round(float(shift.std()), 4) if len(shift) > 1 else 0.0,
                }
            )
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
                bar_plot(traits, series, "Projection shift vs base", "Δ projection"), "finetuning_shift", "shift_plot"
            ),
        }
    )
    return rows
