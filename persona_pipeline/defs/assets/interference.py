"""Representations group: behavioural interference — the sweep's steered answers scored on every trait."""

import math

import dagster as dg

from persona_pipeline import behavioural_interference as bi
from persona_pipeline.contracts import Trait
from persona_pipeline.defs.assets._common import ALL, FilterJudge, md_table, png_meta
from persona_pipeline.defs.assets.representations import GROUP
from persona_pipeline.defs.resources import ModelResource
from persona_pipeline.plots import heatmap


class BehaviourConfig(dg.Config):
    judge_method: FilterJudge = "auto"  # the trait judges, chosen as steering_sweep's are
    seed: int = 0


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "json"},
    ins={"steering_sweep": dg.AssetIn(partition_mapping=ALL)},
    description="Steer along trait A (the sweep's coef > 0 answers), score with every trait B's judge: mean change "
    "of B's score vs the coef-0 answers to the same questions (traits × traits, 0–100 points, bootstrap CI). "
    "Scoring only: it reuses the sweep's answers. The behavioural twin of trait_interference's cosines.",
)
def behavioural_interference(
    context: dg.AssetExecutionContext,
    config: BehaviourConfig,
    steering_sweep: list[dict],
    trait_specs: list[dict],
    judge: ModelResource,
) -> dict:
    traits = {t["trait"]: Trait(**t) for t in trait_specs}
    swept = sorted({r["trait"] for r in steering_sweep})
    judged = {t: traits[t] for t in swept}  # the traits that have vectors and sweeps
    rows = bi.steered_rows(steering_sweep)
    method = bi.score_by_every_trait(rows, judged, judge, config.judge_method)
    result = bi.interference(rows, swept, config.seed)
    share = bi.off_diagonal_share(result)
    top = max((abs(v) for row in result["matrix"] for v in row if v is not None), default=1.0)
    plots: dict[str, str] = {}
    context.add_output_metadata(
        {
            "trait_judge": method,
            "answers_scored": len(rows),
            "off_diagonal_share": share if share is not None else "n/a",
            "matrix": md_table([{"steered": a, **dict(zip(swept, row))} for a, row in zip(swept, result["matrix"])]),
            "cells": md_table(result["cells"], limit=60),
            **png_meta(
                heatmap(
                    [[math.nan if v is None else v for v in row] for row in result["matrix"]],
                    swept,
                    "Steer row trait → Δ column trait score vs coef 0",
                    vmin=-max(top, 1.0),
                    vmax=max(top, 1.0),
                ),
                "trait_behaviour",
                "behaviour_heatmap",
                plots=plots,
            ),
        }
    )
    return {**result, "trait_judge": method, "off_diagonal_share": share, "plots": plots}
