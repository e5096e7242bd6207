"""Evaluation group: the one self-contained HTML report."""

import json

import dagster as dg

from persona_pipeline.defs.assets._common import ALL, md_table
from persona_pipeline.defs.assets.evaluation import GROUP
from persona_pipeline.leaderboard import brief
from persona_pipeline.report import Report
from persona_pipeline.settings import home

# Plots written by upstream assets (under the artifacts root), in reading order.
PLOTS = [
    ("Training", "models/sft_loss.png", "SFT training loss"),
    ("Training", "models/rl_reward.png", "GRPO mean reward"),
    ("Training", "models/rl_kl.png", "KL to the SFT policy"),
    ("Persona space", "plots/persona_space_pca.png", "Roles in PCA space (red: the default assistant)"),
    ("Persona space", "plots/persona_space_axis.png", "Checkpoints along the Assistant Axis"),
    ("Persona vectors", "plots/trait_cosine.png", "Trait × trait cosine similarity"),
    ("Persona vectors", "plots/finetuning_shift.png", "Fine-tuning shift along each vector"),
    ("Steering", "plots/cmaes_convergence.png", "CMA-ES convergence"),
    ("Consistency", "plots/consistency_by_turn.png", "Adherence by persona turn"),
    ("Consistency", "plots/drift_monitor.png", "Assistant-Axis projection per turn (drift monitor)"),
]

UPSTREAM = ["sft_adapter", "rl_adapter", "persona_space", "trait_interference", "finetuning_shift", "drift_monitor"]


@dg.asset(
    group_name=GROUP,
    kinds={"html"},
    deps=[
        *UPSTREAM,
        dg.AssetDep("steering_sweep", partition_mapping=ALL),
        dg.AssetDep("cmaes_steering", partition_mapping=ALL),
    ],
    description="One self-contained HTML report: leaderboard, per-persona breakdown, consistency curves, training "
    "curves, steering sweeps, PCA, vector similarity, CMA-ES convergence, worst examples with reasons.",
)
def eval_report(
    context: dg.AssetExecutionContext, leaderboard: list[dict], judge_scores: list[dict], survey_replication: dict
) -> dict:
    root = home()
    r = Report("persona-pipeline evaluation", subtitle=f"judge: {judge_scores[0]['judge'] if judge_scores else 'n/a'}")
    from persona_pipeline import leaderboard as lb

    board = [x for x in leaderboard if x["persona_id"] == "ALL"]
    overall = [brief(x) for x in board]
    classes = judge_scores[0].get("persona_id_classes") if judge_scores else None
    r.section(
        "Leaderboard by evaluator",
        "Every method under every evaluator: mean with its 95 % CI over dialogues; Δ vs prompt-only paired on the "
        "same persona × topic × turn, resampling dialogues (Holm-corrected). A row marked 'YES (circular)' scores "
        "a method with the signal it was optimised against (RL: the reward; CMA-ES: the search fitness) — not "
        "independent evidence. The persona-id classifiers never saw a generated line; chance = 1 / personas.",
    )
    r.table(lb.by_evaluator(board, classes))
    r.section("Evaluator agreement", "Spearman ρ between evaluators' per-method means (do they rank methods alike?).")
    r.table(lb.method_rank_agreement(board))
    r.section(
        "Primary judge",
        "Mean adherence of the primary judge (the seed JSON judge with an endpoint, else the voice score) with its "
        "bootstrap 95 % CI over dialogues; Δ and p are against prompt-only (Holm-corrected).",
    )
    r.table(overall, highlight_best={"breaks": "min"})
    r.section("Per persona").table([brief(x) for x in leaderboard if x["persona_id"] != "ALL" and x.get("adherence_n")])
    r.section("Survey replication", "Held-out items of the surveyed person; fidelity as in the survey guide.")
    r.table(
        [
            {
                "person": v["persona_id"],
                "method": v["method"],
                "fidelity": v["fidelity"],
                "band": v["band"],
                **{k: v["overall"].get(k) for k in ("parse_rate", "likert_within1", "stance_accuracy", "similarity")},
            }
            for v in survey_replication.values()
        ],
        highlight_best={"fidelity": "max"},
    )
    opened = set()
    for section, rel, caption in PLOTS + _sweep_plots(root):
        path = root / rel
        if path.exists():
            if section not in opened:
                opened.add(section)
                r.section(section)
            r.image(path.read_bytes(), caption)
    worst = sorted((x for x in judge_scores if x["adherence"] is not None), key=lambda x: x["adherence"])[:8]
    r.section(
        "Worst examples", "The lowest-adherence persona lines with the judge's reasoning (when the judge gives one)."
    )
    r.examples(
        [
            {
                "persona": x["persona_id"],
                "method": x["method"],
                "turn": x["turn"],
                "adherence": x["adherence"],
                "line": x["line"],
                "history": json.loads(x["history"])[-2:],
                "reasoning": x["reasoning"] or x["judge_errors"],
            }
            for x in worst
        ],
        summary_keys=["persona", "method", "adherence"],
    )
    path = r.write(root / "reports" / "eval_report.html")
    context.add_output_metadata(
        {
            "report": dg.MetadataValue.path(str(path)),
            "url": dg.MetadataValue.url(path.as_uri()),
            "leaderboard": md_table(overall),
            "bytes": path.stat().st_size,
        }
    )
    return {"path": str(path)}


def _sweep_plots(root) -> list[tuple[str, str, str]]:
    return [
        ("Steering", f"plots/{p.name}", p.stem.replace("sweep_", "").replace("_", " "))
        for p in sorted((root / "plots").glob("sweep_*.png"))
    ]
