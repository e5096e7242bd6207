"""Multi-turn RL vs single-turn RL vs SFT vs prompt-only on held-out dialogues, paired, per turn.

Reads a finished pipeline home (after ``make demo`` or ``bench/demo.py``): its SFT adapter and
its multi-turn GRPO adapter (``rl_adapter``). It trains a *single-turn* GRPO adapter with the
very settings ``rl_adapter`` recorded (steps, generations, β, learning rate, reward judge) on
off-policy histories cut from the training dialogues: the baseline multi-turn RL must beat.
Then every method plays the same held-out dialogues against the base model as the assistant:
``--turns`` turns per dialogue, on held-out topics, with the same seeds.

Each persona line is scored by evaluators that no method was trained against: the persona-id
classifiers (character n-grams and MiniLM features), trained only on spec example lines and
the persona lines of the sessions SFT held out. The MiniLM voice score is printed too, marked
as the RL reward's own judge (circular for both RL adapters). Differences are paired on
(persona, topic, turn) with the dialogue as the unit of resampling
(``stats.paired_by_cluster``).

    .venv/bin/python bench/rl_modes.py --home <demo home> [--personas 8] [--topics 2] [--turns 10]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def _assets(home: Path) -> dict:
    import pyarrow.parquet as pq

    a = home / "assets"
    table = lambda name: pq.read_table(a / f"{name}.parquet").to_pylist()
    doc = lambda name: json.loads((a / f"{name}.json").read_text())
    return {
        "conversations": table("conversations"),
        "persona_specs": table("persona_specs"),
        "topics": table("topics"),
        "surveys": doc("surveys"),
        "base_model": doc("base_model"),
        "sft_adapter": doc("sft_adapter"),
        "rl_adapter": doc("rl_adapter"),
    }


def train_single_turn(a: dict, out: Path) -> float:
    """A single-turn GRPO adapter with ``rl_adapter``'s recorded settings; returns training seconds."""
    from persona_pipeline.contracts import Conversation
    from persona_pipeline.persona_simulator import definitions, voice_judge
    from persona_pipeline.settings import profile
    from persona_pipeline.train_rl import RlSettings, make_reward, rl_prompts, train_rl
    from persona_pipeline.train_sft import LoraSettings

    recorded = json.loads((Path(a["rl_adapter"]["path"]) / "training_summary.json").read_text())["settings"]
    s = RlSettings(**{**recorded, "lora": LoraSettings(**recorded["lora"]), "multiturn": False})
    specs, surveys = a["persona_specs"], a["surveys"]
    defs, full = definitions(specs, surveys), definitions(specs, surveys, compact=False)
    convs = [Conversation(**c) for c in a["conversations"]]
    n = s.max_steps * s.groups_per_step
    prompts = rl_prompts(
        convs, defs, n, False, s.seed, s.boring_share, judge_specs=full, max_depth=profile().rl_max_depth
    )
    reward = make_reward(voice_judge(specs, surveys), s.judge_method)
    r = train_rl(a["base_model"]["path"], Path(a["sft_adapter"]["path"]), prompts, reward, s, out, {"mode": "single"})
    return r.seconds


def play(a: dict, single: Path, personas: int, topics: int, turns: int, tokens: int, seed: int) -> list:
    """The held-out dialogues of every method (same personas, topics, seeds)."""
    from persona_pipeline.backends import BackendSpec, make_backend
    from persona_pipeline.contracts import PersonaSpec, Topic
    from persona_pipeline.eval_dialogues import Contestant, run_dialogues
    from persona_pipeline.persona_simulator import definitions
    from persona_pipeline.policy import checkpoint_backends, policy_backend
    from persona_pipeline.prompts import simulator_prompt, teacher_chat
    from persona_pipeline.settings import home
    from persona_pipeline.teacher_dialogues import plan_dialogues

    specs = {s["id"]: PersonaSpec(**s) for s in a["persona_specs"]}
    ids = sorted(specs)[:personas]
    defs = definitions(a["persona_specs"])
    all_topics = [Topic(**t) for t in a["topics"]]
    held = {pid: [d.topic for d in plan_dialogues(specs[pid], all_topics, topics, seed, "heldout")] for pid in ids}
    backends = checkpoint_backends(a["base_model"], a["sft_adapter"], a["rl_adapter"])
    backends["rl_single"] = policy_backend(a["base_model"], str(single))
    people = []
    for pid in ids:
        sim = lambda topic, history, pid=pid: simulator_prompt(pid, defs[pid], history, topic=topic)
        people += [
            Contestant("prompt", pid, "base", lambda t, h, s=specs[pid]: teacher_chat(s, t, h)),
            Contestant("sft", pid, "sft", sim),
            Contestant("rl_multiturn", pid, "rl", sim),
            Contestant("rl_single", pid, "rl_single", sim),
        ]
    assistant = make_backend(BackendSpec(model=a["base_model"]["path"]), home())
    return run_dialogues(people, held, backends, assistant, turns, tokens, tokens, seed=seed)


