"""Benchmark: fp32 vs bf16 on this CPU — batched generation and LoRA SFT steps, side by side.

The demo profile's ``cpu_dtype: bfloat16`` rests on this ratio: generation loads bf16
weights (``modelio.inference_options``) and training keeps fp32 weights with bf16 autocast
(``modelio.mixed_bf16``). Prints tokens/s for both, the ratio, how many greedy outputs agree
across dtypes, and the SFT seconds/step and losses for both.

    .venv/bin/python bench/dtype.py [--n 16] [--max-new-tokens 32] [--sft-steps 4]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bench.generation import build_chats, count_tokens
from persona_pipeline.backends import SamplingParams
from persona_pipeline.backends.local import LocalBackend
from persona_pipeline.modelio import CPU_DTYPE_ENV, LoadOptions, convert_embedded, default_base_dir
from persona_pipeline.settings import home


def generate(dtype: str, chats: list, params: SamplingParams) -> tuple[list[str], float, LocalBackend]:
    base = default_base_dir(home())
    backend = LocalBackend.from_pretrained(base, batch_size=len(chats), opts=LoadOptions(dtype=dtype))
    backend.complete(chats[:2], SamplingParams(max_new_tokens=4, temperature=0))  # warm-up
    start = time.perf_counter()
    out = backend.complete(chats, params)
    return out, time.perf_counter() - start, backend


def sft(dtype: str, steps: int) -> tuple[float, list[float]]:
    from bench.training import real_pairs, sft_run

    os.environ[CPU_DTYPE_ENV] = dtype  # what train_sft reads for its bf16 autocast flag
    _, _, pairs = real_pairs()
    with tempfile.TemporaryDirectory() as tmp:
        r = sft_run(default_base_dir(home()), pairs, steps, 1, Path(tmp) / "sft")
    return r.seconds / steps, [round(h["loss"], 3) for h in r.log_history if "loss" in h]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--sft-steps", type=int, default=4)
    args = ap.parse_args()
    convert_embedded(default_base_dir(home()))
    chats, params = build_chats(args.n), SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0)
    runs = {d: generate(d, chats, params) for d in ("float32", "bfloat16")}
    (f32, t32, b32), (b16, t16, _) = runs["float32"], runs["bfloat16"]
    n32, n16 = count_tokens(b32, f32), count_tokens(b32, b16)
    print(f"generation: {args.n} chats in one batch, greedy, max_new_tokens={args.max_new_tokens}")
    print(f"  float32 : {t32:6.2f} s  {n32 / t32:7.1f} tokens/s")
    print(f"  bfloat16: {t16:6.2f} s  {n16 / t16:7.1f} tokens/s")
    print(f"  speed-up (tokens/s bf16 / fp32): {(n16 / t16) / (n32 / t32):.2f}x")
    print(f"  greedy outputs identical across dtypes: {sum(a == b for a, b in zip(f32, b16))}/{args.n}")
    s32, l32 = sft("float32", args.sft_steps)
    s16, l16 = sft("bfloat16", args.sft_steps)
    print(f"SFT, LoRA, batch 1, {args.sft_steps} steps on the HITL pairs")
    print(f"  fp32               : {s32:5.2f} s/step  losses {l32}")
    print(f"  fp32 + bf16 autocast: {s16:5.2f} s/step  losses {l16}")
    print(f"  speed-up: {s32 / s16:.2f}x")


if __name__ == "__main__":
    main()
