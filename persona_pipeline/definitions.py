"""The one ``dg.Definitions`` of persona-pipeline.

Resources come from env vars with embedded defaults (see README); the
in-process executor avoids ~3 s of process start-up per step on small machines.
"""

import dagster as dg

from .assets import data, evaluation, human, models, report, representations, specs, steering
from .assets.automation import human_ratings_sensor
from .assets.checks import data_checks, model_checks
from .io_manager import ArtifactIOManager
from .resources import model_resource_from_env

from .assets._common import SINGLE_RUN


def _single_run(assets):
    """Every asset runs a partition range in one run: that is what lets
    ``dagster asset materialize --select '*' --partition-range a...z`` work from
    the CLI without a daemon, and it lets one batch span all personas."""
    return [a.with_attributes(backfill_policy=SINGLE_RUN) for a in assets]


defs = dg.Definitions(
    assets=_single_run(dg.load_assets_from_modules([specs, data, models, representations, steering, evaluation, human, report])),
    asset_checks=data_checks + model_checks + [human.judge_agrees_with_humans],
    sensors=[human_ratings_sensor],
    resources={
        "io_manager": ArtifactIOManager(),
        "teacher": model_resource_from_env("teacher"),
        "assistant": model_resource_from_env("assistant"),
        "judge": model_resource_from_env("judge"),
        "policy": model_resource_from_env("policy"),
    },
    executor=dg.in_process_executor,
)