def score(a: dict, convs: list) -> dict[str, dict[tuple, float]]:
    """evaluator → {(method, persona, topic, turn): score} for every persona line."""
    from persona_pipeline.eval_dialogues import persona_turns
    from persona_pipeline.eval_methods import gold_lines
    from persona_pipeline.judging.base import JudgeItem
    from persona_pipeline.judging.persona_id import PersonaIdClassifier
    from persona_pipeline.persona_simulator import voice_judge

    gold = gold_lines(a["persona_specs"], a["conversations"], a["sft_adapter"])
    topic = {c.id: c.topic for c in convs}
    turns = [t for c in convs for t in persona_turns(c)]
    items = [JudgeItem("", t["history"], t["line"], t["persona_id"]) for t in turns]
    keys = [(t["method"], t["persona_id"], topic[t["conversation_id"]], t["turn"]) for t in turns]
    out: dict[str, dict[tuple, float]] = {}
    for features in ("ngram", "minilm"):
        clf = PersonaIdClassifier(gold, features)
        scores = clf.score(items)
        out[f"persona_id_{features}_p"] = {k: s.value for k, s in zip(keys, scores) if s.value is not None}
        out[f"persona_id_{features}_top1"] = {
            k: float(s.details["top1"]) for k, s in zip(keys, scores) if s.value is not None
        }
    voiced = voice_judge(a["persona_specs"], a["surveys"]).score(items)  # names its persona by persona_id
    out["voice (the RL reward's judge: circular for both RL adapters)"] = {
        k: s.value for k, s in zip(keys, voiced) if s.value is not None
    }
    return out


def _keyed(values: dict[tuple, float], method: str, after: int = 0) -> dict[tuple, float]:
    """One method's scores keyed ((persona, topic) = the dialogue, turn), turns after ``after`` only."""
    return {((p, tp), t): x for (m, p, tp, t), x in values.items() if m == method and t > after}


def tables(scored: dict[str, dict[tuple, float]], methods: list[str], turns: int) -> str:
    """Markdown: per evaluator, mean per method per persona turn, then paired Δ vs each baseline."""
    import numpy as np

    from persona_pipeline import stats

    lines = []
    for name, values in scored.items():
        lines += [f"\n#### {name}\n", "| method | " + " | ".join(f"t{t}" for t in range(1, turns + 1)) + " | all |"]
        lines.append("|---" * (turns + 2) + "|")
        for m in methods:
            cells = []
            for t in range(1, turns + 1):
                v = [x for (mm, _, _, tt), x in values.items() if mm == m and tt == t]
                cells.append(f"{np.mean(v):.3f}" if v else "–")
            allv = [x for (mm, *_), x in values.items() if mm == m]
            lines.append(f"| {m} | " + " | ".join(cells) + f" | {np.mean(allv):.3f} (n={len(allv)}) |")
        lines += ["", "| comparison | Δ (paired) | 95% CI | p | dialogues | late turns Δ (last 2 persona turns) |"]
        lines.append("|---|---|---|---|---|---|")
        for m, b in (("rl_multiturn", "rl_single"), ("rl_multiturn", "sft"), ("rl_single", "sft"), ("sft", "prompt")):
            c = stats.paired_by_cluster(_keyed(values, m), _keyed(values, b))
            late = stats.paired_by_cluster(_keyed(values, m, turns - 2), _keyed(values, b, turns - 2))
            lines.append(
                f"| {m} − {b} | {c.diff:+.3f} | [{c.ci_low:+.3f}, {c.ci_high:+.3f}] | {c.p_value:.3f} | {c.n_method} | "
                f"{late.diff:+.3f} [{late.ci_low:+.3f}, {late.ci_high:+.3f}] |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", required=True, help="a finished pipeline home (its assets/ and models/)")
    ap.add_argument("--personas", type=int, default=8)
    ap.add_argument("--topics", type=int, default=2, help="held-out topics per persona (one dialogue each)")
    ap.add_argument("--turns", type=int, default=10, help="turns per dialogue (persona first)")
    ap.add_argument("--tokens", type=int, default=16, help="new tokens per line")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.environ["PERSONA_PIPELINE_HOME"] = str(Path(args.home).resolve())
    a = _assets(Path(args.home))
    single = Path(args.home) / "bench_rl_single"
    t0 = time.perf_counter()
    if not (single / "adapter_model.safetensors").exists():
        print(f"single-turn GRPO trained in {train_single_turn(a, single):.0f} s")
    convs = play(a, single, args.personas, args.topics, args.turns, args.tokens, args.seed)
    print(f"{len(convs)} held-out dialogues of {args.turns} turns in {time.perf_counter() - t0:.0f} s")
    scored = score(a, convs)
    print(tables(scored, ["prompt", "sft", "rl_single", "rl_multiturn"], (args.turns + 1) // 2))


if __name__ == "__main__":
    main()
