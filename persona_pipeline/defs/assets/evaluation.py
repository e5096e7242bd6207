"""Evaluation group: judged test dialogues per method, survey replication, the leaderboard,
the HTML report, and the human-evaluation page whose ratings flow back in."""

import json

import dagster as dg

from persona_pipeline import eval_judges as ej
from persona_pipeline import stats
from persona_pipeline.contracts import PersonaSpec, Survey, Topic
from persona_pipeline.defs.assets._common import (
    GPU,
    STEERING_INS,
    TABLE_PLOTS,
    OnOff,
    ProfileConfig,
    md_table,
    png_meta,
)
from persona_pipeline.defs.resources import ModelResource
from persona_pipeline.dialogue_drift import consistency_drift
from persona_pipeline.eval_dialogues import endings, persona_turns, run_dialogues
from persona_pipeline.eval_methods import (
    METHODS,
    contestants,
    evaluated_personas,
    file_version,
    gold_lines,
    optimised_on,
    turn_row,
)
from persona_pipeline.judging import choose
from persona_pipeline.leaderboard import CLASSIFIERS, brief
from persona_pipeline.policy import checkpoint_backends, policy_backend
from persona_pipeline.settings import profile
from persona_pipeline.teacher_dialogues import plan_dialogues

GROUP = "evaluation"


class JudgeScoresConfig(ProfileConfig):
    PROFILE = {"topics": "eval_topics", "turns": "eval_turns"}

    methods: list[str] = list(METHODS)
    topics: int | None = None
    turns: int | None = None
    json_judge: OnOff = "auto"  # auto: the seed's JSON judge with endpoint judges
    logprob_judge: OnOff = "auto"  # auto: the 0–10 logprob reward judge with endpoint judges (the 135M rarely answers)
    agreement_tolerance: float = 0.2
    seed: int = 0


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "parquet"},
    **GPU,
    ins=STEERING_INS,
    description="≥10-turn held-out dialogues per persona × method (prompt-only, SFT, RL, best steering, CMA-ES), "
    "every persona turn judged; adherence by turn index and its slope; judge agreement.",
)
def judge_scores(
    context: dg.AssetExecutionContext,
    config: JudgeScoresConfig,
    persona_specs: list[dict],
    topics: list[dict],
    conversations: list[dict],
    base_model: dict,
    sft_adapter: dict,
    rl_adapter: dict,
    steering_sweep: list[dict],
    persona_vectors: dict,
    cmaes_steering: dict,
    assistant: ModelResource,
    judge: ModelResource,
) -> list[dict]:
    p = profile()
    unknown = set(config.methods) - set(METHODS)
    if unknown:
        raise ValueError(f"config methods {sorted(unknown)}: choose from {list(METHODS)}")
    specs = {s["id"]: PersonaSpec(**s) for s in persona_specs}
    all_topics = [Topic(**t) for t in topics]
    held = {
        pid: [d.topic for d in plan_dialogues(s, all_topics, config.topics, config.seed, "heldout")]
        for pid, s in specs.items()
    }
    backends = checkpoint_backends(base_model, sft_adapter, rl_adapter)
    convs = run_dialogues(
        contestants(persona_specs, cmaes_steering, steering_sweep, persona_vectors, config.methods),
        held,
        backends,
        assistant.backend(),
        max(10, config.turns),
        p.eval_persona_tokens,
        p.eval_assistant_tokens,
        seed=config.seed,
    )
    context.log.info(f"{len(convs)} test dialogues done; judging their persona turns")
    turns = [t for c in convs for t in persona_turns(c)]
    items = [
        ej.EvalItem(
            id=f"{t['conversation_id']}@{t['turn']}",
            persona_id=t["persona_id"],
            history=t["history"],
            candidate=t["line"],
            method=t["method"],
            turn_index=t["turn"],
        )
        for t in turns
    ]
    gold = gold_lines(persona_specs, conversations, sft_adapter)
    profiles = {pid: ej.persona_profile(s, ej.persona_lines(conversations, pid)) for pid, s in specs.items()}
    evals = choose.evaluators(judge, persona_specs, gold, profiles, config.json_judge, config.logprob_judge)
    verdicts = ej.run_judges(evals, items)
    signals = {name: choose.signal_of(fn) for name, fn in evals.items()}
    optimised = optimised_on(judge, persona_specs, rl_adapter, cmaes_steering)
    circular = choose.circular(optimised, signals)
    versions = {
        "base": base_model.get("source_sha256", base_model["path"])[:12],
        "sft": file_version(sft_adapter["path"]),
        "rl": file_version(rl_adapter["path"]),
        "judge": judge.describe(),
    }
    topic = {c.id: c.topic for c in convs}
    provenance = {"optimised_on": optimised, "circular": circular, "signals": signals, "personas": len(gold)}
    rows = [
        turn_row(t, {name: v[i] for name, v in verdicts.items()}, versions, topic[t["conversation_id"]], provenance)
        for i, t in enumerate(turns)
    ]
    classifiers = [
        {
            "evaluator": name,
            "personas": len(gold),
            "chance_top1": _r(1 / len(gold), 3),
            "cv_accuracy_on_training_lines": _r(evals[name].judge.cv_accuracy, 3),
            "training_lines": sum(len(v) for v in gold.values()),
        }
        for name in CLASSIFIERS
    ]
    context.add_output_metadata(
        _judge_meta(rows, verdicts, config.agreement_tolerance)
        | {
            "versions": json.dumps(versions),
            "personas_evaluated": ", ".join(evaluated_personas(specs)),
            "evaluator_signals": md_table([{"evaluator": k, "signal": v} for k, v in signals.items()]),
            "optimised_on": md_table(
                [
                    {"method": m, "optimised_on": o or "none", "circular_evaluators": ", ".join(circular[m]) or "none"}
                    for m, o in optimised.items()
                ]
            ),
            "persona_id_classifiers": md_table(classifiers),
            "endings": md_table(endings(convs)),  # share of test dialogues the persona ended by a stop rule, and when
        }
    )
    return rows


