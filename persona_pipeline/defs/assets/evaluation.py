"""Evaluation group: judged test dialogues per method, survey replication, the leaderboard,
the HTML report, and the human-evaluation page whose ratings flow back in."""

import hashlib
import json
from pathlib import Path

import dagster as dg
import torch

from persona_pipeline import eval_judges as ej
from persona_pipeline import stats
from persona_pipeline import steer_search as ss
from persona_pipeline import vectors as vec
from persona_pipeline.contracts import PersonaSpec, Survey, Topic
from persona_pipeline.defs.assets._common import ALL, GPU, md_table, png_meta
from persona_pipeline.defs.assets.steering import _policy
from persona_pipeline.defs.resources import ModelResource
from persona_pipeline.dialogue_drift import consistency_drift
from persona_pipeline.eval_dialogues import Contestant, endings, persona_turns, run_dialogues
from persona_pipeline.judging import choose
from persona_pipeline.leaderboard import CLASSIFIERS, EVALUATORS
from persona_pipeline.prompts import neutral_user_chat, simulator_prompt, teacher_chat
from persona_pipeline.quality import PERSONA_BREAK, text_safety_flags
from persona_pipeline.settings import profile
from persona_pipeline.simulate import plan_dialogues
from persona_pipeline.simulator import definitions

GROUP = "evaluation"
METHODS = ("prompt", "sft", "rl", "steering", "cmaes")


def file_version(path: str | Path) -> str:
    """Short content hash of an artifact (adapter weights, vectors): what exactly was scored."""
    p = Path(path)
    target = p / "adapter_model.safetensors" if p.is_dir() else p
    if not target.exists():
        return "missing"
    return hashlib.sha256(target.read_bytes()).hexdigest()[:12]


def _steering_vector(pid: str, cmaes: dict, sweep_rows: list[dict], persona_vectors: dict) -> tuple[torch.Tensor, int]:
    """The single trait most weighted for this persona, at its sweep's best (layer, coef), signed by the weight."""
    weights = cmaes[pid]["weights"]
    trait = max(weights, key=lambda t: abs(weights[t]))
    summary = ss.summarise_sweep([r for r in sweep_rows if r["trait"] == trait])
    best = ss.best_point(summary) or min(
        (s for s in summary if s["rel_coef"] > 0), key=lambda s: (s["rel_coef"], s["layer"])
    )
    v = persona_vectors[trait]
    i = v["layers"].index(best["layer"])
    unit = vec.load_tensors(v["path"])["mean_diff_response_avg"][i]
    sign = 1.0 if weights[trait] >= 0 else -1.0
    return sign * best["rel_coef"] * v["layer_norms"][i] * unit / unit.norm(), best["layer"]


def evaluated_personas(ids) -> list[str]:
    """Every persona, or — where the profile caps ``eval_personas`` (the 2-core demo) — a fixed,
    seeded spread of them, so held-out dialogues stay affordable and the choice is reproducible."""
    ids, n = sorted(ids), profile().eval_personas
    return ids if not n or n >= len(ids) else sorted(ss.seeded_sample(ids, n, "eval-personas"))


def contestants(
    persona_specs: list[dict], cmaes: dict, sweep_rows: list[dict], persona_vectors: dict, methods: list[str]
) -> list[Contestant]:
    """Every (method, persona): which model speaks, with which prompt and steering."""
    specs = {s["id"]: PersonaSpec(**s) for s in persona_specs}
    defs = definitions(persona_specs)
    out = []
    for pid in evaluated_personas(specs):
        sim = lambda topic, turns, pid=pid: simulator_prompt(pid, defs[pid], turns, topic=topic)
        neutral = lambda topic, turns: neutral_user_chat(topic, turns)
        made = {
            "prompt": lambda pid=pid: Contestant(
                "prompt", pid, "base", lambda t, h, s=specs[pid]: teacher_chat(s, t, h)
            ),
            "sft": lambda pid=pid, sim=sim: Contestant("sft", pid, "sft", sim),
            "rl": lambda pid=pid, sim=sim: Contestant("rl", pid, "rl", sim),
            "steering": lambda pid=pid, neutral=neutral: Contestant(
                "steering", pid, "base", neutral, *_steering_vector(pid, cmaes, sweep_rows, persona_vectors)
            ),
            "cmaes": lambda pid=pid, neutral=neutral: Contestant(
                "cmaes", pid, "base", neutral, vec.load_tensors(cmaes[pid]["path"])["vector"], cmaes[pid]["layer"]
            ),
        }
        out += [made[m]() for m in methods if pid in cmaes or m in ("prompt", "sft", "rl")]
    return out


