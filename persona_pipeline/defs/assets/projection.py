"""Representations group: projection onto persona vectors as a predictor of the judged trait score,
and as a screen of the SFT set (projection difference vs the base model's own answers)."""

from typing import Literal

import dagster as dg

from persona_pipeline import activations as act
from persona_pipeline import projection_screen as ps
from persona_pipeline.backends import SamplingParams
from persona_pipeline.control_vector import ControlVector
from persona_pipeline.defs.assets._common import ALL, GPU, md_table, png_meta
from persona_pipeline.defs.assets.representations import GROUP
from persona_pipeline.plots import line_plot
from persona_pipeline.policy import policy_backend


class ProjectionScoreConfig(dg.Config):
    checkpoint: str = "base"  # the model that wrote and was read on the trait answers
    vector: str = "mean_diff_response_avg"
    layer: int | None = None  # the per-answer table's layer; default: the middle captured layer
    plot_view: str = "prompt_last"  # the paper's monitor: the last prompt token, before any answer is written
    min_responses: int = ps.MIN_RESPONSES
    seed: int = 0


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "json"},
    ins={"activations": dg.AssetIn(partition_mapping=ALL), "persona_vectors": dg.AssetIn(partition_mapping=ALL)},
    description="Does a trait answer's projection onto the trait's persona vector predict its judged trait score? "
    "Pearson r with a bootstrap 95 % CI per trait × view × layer (stored vector, and a vector held out by "
    "question), plus the per-answer projection table. No new forward pass: it reads the stored activations.",
)
def projection_predicts_score(
    context: dg.AssetExecutionContext, config: ProjectionScoreConfig, activations: dict, persona_vectors: dict
) -> dict:
    tensors, index, manifest = act.checkpoint(activations, config.checkpoint)
    layer, _ = act.layer_position(manifest["layers"], config.layer)
    correlations, responses, lines, series = [], [], [], {}
    for trait in sorted(persona_vectors):
        cv = ControlVector.load(persona_vectors[trait], config.vector)
        tp = ps.trait_projections(tensors, index, manifest["layers"], trait, cv)
        rows = ps.correlations(tp, config.min_responses, config.seed)
        correlations += rows
        responses += ps.response_table(tp, layer)
        lines.append(ps.headline(rows, trait, layer))
        at = [r for r in rows if r["view"] == config.plot_view and r["r"] is not None]
        series[trait] = ([r["layer"] for r in at], [r["r"] for r in at])
    plots: dict[str, str] = {}
    context.add_output_metadata(
        {
            "checkpoint": config.checkpoint,
            "layer": layer,
            "answers": len(responses),
            "note": "the stored vector was extracted from these answers (in-sample); heldout columns use a vector "
            "built from the trait's other questions only",
            "by_trait": md_table(lines),
            "responses": md_table(responses, limit=16),
            **png_meta(
                line_plot(series, f"r(projection, judged trait score) by layer — {config.plot_view}", "layer", "r"),
                "projection_score_r",
                "r_by_layer",
                plots=plots,
            ),
        }
    )
    return {
        "checkpoint": config.checkpoint,
        "layer": layer,
        "vector": config.vector,
        "by_trait": lines,
        "correlations": correlations,
        "responses": responses,
        "plots": plots,
    }


class ScreenConfig(dg.Config):
    """Kept small on purpose (a few short generations): the same size in every profile."""

    samples: int = 4  # seeded sample of sft_pairs; 0 = every pair. ~5 s a pair on 2 CPU cores (long persona prompts)
    max_new_tokens: int = 32  # the base model's own answer to each prompt
    group_by: Literal["source", "persona_id"] = "source"  # what counts as one dataset for the per-dataset flag
    layer: int | None = None  # default: the middle captured layer
    threshold: float = 0.5  # per-sample flag: difference > this share of the trait's pos−neg gap
    dataset_threshold: float = 0.2  # per-dataset flag: mean difference above this
    seed: int = 0


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "json"},
    **GPU,
    ins={"persona_vectors": dg.AssetIn(partition_mapping=ALL)},
    description="Projection-difference screen of the SFT set (persona vectors §5): per pair, (dataset answer − the "
    "base model's own answer) projected on each trait vector, in units of the trait's pos−neg gap; per-sample "
    "flags above a threshold and per-dataset (data source, or persona) means with CI and flags. A small seeded sample "
    "of pairs (config samples).",
)
def sft_pairs_screen(
    context: dg.AssetExecutionContext,
    config: ScreenConfig,
    sft_pairs: list[dict],
    persona_vectors: dict,
    base_model: dict,
) -> dict:
    vectors = {t: ControlVector.load(persona_vectors[t]) for t in sorted(persona_vectors)}
    layer = ps.screen_layer(vectors, config.layer)
    pairs = ps.sample_pairs(sft_pairs, config.samples, config.seed)
    params = SamplingParams(max_new_tokens=config.max_new_tokens, temperature=0, seed=config.seed)
    rows = ps.screen(policy_backend(base_model), pairs, vectors, layer, params, config.threshold, config.group_by)
    datasets = ps.dataset_flags(rows, list(vectors), config.dataset_threshold, config.seed)
    flagged = [r for r in rows if r["flagged_traits"]]
    flagged_sets = [d for d in datasets if d["flagged"]]
    context.add_output_metadata(
        {
            "layer": layer,
            "pairs": f"{len(rows)} of {len(sft_pairs)}",
            "datasets_are": config.group_by,
            "flagged_samples": len(flagged),
            "flagged_datasets": ", ".join(f"{d['dataset']}:{d['trait']}" for d in flagged_sets) or "none",
            "datasets": md_table(datasets, limit=60),
            "samples": md_table(
                [{**r, "response": r["response"][:100], "base_response": r["base_response"][:100]} for r in rows],
                limit=16,
            ),
        }
    )
    return {
        "layer": layer,
        "threshold": config.threshold,
        "dataset_threshold": config.dataset_threshold,
        "group_by": config.group_by,
        "pairs_total": len(sft_pairs),
        "samples": rows,
        "datasets": datasets,
    }


@dg.asset_check(
    asset="sft_pairs_screen",
    description="No screened SFT pair or dataset sits far along a trait vector relative to the base model's own "
    "answers (warns, naming the flagged samples and datasets).",
)
def sft_pairs_not_trait_shifting(sft_pairs_screen: dict) -> dg.AssetCheckResult:
    flagged = [r for r in sft_pairs_screen["samples"] if r["flagged_traits"]]
    sets = [d for d in sft_pairs_screen["datasets"] if d["flagged"]]
    lines = [f"- dataset {d['dataset']}: {d['trait']} mean {d['mean_diff']:+.2f}" for d in sets]
    lines += [f"- {r['id']}: {r['flagged_traits']}" for r in flagged]
    return dg.AssetCheckResult(
        passed=not flagged and not sets,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "samples": len(sft_pairs_screen["samples"]),
            "flagged_samples": len(flagged),
            "flagged_datasets": len(sets),
            "threshold": sft_pairs_screen["threshold"],
            "examples": dg.MetadataValue.md("\n".join(lines[:20]) or "nothing flagged"),
        },
    )


projection_checks = [sft_pairs_not_trait_shifting]