def _judge_meta(rows: list[dict], verdicts: dict, tolerance: float) -> dict:
    methods = sorted({r["method"] for r in rows})
    by_turn = {m: sorted({r["turn"] for r in rows if r["method"] == m}) for m in methods}
    curve = {
        m: (
            by_turn[m],
            [stats.mean([r["adherence"] for r in rows if r["method"] == m and r["turn"] == t]) for t in by_turn[m]],
        )
        for m in methods
    }
    drift = [{"method": m, **_drift(rows, m)} for m in methods]
    return {
        "turns_judged": len(rows),
        "failed_judgements": sum(not r["judge_ok"] for r in rows),
        "by_method": md_table(
            [
                {
                    "method": m,
                    **{n: _r(stats.mean([r[f"eval_{n}"] for r in rows if r["method"] == m])) for n in verdicts},
                    **{
                        f"top1_{n}": _r(stats.mean([r[f"top1_{n}"] for r in rows if r["method"] == m]))
                        for n in CLASSIFIERS
                    },
                    "persona_breaks": sum(r["persona_break"] for r in rows if r["method"] == m),
                    "safety_pass": _r(stats.mean([r["safety_pass"] for r in rows if r["method"] == m])),
                }
                for m in methods
            ]
        ),
        "drift": md_table(drift),
        "evaluator_agreement_per_turn": md_table(
            ej.judge_agreement(verdicts, metrics=("adherence",), tolerance=tolerance)
        ),
        **png_meta(_plot_curve(curve), TABLE_PLOTS["judge_scores"], "consistency_by_turn"),
    }


def _plot_curve(curve: dict) -> bytes:
    from persona_pipeline.plots import line_plot

    return line_plot(curve, "Adherence by persona turn (held-out dialogues)", "persona turn", "adherence 0–1")


def _drift(rows: list[dict], method: str) -> dict:
    d = consistency_drift([(r["turn"], r["adherence"]) for r in rows if r["method"] == method])
    return {"slope_per_turn": _r(d.slope), "stderr": _r(d.stderr), "n": d.n, "drifting": d.drifting}


def _r(x, nd: int = 4):
    return stats.rounded(x, nd)


