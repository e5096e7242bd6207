"""Evaluation group: the one self-contained HTML report."""

import json
from pathlib import Path

import dagster as dg

from persona_pipeline import study
from persona_pipeline import trait_finetunes as tf
from persona_pipeline.defs.assets._common import ALL, TABLE_PLOTS, md_table, sweep_plot
from persona_pipeline.defs.assets.evaluation import GROUP
from persona_pipeline.layout import layout
from persona_pipeline.leaderboard import brief
from persona_pipeline.report import Report

# Plots in reading order: (section, plot name, caption). Names of plots an input returns are read from
# its ``plots``; the others (assets whose value is a table) are declared once in ``TABLE_PLOTS``.
PLOTS = [
    ("Training", "sft_loss", "SFT training loss"),
    ("Training", "rl_reward", "GRPO mean reward"),
    ("Training", "rl_kl", "KL to the SFT policy"),
    ("Persona space", "persona_space_pca", "Roles in PCA space (red: the default assistant)"),
    ("Persona space", "persona_space_axis", "Checkpoints along the Assistant Axis"),
    ("Persona vectors", "trait_cosine", "Trait × trait cosine similarity"),
    ("Persona vectors", "trait_behaviour", "Steer along the row trait: Δ column trait score vs coef 0"),
    ("Persona vectors", "projection_score_r", "Projection onto the trait vector vs judged trait score: r by layer"),
    ("Persona vectors", TABLE_PLOTS["finetuning_shift"], "Fine-tuning shift along each vector"),
    ("Steering", "cmaes_convergence", "CMA-ES convergence"),
    ("Consistency", TABLE_PLOTS["judge_scores"], "Adherence by persona turn"),
    ("Consistency", TABLE_PLOTS["drift_monitor"], "Assistant-Axis projection per turn (drift monitor)"),
]


def plot_files(inputs: list[dict], sweep_traits) -> list[tuple[str, Path, str]]:
    """(section, file, caption) for every plot of the report; a plot that is not there is an error.

    ``inputs``: the upstream values that return their ``plots`` (name → path); table-valued assets'
    plots are at their declared names under the layout's ``plots/``; sweep plots are per trait."""
    files = {name: Path(path) for value in inputs for name, path in value.get("plots", {}).items()}
    files |= {name: layout().plot(name) for name in TABLE_PLOTS.values()}
    sweeps = sorted(sweep_plot(t, what) for t in sweep_traits for what in ("trait", "coherence"))
    files |= {name: layout().plot(name) for name in sweeps}
    wanted = PLOTS + [("Steering", name, name.replace("sweep_", "").replace("_", " ")) for name in sweeps]
    missing = [name for _, name, _ in wanted if name not in files or not files[name].exists()]
    if missing:
        raise FileNotFoundError(
            f"eval_report: plots {missing} are missing ({', '.join(str(files.get(n, n)) for n in missing)}); "
            "rematerialise the assets that draw them"
        )
    return [(section, files[name], caption) for section, name, caption in wanted]


