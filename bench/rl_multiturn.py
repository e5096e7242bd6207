"""Benchmark: multi-turn on-policy GRPO on the embedded model — seconds/step, reward variance, KL.

Trains a short SFT adapter on the HITL writing-room pairs, then runs GRPO with K-turn rollouts
against the embedded model as the assistant, rewarded by the MiniLM voice judge (the judge
``reward`` gets with the local judge model) plus the three consistency terms. Prints per-step
reward / KL / zero-variance share and the seconds per step (what the demo profile is sized on).

    .venv/bin/python -m bench.rl_multiturn [--sft-steps 4] [--steps 3] [--turns 3] [--generations 4]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bench.training import real_pairs
from persona_pipeline import loaders
from persona_pipeline.backends import BackendSpec, make_backend
from persona_pipeline.modelio import convert_embedded, default_base_dir
from persona_pipeline.persona_simulator import definitions, voice_judge
from persona_pipeline.rl_rollouts import RolloutSettings, make_rollout_func, rollout_seeds
from persona_pipeline.settings import data_root, home
from persona_pipeline.train_rl import RlSettings, multiturn_rewards, train_rl
from persona_pipeline.train_sft import SftSettings, build_mixture, train_sft


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sft-steps", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--groups", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--lr", type=float, default=2e-4)
    a = ap.parse_args()
    base = default_base_dir(home())
    convert_embedded(base)
    convs, defs, pairs = real_pairs()
    specs = [s.model_dump() for s in loaders.load_personas(data_root() / "personas")]
    full = definitions(specs, compact=False)
    from persona_pipeline.train_rl import consistency_claims

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        s = SftSettings(max_steps=a.sft_steps, batch_size=2, eval_fraction=0.05, max_eval_rows=4)
        train, ev, _ = build_mixture(pairs, [], s)
        train_sft(base, train, ev, s, Path(tmp) / "sft", {})
        print(f"sft {a.sft_steps} steps: {time.perf_counter() - t0:.1f}s")
        ro = RolloutSettings(turns=a.turns, persona_tokens=a.tokens, assistant_tokens=a.tokens, probe_tokens=a.tokens)
        seeds = rollout_seeds(convs, defs, a.groups * a.steps, judge_specs=full)
        funcs, weights = multiturn_rewards(voice_judge(specs), "embedding", consistency_claims(specs, full), ro.weights)
        assistant = make_backend(BackendSpec(model=str(base)), home())
        rs = RlSettings(
            max_steps=a.steps,
            num_generations=a.generations,
            groups_per_step=a.groups,
            max_completion_length=a.tokens,
            learning_rate=a.lr,
        )
        t0 = time.perf_counter()
        r = train_rl(
            base,
            Path(tmp) / "sft",
            seeds,
            funcs,
            rs,
            Path(tmp) / "rl",
            {},
            make_rollout_func(seeds, defs, assistant, ro),
            weights,
        )
        total = time.perf_counter() - t0
    keys = (
        "step",
        "reward",
        "reward_std",
        "kl",
        "frac_reward_zero_std",
        "rewards/persona_judge/mean",
        "rewards/qa_consistency/mean",
    )
    for h in r.log_history:
        if "kl" in h:
            print(json.dumps({k: round(h[k], 5) if isinstance(h[k], float) else h[k] for k in keys if k in h}))
    print(
        f"grpo {a.steps} steps: {r.seconds:.1f}s train ({r.seconds_per_step:.1f}s/step), {total:.1f}s with merge+save"
    )
    print(f"zero-variance group share: {r.zero_std_share:.2f}")


if __name__ == "__main__":
    main()
