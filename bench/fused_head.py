"""Benchmark: TRL's fused LM head scoring every position vs only the labelled ones, SFT on this CPU.

TRL scores every row position off Triton devices (``persona_pipeline/trl_scoring.py``); the
pipeline switches it to labelled positions only. Real pairs (the shipped HITL sessions,
unrolled), batch 1, the demo's bf16 autocast; alternating runs so machine load hits both.
Prints seconds per step for each and the ratio, and the losses (they must be identical).

    .venv/bin/python bench/fused_head.py [--steps 6] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("PERSONA_PIPELINE_CPU_DTYPE", "bfloat16")  # the demo's training numerics
    import trl.trainer.utils as tu

    from bench.training import real_pairs, sft_run
    from persona_pipeline import trl_scoring
    from persona_pipeline.modelio import convert_embedded, default_base_dir
    from persona_pipeline.settings import home

    base = default_base_dir(home())
    convert_embedded(base)
    _, _, pairs = real_pairs()
    trl_scoring.score_labelled_positions_only()
    compact = tu._use_triton
    switches = {"every position": compact.original, "labelled only": compact}
    trl_scoring.score_labelled_positions_only = lambda: True  # train_sft must not override this run's choice
    best: dict[str, float] = {}
    losses: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for name, switch in switches.items():
            tu._use_triton = switch
            with tempfile.TemporaryDirectory() as tmp:
                r = sft_run(base, pairs, args.steps, 1, Path(tmp) / "sft")
            best[name] = min(best.get(name, r.seconds), r.seconds)
            losses[name] = [round(h["loss"], 4) for h in r.log_history if "loss" in h] + [round(r.eval_loss, 4)]
    print(f"SFT on {len(pairs)} real pairs, batch 1, {args.steps} steps, best of {args.rounds}")
    for name in switches:
        print(f"  {name:15s}: {best[name] / args.steps:5.2f} s/step   losses {losses[name]}")
    print(f"  speed-up: {best['every position'] / best['labelled only']:.2f}x")


if __name__ == "__main__":
    main()