@dg.asset(
    group_name=GROUP,
    kinds={"html"},
    ins={
        "steering_sweep": dg.AssetIn(partition_mapping=ALL),
        "cmaes_steering": dg.AssetIn(partition_mapping=ALL),
        "trait_responses": dg.AssetIn(partition_mapping=ALL),
    },
    deps=["finetuning_shift", "drift_monitor"],
    description="One self-contained HTML report: leaderboard, per-persona breakdown, consistency curves, training "
    "curves, steering sweeps, PCA, vector similarity, CMA-ES convergence, worst examples with reasons.",
)
def eval_report(
    context: dg.AssetExecutionContext,
    leaderboard: list[dict],
    judge_scores: list[dict],
    survey_replication: dict,
    sft_adapter: dict,
    rl_adapter: dict,
    persona_space: dict,
    trait_interference: dict,
    behavioural_interference: dict,
    projection_predicts_score: dict,
    steering_sweep: list[dict],
    cmaes_steering: dict,
    trait_responses: list[dict],
    trait_finetunes: dict,
) -> dict:
    sweep_traits = {r["trait"] for r in steering_sweep}
    plots = plot_files(
        [
            sft_adapter,
            rl_adapter,
            persona_space,
            trait_interference,
            behavioural_interference,
            projection_predicts_score,
            *cmaes_steering.values(),
        ],
        sweep_traits,
    )
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
    for section, path, caption in plots:
        if section not in opened:
            opened.add(section)
            r.section(section)
        r.image(path.read_bytes(), caption)
    r.section(
        "Projection and trait score",
        "Pearson r (bootstrap 95 % CI) between a trait answer's projection onto the trait's vector and its judged "
        "score, at the middle layer; 'heldout' uses a vector built from the trait's other questions only.",
    ).table(projection_predicts_score["by_trait"])
    r.section(
        "Behavioural interference",
        "Steering along the steered trait (coef > 0) vs its coef-0 answers: mean change of the judged trait's "
        "0–100 score with its bootstrap 95 % CI and the number of paired answers.",
    ).table(behavioural_interference["cells"])
    shapes = _shapes(r, steering_sweep, trait_responses, projection_predicts_score, trait_finetunes, leaderboard)
    _trait_finetune_tables(r, trait_finetunes)
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
    path = r.write(layout().eval_report)
    context.add_output_metadata(
        {
            "report": dg.MetadataValue.path(str(path)),
            "url": dg.MetadataValue.url(path.as_uri()),
            "leaderboard": md_table(overall),
            "bytes": path.stat().st_size,
            "shapes": md_table(shapes),
            "shapes_tally": json.dumps(study.tally(shapes)),
        }
    )
    return {"path": str(path), "shapes": shapes, "trait_judge": trait_finetunes.get("judge")}


def _by_trait(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in rows:
        out.setdefault(row["trait"], []).append(row)
    return out


def _shapes(r: Report, sweep, responses, projection, finetunes, leaderboard) -> list[dict]:
    """The study table (``persona_pipeline.study``): does each of the papers' shapes appear here, CI and n."""
    shapes = study.shape_table(
        _by_trait(sweep), _by_trait(responses), projection, finetunes, leaderboard, tf.MIN_CHECKPOINTS
    )
    r.section(
        "Shapes: what appears on this model",
        f"Each of the persona-vectors / Assistant-Axis headline shapes with its 95 % CI and n. Trait scores come "
        f"from the trait judge ({finetunes.get('judge', 'n/a')}); SFT vs prompt-only from the persona-id "
        "classifiers, which no method was optimised on. 'appears' = CI clear of 0 in the papers' direction; "
        "'not shown' = CI spans 0; 'too little data' = below the row's minimum n (the demo profile is a tour: "
        "run the study profile for claims).",
    ).table(shapes)
    return shapes


def _trait_finetune_tables(r: Report, finetunes: dict) -> None:
    """Trait fine-tunes: each checkpoint's trait score (Δ vs base), and the shift–score r at the middle layer."""
    keep = (
        "trait",
        "checkpoint",
        "kind",
        "trait_score",
        "ci_low",
        "ci_high",
        "delta",
        "delta_ci_low",
        "delta_ci_high",
        "n",
    )
    r.section(
        "Trait fine-tunes",
        "LoRA fine-tunes on teacher-written normal / misaligned_1 / misaligned_2 sets (the strongest also under "
        "preventative add / ablate steering) and the base capped on the Assistant Axis: judged trait score of "
        "each model's own answers to held-out questions, Δ vs base paired by question (bootstrap 95 % CI).",
    ).table([{k: c.get(k) for k in keep} for c in finetunes.get("checkpoints", [])])
    layers = sorted({c["layer"] for c in finetunes.get("correlation", [])})
    mid = layers[len(layers) // 2] if layers else None
    r.section(
        "Fine-tuning shift vs trait change",
        "Pearson r across fine-tuned checkpoints between the projection shift on the trait vector and the "
        "trait-score change, per view, at the middle layer (every layer is in the asset).",
    ).table([c for c in finetunes.get("correlation", []) if c["layer"] == mid])