class JudgeScoresConfig(dg.Config):
    methods: list[str] = list(METHODS)
    topics: int | None = None
    turns: int | None = None
    json_judge: str = "auto"  # auto: the seed's JSON judge with endpoint judges; "on" / "off"
    logprob_judge: str = (
        "auto"  # auto: the 0–10 logprob reward judge with endpoint judges (the 135M judge rarely answers)
    )
    agreement_tolerance: float = 0.2
    seed: int = 0


def gold_lines(persona_specs: list[dict], conversations: list[dict], sft_adapter: dict) -> dict[str, list[str]]:
    """What the persona-id classifiers learn from: each persona's spec example lines plus its own lines in
    the conversations SFT held out (whole sessions, as the adapter's recorded split says) — never a line
    any evaluated method generated, never a line an adapter trained on."""
    from persona_pipeline.contracts import Conversation
    from persona_pipeline.splits import base_key, heldout_conversations

    convs = [Conversation(**c) for c in conversations]
    held_sessions = set((sft_adapter.get("split") or {}).get("heldout_sessions") or [])
    held = (
        {c.id for c in convs if base_key(c.id) in held_sessions} if held_sessions else heldout_conversations(convs, 0.1)
    )
    out = {s["id"]: list(PersonaSpec(**s).example_lines) for s in persona_specs}
    for pid in out:
        out[pid] += ej.persona_lines([c for c in convs if c.id in held], pid)
    return out


def optimised_on(judge: ModelResource, persona_specs: list[dict], rl_adapter: dict, cmaes: dict) -> dict:
    """method → the judge signal it was optimised against (None: not optimised against any judge)."""
    cma = {v.get("judge_signal") for v in cmaes.values()} - {None}
    return {
        "prompt": None,
        "sft": None,  # next-token loss on gold lines, no judge
        "rl": rl_adapter.get("judge_signal") or choose.optimised_signal("reward", judge, persona_specs),
        "steering": choose.optimised_signal("filter", judge, persona_specs),  # sweep point picked by the trait judge
        "cmaes": cma.pop() if len(cma) == 1 else choose.optimised_signal("search_fitness", judge, persona_specs),
    }


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "parquet"},
    **GPU,
    ins={
        "steering_sweep": dg.AssetIn(partition_mapping=ALL),
        "persona_vectors": dg.AssetIn(partition_mapping=ALL),
        "cmaes_steering": dg.AssetIn(partition_mapping=ALL),
    },
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
        pid: [d.topic for d in plan_dialogues(s, all_topics, config.topics or p.eval_topics, config.seed, "heldout")]
        for pid, s in specs.items()
    }
    backends = {
        "base": _policy(base_model),
        "sft": _policy(base_model, sft_adapter["path"]),
        "rl": _policy(base_model, rl_adapter["path"]),
    }
    convs = run_dialogues(
        contestants(persona_specs, cmaes_steering, steering_sweep, persona_vectors, config.methods),
        held,
        backends,
        assistant.backend(),
        max(10, config.turns or p.eval_turns),
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
        _row(t, {name: v[i] for name, v in verdicts.items()}, versions, topic[t["conversation_id"]], provenance)
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


def _row(turn: dict, verdicts: dict, versions: dict, topic: str, provenance: dict) -> dict:
    """One judged persona turn. Every evaluator has its own ``eval_<name>`` column (0–1; None where it
    did not run or failed) and the classifiers a ``top1_<name>`` (predicted persona == true persona).
    ``dialogue`` (persona × topic) is the same for every method: the unit the leaderboard pairs and
    resamples. ``adherence`` is the primary judge's (the seed's JSON judge with an endpoint, else the
    voice score) for the drift curves; ``circular_evaluators`` names the evaluators that share the
    signal this method was optimised against."""
    main = verdicts.get("persona_judge")
    primary = main if main is not None else verdicts["voice"]
    version = versions["base"] if turn["method"] in ("prompt", "steering", "cmaes") else versions[turn["method"]]
    top1 = lambda name: (
        None
        if verdicts[name].predicted_persona is None
        else float(verdicts[name].predicted_persona == turn["persona_id"])
    )
    return {
        "persona_id": turn["persona_id"],
        "method": turn["method"],
        "conversation_id": turn["conversation_id"],
        "topic": topic,
        "dialogue": f"{turn['persona_id']}|{topic}",
        "turn": turn["turn"],
        "line": turn["line"],
        "history": json.dumps(turn["history"]),
        "adherence": primary.adherence,
        "primary_judge": primary.judge,
        **{f"eval_{n}": verdicts[n].adherence if n in verdicts else None for n in EVALUATORS},
        **{f"top1_{n}": top1(n) for n in CLASSIFIERS},
        "persona_id_classes": provenance["personas"],
        "optimised_on": provenance["optimised_on"][turn["method"]],
        "circular_evaluators": ", ".join(provenance["circular"][turn["method"]]),
        "consistency": main.consistency if main else None,
        "quality": main.quality if main else None,
        "safety_pass": (main.safety_pass if main and main.ok else not text_safety_flags(turn["line"])),
        "persona_break": bool(PERSONA_BREAK.search(turn["line"])),
        "reasoning": main.reasoning if main else "",
        "judge_ok": all(v.ok for v in verdicts.values()),
        "judge_errors": "; ".join(f"{k}: {v.error}" for k, v in verdicts.items() if not v.ok),
        "model_version": version,
        "judge": versions["judge"],
    }


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
        **png_meta(_plot_curve(curve), "consistency_by_turn", "consistency_by_turn"),
    }


