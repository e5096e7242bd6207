"""Specs group: validated input data from ``data_assets/``."""

import dagster as dg

from persona_pipeline import loaders
from persona_pipeline.defs.assets._common import counts, md_table, png_meta
from persona_pipeline.plots import bar_plot
from persona_pipeline.settings import data_root

GROUP = "specs"


@dg.asset(
    group_name=GROUP,
    kinds={"yaml", "parquet"},
    description="Validated persona specs from data_assets/personas/ (*.yaml or *.json; `id` or `persona_id`). "
    "Also checks that every entry of data_assets/ is one the pipeline reads.",
)
def persona_specs(context: dg.AssetExecutionContext) -> list[dict]:
    loaders.check_root(data_root(), context.log.warning)
    specs = loaders.load_personas(data_root() / "personas", context.log.warning)
    context.add_output_metadata(
        {
            "personas": len(specs),
            "table": md_table(
                [
                    {"id": s.id, "name": s.name, "traits": len(s.behavioral_traits), "stop_rules": len(s.stop_rules)}
                    for s in specs
                ]
            ),
        }
    )
    return [s.model_dump() for s in specs]


@dg.asset(
    group_name=GROUP,
    kinds={"yaml", "parquet"},
    description="Topics with scenario_type and a stable train/held-out split.",
)
def topics(context: dg.AssetExecutionContext) -> list[dict]:
    items = loaders.load_topics(data_root() / "topics.yaml")
    types = sorted({t.scenario_type for t in items})
    plot = bar_plot(
        types,
        {
            "train": [sum(t.scenario_type == s and t.split == "train" for t in items) for s in types],
            "held out": [sum(t.scenario_type == s and t.split == "heldout" for t in items) for s in types],
        },
        "Topics per scenario type",
        "topics",
    )
    context.add_output_metadata(
        {
            **png_meta(plot, "topics_per_scenario_type", "scenario_types_plot"),
            "topics": len(items),
            "scenario_types": len({t.scenario_type for t in items}),
            "heldout": sum(t.split == "heldout" for t in items),
            "per_scenario_type": counts(t.scenario_type for t in items),
        }
    )
    return [t.model_dump() for t in items]


@dg.asset(
    group_name=GROUP,
    kinds={"yaml", "parquet"},
    description="Trait artifacts: 5 pos/neg instruction pairs, extraction and evaluation questions, 0–100 judge prompt "
    "(our YAML or persona-vectors JSON, one file or trait_data_extract/ + trait_data_eval/).",
)
def trait_specs(context: dg.AssetExecutionContext) -> list[dict]:
    traits = loaders.load_traits(data_root() / "traits", context.log.warning)
    loaders.load_coherence_prompt(data_root() / "traits")  # its template is checked now, not after generation
    context.add_output_metadata(
        {
            "traits": len(traits),
            "table": md_table(
                [
                    {
                        "trait": t.trait,
                        "instructions": len(t.instructions),
                        "extract_q": len(t.extract_questions),
                        "eval_q": len(t.eval_questions),
                    }
                    for t in traits
                ]
            ),
        }
    )
    return [t.model_dump() for t in traits]


@dg.asset(
    group_name=GROUP,
    kinds={"yaml", "json"},
    description="Role system prompts and shared questions, including the default assistant (our YAML or "
    "Assistant-Axis role JSON + questions.jsonl).",
)
def role_specs(context: dg.AssetExecutionContext) -> dict:
    roles = loaders.load_roles(data_root() / "roles", context.log.warning)
    context.add_output_metadata(
        {
            "roles": len(roles.roles),
            "questions": len(roles.questions),
            "role_names": ", ".join(r.role for r in roles.roles),
        }
    )
    return roles.model_dump()


@dg.asset(
    group_name=GROUP,
    kinds={"yaml", "json"},
    description="Surveys of real people: profile plus Likert / choice / open items with reasoning (our YAML or the "
    "survey guide's JSON); a person id may not equal a persona id.",
)
def surveys(context: dg.AssetExecutionContext) -> dict:
    persona_ids = {p.stem for p in loaders.persona_files(data_root() / "personas")}
    found = loaders.load_surveys(data_root() / "surveys", persona_ids, context.log.warning)
    context.add_output_metadata(
        {
            "people": len(found),
            "items": sum(len(s.items) for s in found),
            "kinds": counts(i.kind for s in found for i in s.items),
            "categories": counts(i.category for s in found for i in s.items),
        }
    )
    return {s.profile.id: s.model_dump() for s in found}