class SurveyReplicationConfig(ProfileConfig):
    PROFILE = {"max_new_tokens": "survey_answer_tokens"}

    test_fraction: float = 0.2  # must match survey_conversations' split
    max_new_tokens: int | None = None  # None → profile (survey_answer_tokens)
    seed: int = 0


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "json"},
    **GPU,
    description="Held-out survey items answered by the trained simulators (SFT, RL) and by the demographics-only "
    "prompt baseline: Likert exact/within-1, stance, similarity, rephrase consistency, fidelity + band.",
)
def survey_replication(
    context: dg.AssetExecutionContext,
    config: SurveyReplicationConfig,
    surveys: dict,
    base_model: dict,
    sft_adapter: dict,
    rl_adapter: dict,
) -> dict:
    from persona_pipeline.survey import split_items
    from persona_pipeline.survey_metrics import answer_items, minilm_encoder, score

    encoder = minilm_encoder()
    runs = {
        "sft": (policy_backend(base_model, sft_adapter["path"]), "trained"),
        "rl": (policy_backend(base_model, rl_adapter["path"]), "trained"),
        "prompt": (policy_backend(base_model, exact=True), "baseline"),
    }
    out, table = {}, []
    for sid, raw in surveys.items():
        survey = Survey(**raw)
        held = [i for i, side in split_items(survey, config.test_fraction, config.seed).items() if side == "test"]
        held = held[: profile().survey_eval_items or None]  # the demo profile answers a fixed slice
        for method, (backend, condition) in runs.items():
            answers = answer_items(backend, survey, held, condition, config.max_new_tokens)
            result = score(survey, answers, encoder)
            out[f"{sid}/{method}"] = {
                "persona_id": sid,
                "method": method,
                "versions": file_version(_adapter(method, sft_adapter, rl_adapter)),
                **result,
            }
            table.append(
                {
                    "person": sid,
                    "method": method,
                    "items": len(held),
                    "fidelity": _r(result["fidelity"], 3),
                    "band": result["band"],
                    **{
                        k: _r(v, 3)
                        for k, v in result["overall"].items()
                        if k
                        in (
                            "parse_rate",
                            "likert_exact",
                            "likert_within1",
                            "stance_accuracy",
                            "similarity",
                            "consistency",
                        )
                    },
                }
            )
    context.add_output_metadata({"results": md_table(table)})
    return out


def _adapter(method: str, sft_adapter: dict, rl_adapter: dict) -> str:
    return {"sft": sft_adapter["path"], "rl": rl_adapter["path"]}.get(method, "")


class LeaderboardConfig(dg.Config):
    min_dialogues: int = 10  # fewer paired dialogues → no comparison is called significant
    seed: int = 0


@dg.asset(
    group_name=GROUP,
    kinds={"parquet"},
    description="Persona × method under EVERY evaluator (voice score, persona-id classifiers, LLM judges with an "
    "endpoint): mean and 95 % CI over dialogues, paired Δ vs prompt-only on the same persona × topic × turn "
    "(dialogue bootstrap, sign-flip permutation, Holm), n, and which method was optimised against which evaluator.",
)
def leaderboard(
    context: dg.AssetExecutionContext, config: LeaderboardConfig, judge_scores: list[dict], survey_replication: dict
) -> list[dict]:
    from persona_pipeline import leaderboard as lb

    overall, per_persona = lb.board(judge_scores, config.min_dialogues, config.seed)
    fidelity = {(v["persona_id"], v["method"]): v["fidelity"] for v in survey_replication.values()}
    rows = [{**r, "survey_fidelity": fidelity.get((r["persona_id"], r["method"]))} for r in overall + per_persona]
    rows += [{"persona_id": pid, "method": m, "survey_fidelity": f} for (pid, m), f in fidelity.items()]
    classes = judge_scores[0].get("persona_id_classes") if judge_scores else None
    optimised = {r["method"]: (r["optimised_on"] or "none", r["circular_evaluators"] or "none") for r in overall}
    context.add_output_metadata(
        {
            "by_evaluator": md_table(lb.by_evaluator(overall, classes), limit=80),
            "optimised_on": md_table(
                [{"method": m, "optimised_on": o, "circular_evaluators": c} for m, (o, c) in optimised.items()]
            ),
            "evaluator_rank_agreement": md_table(lb.method_rank_agreement(overall)),
            "min_dialogues_for_significance": config.min_dialogues,
            "overall": md_table([brief(r) for r in overall]),
            "per_persona": md_table([brief(r) for r in per_persona], limit=60),
        }
    )
    return rows