def _plot_curve(curve: dict) -> bytes:
    from persona_pipeline.plots import line_plot

    return line_plot(curve, "Adherence by persona turn (held-out dialogues)", "persona turn", "adherence 0–1")


def _drift(rows: list[dict], method: str) -> dict:
    d = consistency_drift([(r["turn"], r["adherence"]) for r in rows if r["method"] == method])
    return {"slope_per_turn": _r(d.slope), "stderr": _r(d.stderr), "n": d.n, "drifting": d.drifting}


def _r(x, nd: int = 4):
    return stats.rounded(x, nd)


class SurveyReplicationConfig(dg.Config):
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
        "sft": (_policy(base_model, sft_adapter["path"]), "trained"),
        "rl": (_policy(base_model, rl_adapter["path"]), "trained"),
        "prompt": (_policy(base_model), "baseline"),
    }
    out, table = {}, []
    for sid, raw in surveys.items():
        survey = Survey(**raw)
        held = [i for i, side in split_items(survey, config.test_fraction, config.seed).items() if side == "test"]
        held = held[: profile().survey_eval_items or None]  # the demo profile answers a fixed slice
        for method, (backend, condition) in runs.items():
            answers = answer_items(
                backend, survey, held, condition, config.max_new_tokens or profile().survey_answer_tokens
            )
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
            "overall": md_table([_brief(r) for r in overall]),
            "per_persona": md_table([_brief(r) for r in per_persona], limit=60),
        }
    )
    return rows


def _brief(r: dict) -> dict:
    ci = lambda m: f"{_r(r.get(m + '_mean'), 3)} [{_r(r.get(m + '_ci_low'), 3)}, {_r(r.get(m + '_ci_high'), 3)}]"
    return {
        "persona": r["persona_id"],
        "method": r["method"],
        "adherence (95% CI)": ci("adherence"),
        "Δ vs prompt": _r(r.get("adherence_diff"), 3),
        "p (Holm)": _r(r.get("adherence_p_holm"), 3),
        "verdict": r.get("adherence_verdict"),
        "breaks": _r(r.get("persona_break_mean"), 3),
        "n turns": r.get("adherence_n"),
        "n dialogues": r.get("adherence_n_units"),
        "circular evaluators": r.get("circular_evaluators") or None,
    }
