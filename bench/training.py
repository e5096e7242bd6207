"""Benchmark: SFT tokens/s (batch 1 vs batch N, side by side) and GRPO seconds/step, embedded model.

Trains on real pairs unrolled from the HITL writing-room data in data_assets/,
so it needs no pipeline run. Each run writes throwaway adapters to a temp dir.

    .venv/bin/python bench/training.py [--steps 3] [--batch 4] [--grpo-steps 2]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from persona_pipeline import loaders
from persona_pipeline.backends import BackendSpec, make_backend
from persona_pipeline.hitl import expand_paths
from persona_pipeline.modelio import convert_embedded, default_base_dir
from persona_pipeline.persona_simulator import definitions
from persona_pipeline.settings import data_root, home
from persona_pipeline.train_rl import RlSettings, make_reward, rl_prompts, train_rl
from persona_pipeline.train_sft import SftSettings, build_mixture, train_sft
from persona_pipeline.unroll import unroll


def real_pairs():
    specs = [s.model_dump() for s in loaders.load_personas(data_root() / "personas")]
    defs = definitions(specs)
    convs = [c for r in loaders.load_hitl(data_root() / "hitl") for c in expand_paths(r)]
    return convs, defs, [p.model_dump(mode="json") for c in convs for p in unroll(c, defs[c.persona_id])]


def sft_run(base: Path, pairs: list[dict], steps: int, batch: int, out: Path):
    s = SftSettings(max_steps=steps, batch_size=batch, eval_fraction=0.05, max_eval_rows=4)
    train, ev, _ = build_mixture(pairs, [], s)
    return train_sft(base, train, ev, s, out, {"base_model": str(base)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--grpo-steps", type=int, default=2)
    args = ap.parse_args()
    base = default_base_dir(home())
    convert_embedded(base)
    convs, defs, pairs = real_pairs()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        one = sft_run(base, pairs, args.steps, 1, tmp / "sft1")
        many = sft_run(base, pairs, args.steps, args.batch, tmp / "sftN")
        print(f"SFT, {len(pairs)} real pairs, LoRA r32 all projections, fp32 CPU, {args.steps} steps")
        print(f"  batch 1         : {one.tokens_per_second:7.1f} tokens/s  ({one.seconds / args.steps:.1f} s/step)")
        print(
            f"  batch {args.batch:<10}: {many.tokens_per_second:7.1f} tokens/s  ({many.seconds / args.steps:.1f} s/step)"
        )
        print(f"  ratio (batch {args.batch} / batch 1 tokens/s): {many.tokens_per_second / one.tokens_per_second:.2f}x")
        judge = make_backend(BackendSpec(model=str(base)), home())
        prompts = rl_prompts(convs, defs, 16, heldout=False)
        rs = RlSettings(max_steps=args.grpo_steps, num_generations=4, max_completion_length=32)
        rl = train_rl(base, tmp / "sft1", prompts, make_reward(judge, "logprob"), rs, tmp / "rl", {})
        print(f"GRPO, 4 generations x 32 tokens, beta {rs.beta}, logprob judge = embedded model")
        print(f"  {rl.seconds_per_step:.1f} s/step over {args.grpo_steps} steps")


if __name__ == "__main__":
    main()
