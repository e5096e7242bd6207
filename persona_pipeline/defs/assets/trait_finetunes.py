"""Representations group: trait fine-tune sets (normal / misaligned_1 / misaligned_2), LoRA fine-tunes on them
with and without preventative steering, Assistant-Axis capping, and what each did to the trait score and to the
projection on the trait's persona vector. Wiring only: the science is in ``persona_pipeline.trait_finetunes``."""

from typing import ClassVar

import dagster as dg

from persona_pipeline import trait_finetunes as tf
from persona_pipeline.activations import VIEWS
from persona_pipeline.backends import SamplingParams
from persona_pipeline.contracts import Trait
from persona_pipeline.control_vector import ControlVector
from persona_pipeline.defs.assets._common import ALL, GPU, FilterJudge, ProfileConfig, md_table, png_meta
from persona_pipeline.defs.assets.representations import GROUP
from persona_pipeline.defs.resources import ModelResource
from persona_pipeline.judging import choose
from persona_pipeline.layout import layout
from persona_pipeline.plots import line_plot
from persona_pipeline.train_sft import LoraSettings, SftSettings
from persona_pipeline.vectors import load_tensors


class TraitSetConfig(ProfileConfig):
    PROFILE: ClassVar[dict[str, str]] = {
        "traits": "trait_finetune_traits",
        "examples": "trait_finetune_examples",
        "max_new_tokens": "trait_finetune_tokens",
    }

    traits: list[str] | None = None  # None → profile; [] → every trait
    examples: int | None = None  # rows per set
    max_new_tokens: int | None = None
    temperature: float = 0.8
    seed: int = 0


def _chosen(wanted: list[str], available: list[str], log) -> list[str]:
    """The wanted traits that exist ([] = all); the first available one where none of them does."""
    if not wanted:
        return sorted(available)
    found = [t for t in wanted if t in available]
    if len(found) < len(wanted):
        log.warning(f"trait fine-tunes: no trait file for {sorted(set(wanted) - set(found))}; skipped")
    return found or sorted(available)[:1]


@dg.asset(
    group_name=GROUP,
    kinds={"json"},
    **GPU,
    description="Teacher-written question/response sets per chosen trait (persona vectors §4): normal "
    "(trait-neutral), misaligned_1 (mild trait) and misaligned_2 (strong), as conversational prompt/completion "
    "JSONL that datasets.load_dataset('json') and TRL read.",
)
def trait_finetune_sets(
    context: dg.AssetExecutionContext, config: TraitSetConfig, trait_specs: list[dict], teacher: ModelResource
) -> dict:
    traits = {t["trait"]: Trait(**t) for t in trait_specs}
    chosen = _chosen(config.traits, list(traits), context.log)
    params = SamplingParams(max_new_tokens=config.max_new_tokens, temperature=config.temperature, seed=config.seed)
    backend = teacher.backend()
    sets = {t: tf.generate_sets(backend, traits[t], config.examples, params) for t in chosen}
    paths = tf.write_sets(layout().trait_finetune_sets, sets)
    table = [
        {
            "trait": t,
            "set": s,
            "rows": len(rows),
            "dropped_empty": config.examples - len(rows),
            "mean_chars": round(sum(len(r["completion"][0]["content"]) for r in rows) / max(1, len(rows))),
            "example": rows[0]["completion"][0]["content"][:80] if rows else "",
        }
        for t, by_set in sets.items()
        for s, rows in by_set.items()
    ]
    context.add_output_metadata(
        {"teacher": teacher.describe(), "traits": ", ".join(chosen), "sets": md_table(table)}
        | {"folder": dg.MetadataValue.path(str(layout().trait_finetune_sets))}
    )
    return {"teacher": teacher.describe(), "paths": paths, "sets": table}


