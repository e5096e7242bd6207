"""Evaluation group: the drift monitor — do the trained simulators drift toward the Assistant
in activation space over a long dialogue? It reads the held-out test dialogues that
`judge_scores` already wrote and judged, so each projection sits next to the judge's score
for the same line and no dialogue is generated twice."""

import json

import dagster as dg
import numpy as np

from persona_pipeline import stats
from persona_pipeline import vectors as vec
from persona_pipeline.activations import Item, extract
from persona_pipeline.defs.assets._common import ALL, TABLE_PLOTS, md_table, png_meta
from persona_pipeline.defs.assets.evaluation import GROUP
from persona_pipeline.dialogue_drift import projection_slope
from persona_pipeline.persona_simulator import definitions
from persona_pipeline.persona_steering import searched
from persona_pipeline.plots import line_plot
from persona_pipeline.policy import policy_backend
from persona_pipeline.prompts import simulator_prompt


class DriftConfig(dg.Config):
    methods: list[str] = ["sft", "rl"]  # whose judge_scores test dialogues to trace (the trained simulators)


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "parquet"},
    ins={"cmaes_steering": dg.AssetIn(partition_mapping=ALL)},
    description="Drift monitor on the held-out ≥10-turn test dialogues of the trained simulators (from judge_scores): "
    "per persona turn, its activations projected on the Assistant Axis and on the persona's CMA-ES "
    "direction, next to the judge's adherence for the same line.",
)
def drift_monitor(
    context: dg.AssetExecutionContext,
    config: DriftConfig,
    judge_scores: list[dict],
    persona_specs: list[dict],
    base_model: dict,
    sft_adapter: dict,
    rl_adapter: dict,
    persona_space: dict,
    cmaes_steering: dict,
) -> list[dict]:
    adapters = {"sft": sft_adapter["path"], "rl": rl_adapter["path"]}
    if set(config.methods) - set(adapters):
        raise ValueError(f"config methods={config.methods}: the drift monitor traces {sorted(adapters)}")
    defs, layer = definitions(persona_specs), persona_space["layer"]
    axis = vec.load_tensors(persona_space["axis_path"])["axis"][persona_space["layers"].index(layer)]
    persona_vecs = {p: vec.load_tensors(r["path"])["vector"] for p, r in searched(cmaes_steering).items()}
    rows = []
    for method in config.methods:
        turns = [r for r in judge_scores if r["method"] == method]
        items = [
            Item(simulator_prompt(r["persona_id"], defs[r["persona_id"]], json.loads(r["history"])), r["line"])
            for r in turns
        ]
        policy = policy_backend(base_model, adapters[method])  # the copy judge_scores loaded in this run, if any
        acts = extract(policy.model, policy.tok, items, [layer])["response_avg"][:, 0]
        for r, a in zip(turns, acts):
            v = persona_vecs.get(r["persona_id"])
            rows.append(
                {
                    "persona_id": r["persona_id"],
                    "method": method,
                    "turn": r["turn"],
                    "line": r["line"],
                    "adherence": r["adherence"],
                    "layer": layer,
                    "axis_projection": round(float(vec.project(a, axis)), 4),
                    "persona_projection": round(float(vec.project(a, v)), 4)
                    if v is not None and v.norm() > 0
                    else None,
                }
            )
    context.add_output_metadata(_drift_meta(rows))
    return rows


def _drift_meta(rows: list[dict]) -> dict:
    from persona_pipeline.stats import agreement

    keys = sorted({(r["method"], r["persona_id"]) for r in rows})
    per = {k: [r for r in rows if (r["method"], r["persona_id"]) == k] for k in keys}
    slopes = [
        {
            "method": m,
            "persona": p,
            "axis_slope_per_turn": projection_slope(per[(m, p)]),
            "spearman_axis_vs_adherence": _round(
                agreement([r["axis_projection"] for r in per[(m, p)]], [r["adherence"] for r in per[(m, p)]])[
                    "spearman"
                ]
            ),
        }
        for m, p in keys
    ]
    methods = sorted({m for m, _ in keys})
    series = {
        m: (
            turns := sorted({r["turn"] for r in rows if r["method"] == m}),
            [
                float(np.mean([r["axis_projection"] for r in rows if r["method"] == m and r["turn"] == t]))
                for t in turns
            ],
        )
        for m in methods
    }
    return {
        "turns": len(rows),
        "slopes": md_table(slopes, limit=40),
        **png_meta(
            line_plot(
                series,
                "Assistant-Axis projection per persona turn, mean over personas (up = more assistant-like)",
                "persona turn",
                "projection",
            ),
            TABLE_PLOTS["drift_monitor"],
            "drift_plot",
        ),
    }


def _round(x, nd: int = 3):
    return stats.rounded(x, nd)
