"""The one ``dg.Definitions`` of persona-pipeline.

Resources come from env vars with embedded defaults (see README). The executor
comes from ``PERSONA_PIPELINE_EXECUTOR`` (default in-process: no per-step start-up
cost on small machines; ``k8s`` for per-step pods, see deploy/).
"""

import dagster as dg

from persona_pipeline.defs.assets import (
    capability,
    data,
    drift,
    evaluation,
    human,
    interference,
    models,
    projection,
    report,
    representations,
    specs,
    steering,
    trait_finetunes,
)
from persona_pipeline.defs.assets._common import SINGLE_RUN
from persona_pipeline.defs.automation import automation
from persona_pipeline.defs.checks import data_checks, model_checks, representation_checks
from persona_pipeline.defs.executors import executor_from_env
from persona_pipeline.defs.io_manager import ArtifactIOManager
from persona_pipeline.defs.resources import model_resource_from_env
from persona_pipeline.defs.sources import persona_files, persona_files_sensor
from persona_pipeline.defs.trait_generation import new_trait


def _single_run(assets):
    """Every asset runs a partition range in one run: that is what lets
    ``dagster asset materialize --select '*' --partition-range a...z`` work from
    the CLI without a daemon, and it lets one batch span all personas."""
    return [a.with_attributes(backfill_policy=SINGLE_RUN) for a in assets]


jobs, schedules, sensors = automation()

defs = dg.Definitions(
    assets=[
        persona_files,
        *_single_run(
            dg.load_assets_from_modules(
                [
                    specs,
                    data,
                    models,
                    representations,
                    steering,
                    projection,
                    interference,
                    trait_finetunes,
                    evaluation,
                    capability,
                    drift,
                    human,
                    report,
                ]
            )
        ),
    ],
    asset_checks=data_checks
    + model_checks
    + representation_checks
    + [human.judge_agrees_with_humans]
    + capability.capability_checks
    + projection.projection_checks
    + trait_finetunes.trait_finetune_checks,
    jobs=[*jobs, new_trait],
    schedules=schedules,
    sensors=[*sensors, persona_files_sensor],
    resources={
        "io_manager": ArtifactIOManager(),
        "teacher": model_resource_from_env("teacher"),
        "assistant": model_resource_from_env("assistant"),
        "judge": model_resource_from_env("judge"),
        "policy": model_resource_from_env("policy"),
    },
    executor=executor_from_env(),
)