class TraitFinetuneConfig(ProfileConfig):
    PROFILE: ClassVar[dict[str, str]] = {
        "max_steps": "trait_finetune_steps",
        "snapshots": "trait_finetune_snapshots",
        "batch_size": "sft_batch_size",
        "eval_questions": "trait_finetune_eval_questions",
        "eval_tokens": "trait_finetune_eval_tokens",
        "cap_percentiles": "trait_cap_percentiles",
        "cap_layers": "trait_cap_layers",
    }

    r: int = 16
    alpha: int = 32
    learning_rate: float = 5e-4  # a few steps must move something at toy size
    max_steps: int | None = None
    snapshots: int | None = None  # intermediate adapters per fine-tune, read as extra (non-independent) checkpoints
    batch_size: int | None = None  # None → profile (sft_batch_size: 1 on 2 CPU cores)
    max_length: int = 384
    preventative_modes: list[str] = ["add", "ablate"]  # extra checkpoints on the strongest set
    preventative_rel_coef: float = 0.15  # × the layer's typical norm (the informative range, ENVIRONMENT.md)
    steer_layer: int | None = None  # preventative steering layer; None → the vector's middle captured layer
    eval_questions: int | None = None
    eval_tokens: int | None = None
    cap_percentiles: list[float] | None = None  # [] → no capped models
    cap_layers: int | None = None  # consecutive layers capped from the Assistant Axis layer on
    judge_method: FilterJudge = "auto"
    seed: int = 0

    def run(self) -> tf.FinetuneRun:
        sft = SftSettings(
            lora=LoraSettings(self.r, self.alpha, 0.05),
            learning_rate=self.learning_rate,
            max_steps=self.max_steps,
            batch_size=self.batch_size,
            max_length=self.max_length,
            logging_steps=1,
            seed=self.seed,
        )
        params = SamplingParams(max_new_tokens=self.eval_tokens, temperature=0, seed=self.seed)
        return tf.FinetuneRun(
            sft,
            self.preventative_modes,
            self.preventative_rel_coef,
            self.eval_questions,
            params,
            snapshots=self.snapshots,
        )


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "safetensors"},
    **GPU,
    ins={"persona_vectors": dg.AssetIn(partition_mapping=ALL)},
    description="A LoRA per trait fine-tune set, plus the strongest set again under preventative steering (add / "
    "ablate) as separate checkpoints, and the base capped on the Assistant Axis at percentile floors. Per "
    "checkpoint: judged trait score (Δ vs base, CI) and the projection shift on the trait's vector at every layer "
    "in all three views; the Pearson r of shift with trait-score change across fine-tunes (n, bootstrap CI).",
)
def trait_finetunes(
    context: dg.AssetExecutionContext,
    config: TraitFinetuneConfig,
    trait_finetune_sets: dict,
    trait_specs: list[dict],
    persona_vectors: dict,
    persona_space: dict,
    base_model: dict,
    judge: ModelResource,
) -> dict:
    traits = {t["trait"]: Trait(**t) for t in trait_specs}
    run, base = config.run(), base_model["path"]
    axis = {
        "axis_path": persona_space["axis_path"],
        "axis_layers": persona_space["layers"],  # the axis has a row per one of these layers
        "layer": persona_space["layer"],
        "n_layers": config.cap_layers,
        "percentiles": config.cap_percentiles,
    }
    trained, checkpoints, shifts, caps = [], [], [], None
    for name, paths in trait_finetune_sets["paths"].items():
        if name not in persona_vectors:
            raise ValueError(f"trait_finetunes: trait {name!r} has no persona vector; materialise persona_vectors")
        sets = {s: tf.read_set(p) for s, p in paths.items()}
        cv = ControlVector.load(persona_vectors[name])
        layer = config.steer_layer if config.steer_layer is not None else cv.layers[len(cv.layers) // 2]
        card = {"name": f"trait fine-tune: {name}", "base_model": base, "teacher": trait_finetune_sets["teacher"]}
        tuned = tf.train_variants(base, name, sets, cv, layer, run, card)
        tensors = load_tensors(persona_vectors[name]["path"])
        vectors = {v: tensors[f"mean_diff_{v}"] for v in VIEWS}
        judge_obj = choose.trait_judge(judge, traits[name], config.judge_method)
        rows, sh, caps = tf.evaluate_trait(
            base,
            traits[name],
            tuned,
            vectors,
            cv.layers,
            judge_obj,
            run,
            caps,
            axis if config.cap_percentiles else None,
        )
        trained += tuned
        checkpoints += rows
        shifts += sh
    correlation = tf.shift_score_correlation(checkpoints, shifts, config.seed)
    _metadata(context, trained, checkpoints, shifts, correlation, caps, persona_vectors)
    return {
        "trained": trained,
        "checkpoints": checkpoints,
        "shifts": shifts,
        "correlation": correlation,
        "caps": caps,
        "judge": choose.method("filter", judge, config.judge_method),
        "set_rows": {(r["trait"] + ":" + r["set"]): r["rows"] for r in trait_finetune_sets["sets"]},
    }


def _metadata(context, trained, checkpoints, shifts, correlation, caps, persona_vectors) -> None:
    """Summary at the middle layer (every layer is in the value), the correlation, a shift-by-layer plot."""
    mid = {t: v["layers"][len(v["layers"]) // 2] for t, v in persona_vectors.items()}
    summary = [
        {
            **{k: c.get(k) for k in ("trait", "checkpoint", "trait_score", "ci_low", "ci_high", "delta", "n")},
            **{
                f"shift_{v}@L{mid[c['trait']]}": s
                for v, s in tf.at_layer(shifts, c["trait"], c["checkpoint"], mid[c["trait"]]).items()
            },
        }
        for c in checkpoints
    ]
    at_mid = [r for r in correlation if r["layer"] in mid.values()]
    claimed = [r for r in correlation if r["r"] is not None]
    series = {
        f"{c['trait']}:{c['checkpoint']}": (
            [
                r["layer"]
                for r in shifts
                if r["trait"] == c["trait"] and r["checkpoint"] == c["checkpoint"] and r["view"] == "prompt_last"
            ],
            [
                r["shift"]
                for r in shifts
                if r["trait"] == c["trait"] and r["checkpoint"] == c["checkpoint"] and r["view"] == "prompt_last"
            ],
        )
        for c in checkpoints
        if c["kind"] != "base"
    }
    context.add_output_metadata(
        {
            "checkpoints": md_table(summary),
            "training": md_table(trained),
            "caps": md_table(caps),
            "shift_score_r_middle_layer": md_table(at_mid),
            "shift_score_r": (
                f"{len(claimed)} of {len(correlation)} view×layer cells have enough checkpoints for an r"
                if claimed
                else (correlation[0]["note"] if correlation else "no fine-tuned checkpoints")
            ),
            **png_meta(
                line_plot(series, "Projection shift vs base (last prompt token)", "layer", "Δ projection", hline=0.0),
                "trait_finetune_shift",
                "shift_by_layer",
            ),
        }
    )


@dg.asset_check(
    asset="trait_finetunes",
    description="Enough data for the fine-tune experiment to mean something: every set has ≥ MIN_SET_ROWS rows, "
    "and the shift–score correlation has ≥ MIN_CHECKPOINTS fine-tuned checkpoints (warns, saying what is short).",
)
def trait_finetunes_enough_data(trait_finetunes: dict) -> dg.AssetCheckResult:
    short_sets = {k: n for k, n in trait_finetunes["set_rows"].items() if n < tf.MIN_SET_ROWS}
    n = max((r["n"] for r in trait_finetunes["correlation"]), default=0)
    problems = [f"{k}: {v} rows (< {tf.MIN_SET_ROWS})" for k, v in short_sets.items()]
    if n < tf.MIN_CHECKPOINTS:
        problems.append(f"shift–score correlation: n={n} checkpoints (< {tf.MIN_CHECKPOINTS}), no r claimed")
    return dg.AssetCheckResult(
        passed=not problems,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "checkpoints": n,
            "too_few": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none"),
        },
    )


trait_finetune_checks = [trait_finetunes_enough_data]
