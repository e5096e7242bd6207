"""Evaluation group, capability half: the shipped multiple-choice probe through lm-eval, per model.

Wiring only: the probe, lm-eval and the statistics live in ``persona_pipeline.capability``.
"""

from typing import ClassVar

import dagster as dg

from persona_pipeline import capability as cap
from persona_pipeline import trait_finetunes as tf
from persona_pipeline.defs.assets._common import ALL, GPU, ProfileConfig, md_table
from persona_pipeline.modelio import inference_options, load_model
from persona_pipeline.settings import data_root

GROUP = "evaluation"
PROBE = "capability"  # data_assets/capability/: probe.jsonl + the lm-eval task


class CapabilityConfig(ProfileConfig):
    """Which models take the probe; ``items`` defaults to the active profile's."""

    PROFILE: ClassVar[dict[str, str]] = {"items": "capability_items", "finetune_sets": "capability_finetune_sets"}

    items: int | None = None  # None → profile.capability_items (0: every shipped item)
    finetune_sets: list[str] | None = None  # trait fine-tune sets whose final LoRAs take the probe; [] → none
    steer_traits: list[str] | None = None  # None → the first trait with a persona vector; [] → no steered model
    steer_rel_coef: float = 0.2  # × the layer's typical residual norm (the informative range is ~0.05–0.3)
    steer_layer: int | None = None  # None → the middle captured layer
    vector: str = "mean_diff_response_avg"
    batch_size: int = 16
    max_drop: float = 0.05  # the check warns when a model loses more accuracy than this vs the base


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "lm-eval"},
    ins={"persona_vectors": dg.AssetIn(partition_mapping=ALL)},
    **GPU,
    description="Capability retention: the shipped multiple-choice probe (data_assets/capability, ≥ 5 domains) scored "
    "by EleutherAI lm-eval for base, SFT, RL, a steered base, the base capped on the Assistant Axis at each "
    "percentile floor of trait_finetunes and (per profile) the trait fine-tunes with and without preventative "
    "steering; accuracy per domain (Wilson CI) and the paired drop vs base.",
)
def capability_retention(
    context: dg.AssetExecutionContext,
    config: CapabilityConfig,
    base_model: dict,
    sft_adapter: dict,
    rl_adapter: dict,
    persona_vectors: dict,
    trait_finetunes: dict,
) -> dict:
    folder = data_root() / PROBE
    items = cap.select_items(cap.load_probe(folder / cap.ITEMS_FILE), config.items)
    base = base_model["path"]
    results: dict[str, cap.ProbeResult] = {}
    # the base, then the base steered along each chosen trait's vector
    model, tok = load_model(base, opts=inference_options(exact=True))  # compared with the adapters
    results["base"] = cap.run_probe(model, tok, items, folder, "base", config.batch_size)
    traits = config.steer_traits if config.steer_traits is not None else sorted(persona_vectors)[:1]
    for trait in traits:
        steer, layer = cap.vector_steer(
            persona_vectors[trait], config.vector, config.steer_rel_coef, config.steer_layer
        )
        label = f"steered:{trait}@L{layer}x{config.steer_rel_coef:g}"
        results[label] = cap.run_probe(model, tok, items, folder, label, config.batch_size, [steer])
    for c in trait_finetunes["caps"]:  # Assistant-Axis capping: is the capped model still as capable?
        label = tf.cap_label(c)
        results[label] = cap.run_probe(model, tok, items, folder, label, config.batch_size, tf.cap_steers(c))
    # trait fine-tunes (with / without preventative steering): one PEFT wrapper of the base, LoRAs switched in
    tuned = [t for t in trait_finetunes["trained"] if t["set"] in config.finetune_sets and "@" not in t["checkpoint"]]
    for t, peft in tf.with_adapters(model, tuned):
        label = f"finetune:{t['trait']}:{t['checkpoint']}"
        results[label] = cap.run_probe(peft, tok, items, folder, label, config.batch_size)
    for label, adapter in {"sft": sft_adapter["path"], "rl": rl_adapter["path"]}.items():
        model, tok = load_model(base, adapter, opts=inference_options(exact=True))
        results[label] = cap.run_probe(model, tok, items, folder, label, config.batch_size)
    for label, r in results.items():
        context.log.info(f"capability {label}: {r.accuracy()['accuracy']:.3f} on {r.n} items ({r.seconds:.1f} s)")
    summary = cap.summarise(results, "base")
    rows = [cap.table_row(k, v) for k, v in summary["models"].items()]
    domain_rows = [
        {"model": k, "domain": d, **a} for k, v in summary["models"].items() for d, a in v["domains"].items()
    ]
    context.add_output_metadata(
        {
            "items": len(items),
            "domains": len({it.domain for it in items}),
            "chance": round(summary["chance"], 3),
            "accuracy": md_table(cap.rounded_rows(rows)),
            "per_domain": md_table(cap.rounded_rows(domain_rows), limit=60),
            "seconds": round(sum(r.seconds for r in results.values()), 1),
            "notes": "; ".join(summary["notes"]) or "none",
            "harness": f"lm-eval {cap.harness_version()}, task {cap.TASK_FILE}",
        }
    )
    return {**summary, "max_drop": config.max_drop}


@dg.asset_check(
    asset="capability_retention",
    description="No model loses more than max_drop accuracy on the capability probe vs the base (paired, same "
    "items); warns, and says when there are too few items for the drop to mean much.",
)
def capability_not_lost(capability_retention: dict) -> dg.AssetCheckResult:
    limit = capability_retention["max_drop"]
    drops = {k: v["vs_base"] for k, v in capability_retention["models"].items() if "vs_base" in v}
    over = {k: d for k, d in drops.items() if d["drop"] > limit}
    return dg.AssetCheckResult(
        passed=not over,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "n": capability_retention["n"],
            "max_drop": limit,
            "over_threshold": ", ".join(
                f"{k} ({d['drop']:+.3f}, 95% CI {d['ci_low']:+.3f}..{d['ci_high']:+.3f})" for k, d in over.items()
            )
            or "none",
            "drops": md_table(cap.rounded_rows([{"model": k, **d} for k, d in drops.items()])),
            "notes": "; ".join(capability_retention["notes"]) or "none",
        },
    )


capability_checks = [capability_not_lost]
