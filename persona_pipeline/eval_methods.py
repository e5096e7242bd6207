"""The methods the evaluation compares, made concrete: who speaks for each (method, persona), with which
prompt, adapter and steering; which personas are evaluated; what each method was optimised against;
which gold lines the persona-id classifiers learn from; and one judged turn as a leaderboard row.

Both ``judge_scores`` (held-out dialogues) and ``human_eval_page`` (next lines for people to rate)
build their contestants here, so the two always compare the same things.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from . import eval_judges as ej
from . import steer_search as ss
from . import vectors as vec
from .contracts import PersonaSpec
from .control_vector import ControlVector
from .eval_dialogues import Contestant
from .leaderboard import CLASSIFIERS, EVALUATORS
from .persona_simulator import definitions
from .prompts import neutral_user_chat, simulator_prompt, teacher_chat
from .quality import PERSONA_BREAK, text_safety_flags
from .settings import profile

METHODS = ("prompt", "sft", "rl", "steering", "cmaes")


def file_version(path: str | Path) -> str:
    """Short content hash of an artifact (adapter weights, vectors): what exactly was scored."""
    p = Path(path)
    target = p / "adapter_model.safetensors" if p.is_dir() else p
    if not target.exists():
        return "missing"
    return hashlib.sha256(target.read_bytes()).hexdigest()[:12]


def steering_vector(pid: str, cmaes: dict, sweep_rows: list[dict], persona_vectors: dict) -> tuple[torch.Tensor, int]:
    """The single trait most weighted for this persona, at its sweep's best (layer, coef), signed by the weight."""
    weights = cmaes[pid]["weights"]
    trait = max(weights, key=lambda t: abs(weights[t]))
    summary = ss.summarise_sweep([r for r in sweep_rows if r["trait"] == trait])
    best = ss.best_point(summary) or min(
        (s for s in summary if s["rel_coef"] > 0), key=lambda s: (s["rel_coef"], s["layer"])
    )
    sign = 1.0 if weights[trait] >= 0 else -1.0
    return ControlVector.load(persona_vectors[trait]).push(best["layer"], sign * best["rel_coef"]), best["layer"]


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
    cmaes = {pid: r for pid, r in cmaes.items() if r.get("searched", True)}  # skipped personas hold no direction
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
                "steering", pid, "base", neutral, *steering_vector(pid, cmaes, sweep_rows, persona_vectors)
            ),
            "cmaes": lambda pid=pid, neutral=neutral: Contestant(
                "cmaes", pid, "base", neutral, vec.load_tensors(cmaes[pid]["path"])["vector"], cmaes[pid]["layer"]
            ),
        }
        out += [made[m]() for m in methods if pid in cmaes or m in ("prompt", "sft", "rl")]
    return out


def gold_lines(persona_specs: list[dict], conversations: list[dict], sft_adapter: dict) -> dict[str, list[str]]:
    """What the persona-id classifiers learn from: each persona's spec example lines plus its own lines in
    the conversations SFT held out (whole sessions, as the adapter's recorded split says) — never a line
    any evaluated method generated, never a line an adapter trained on."""
    from .contracts import Conversation
    from .splits import base_key, heldout_conversations

    convs = [Conversation(**c) for c in conversations]
    held_sessions = set((sft_adapter.get("split") or {}).get("heldout_sessions") or [])
    held = (
        {c.id for c in convs if base_key(c.id) in held_sessions} if held_sessions else heldout_conversations(convs, 0.1)
    )
    out = {s["id"]: list(PersonaSpec(**s).example_lines) for s in persona_specs}
    for pid in out:
        out[pid] += ej.persona_lines([c for c in convs if c.id in held], pid)
    return out


def optimised_on(judge, persona_specs: list[dict], rl_adapter: dict, cmaes: dict) -> dict:
    """method → the judge signal it was optimised against (None: not optimised against any judge)."""
    from .judging import choose

    cma = {v.get("judge_signal") for v in cmaes.values()} - {None}
    return {
        "prompt": None,
        "sft": None,  # next-token loss on gold lines, no judge
        "rl": rl_adapter.get("judge_signal") or choose.optimised_signal("reward", judge, persona_specs),
        "steering": choose.optimised_signal("filter", judge, persona_specs),  # sweep point picked by the trait judge
        "cmaes": cma.pop() if len(cma) == 1 else choose.optimised_signal("search_fitness", judge, persona_specs),
    }


def turn_row(turn: dict, verdicts: dict, versions: dict, topic: str, provenance: dict) -> dict:
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
