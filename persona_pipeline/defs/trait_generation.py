"""``new_trait`` job: the teacher writes a trait artifact into ``data_assets/traits/`` (what the CLI's
``new-trait`` does, launched from the UI with run config). An op, not an asset: it writes *input* data,
which ``trait_specs`` then reads (and a new trait partition appears when the code location reloads).

Wiring only: prompting, parsing, templates and validation live in ``persona_pipeline.trait_generation``.
"""

from typing import Literal

import dagster as dg

from persona_pipeline import trait_generation as tg
from persona_pipeline.defs.assets._common import md_table
from persona_pipeline.defs.resources import ModelResource
from persona_pipeline.settings import data_root


class NewTraitConfig(dg.Config):
    name: str  # the trait id and file name, e.g. "anxious"
    description: str  # one or two sentences: what the trait is
    layout: Literal["yaml", "persona-vectors"] = "yaml"  # our YAML (with provenance) or trait_data_{extract,eval}/
    force: bool = False  # replace an existing trait of that name
    attempts: int = 2  # replies asked per field (a small teacher often needs more than one)
    max_new_tokens: int = 400
    seed: int = 0


@dg.op(
    description="Ask the teacher for a trait's instruction pairs, extraction / evaluation questions and 0–100 judge "
    "prompt (persona-vectors layout); fields it cannot supply come from templates built from the description, and "
    "the file records which is which.",
    tags={"kind": "llm"},
)
def generate_trait_file(context: dg.OpExecutionContext, config: NewTraitConfig, teacher: ModelResource) -> dict:
    gen = tg.generate_trait(
        teacher.backend(), config.name, config.description, config.attempts, config.max_new_tokens, config.seed
    )
    paths = tg.write_trait(gen, data_root() / "traits", config.layout, config.force)
    context.add_output_metadata(
        {
            "files": ", ".join(str(p) for p in paths),
            "teacher": teacher.describe(),
            "provenance": md_table([{"field": k, "origin": gen.origin(k), **s} for k, s in gen.sources.items()]),
        }
    )
    return {"paths": [str(p) for p in paths], **gen.summary()}


@dg.job(description="Write a new trait file with the teacher (run config: ops.generate_trait_file.config).")
def new_trait():
    generate_trait_file()
