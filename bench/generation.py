"""Benchmark: one-at-a-time vs batched greedy generation with the embedded model.

Why: LocalBackend pads a whole batch into one ``generate`` call; this measures
what that buys on this machine, and whether left padding changes greedy output.

    .venv/bin/python bench/generation.py [--n 32] [--max-new-tokens 64] [--repeat 3] [--threads 1]

On a shared machine, other processes skew CPU timings badly (torch's threads
wait for each other); ``--threads 1`` and ``--repeat`` make runs comparable.
"""

from __future__ import annotations

import argparse
import itertools
import os
import time

import torch

from persona_pipeline.backends import SamplingParams
from persona_pipeline.backends.local import LocalBackend
from persona_pipeline.modelio import convert_embedded, default_base_dir
from persona_pipeline.settings import home

PERSONAS = [
    "You are a retired sailor who distrusts banks.",
    "You are a cheerful kindergarten teacher.",
    "You are a terse night-shift nurse.",
    "You are a teenager obsessed with chess.",
    None,  # no system prompt at all
]
QUESTIONS = [
    "What did you do last weekend?",
    "Explain how a bicycle stays upright.",
    "Give me three tips for saving money.",
    "What is your opinion of modern architecture, and why?",
    "Write a short poem about rain.",
    "How do you deal with stress?",
    "Summarise the plot of a film you like.",
]


def build_chats(n: int) -> list[list[dict]]:
    """``n`` distinct chats of varied length: 5 personas x 7 questions interleave into 35 combinations."""
    pairs = itertools.islice(zip(itertools.cycle(PERSONAS), itertools.cycle(QUESTIONS)), n)
    chats = []
    for i, (persona, question) in enumerate(pairs):
        if i >= len(PERSONAS) * len(QUESTIONS):
            question = f"{question} (take {i})"  # keep chats distinct past the 35 combinations
        system = [{"role": "system", "content": persona}] if persona else []
        chats.append(system + [{"role": "user", "content": question}])
    return chats


def load_embedded(batch_size: int) -> LocalBackend:
    base = default_base_dir(home())
    convert_embedded(base)  # a no-op once converted
    # batching alone: one-at-a-time calls would otherwise reuse the prefixes of earlier ones (bench/prefix_cache.py)
    return LocalBackend.from_pretrained(base, name="smollm2-135m-instruct", batch_size=batch_size, prefix_cache=False)


def count_tokens(backend: LocalBackend, texts: list[str]) -> int:
    """Generated tokens, by re-tokenising the outputs (``complete`` returns text only)."""
    return sum(len(backend.tok(t, add_special_tokens=False)["input_ids"]) for t in texts)


def measure(repeat: int, modes: dict) -> dict:
    """{mode: (output, fastest wall time)}; rounds alternate the modes so load from elsewhere hits both alike."""
    best: dict = {}
    for _ in range(repeat):
        for name, fn in modes.items():
            start = time.perf_counter()
            out = fn()
            elapsed = time.perf_counter() - start
            best[name] = (out, min(elapsed, best.get(name, (None, elapsed))[1]))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16, help="number of chats")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=1, help="report the best of this many runs per mode")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    backend = load_embedded(batch_size=args.n)  # the whole set in one generate call
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0)
    chats = build_chats(args.n)
    backend.complete(chats[:2], SamplingParams(max_new_tokens=4, temperature=0))  # warm-up

    runs = measure(
        args.repeat,
        {
            "single": lambda: [backend.complete([c], params)[0] for c in chats],
            "batched": lambda: backend.complete(chats, params),
        },
    )
    (single, t_single), (batched, t_batched) = runs["single"], runs["batched"]
    tok_single, tok_batched = count_tokens(backend, single), count_tokens(backend, batched)

    print(
        f"embedded model, {args.n} chats, greedy, max_new_tokens={args.max_new_tokens}, "
        f"torch threads={torch.get_num_threads()}, device={backend.device}, best of {args.repeat}"
    )
    print(f"one at a time: {t_single:7.2f} s  {tok_single:5d} tokens  {tok_single / t_single:7.1f} tokens/s")
    print(f"batched      : {t_batched:7.2f} s  {tok_batched:5d} tokens  {tok_batched / t_batched:7.1f} tokens/s")
    print(f"speed-up (tokens/s batched / one at a time): {(tok_batched / t_batched) / (tok_single / t_single):.2f}x")
    same = [i for i, (a, b) in enumerate(zip(single, batched)) if a == b]
    print(f"greedy outputs identical: {len(same)}/{args.n}")
    for i in sorted(set(range(args.n)) - set(same)):
        print(f"  differs at chat {i}: single={single[i][:60]!r} batched={batched[i][:60]!r}")


if __name__ == "__main__":
    main()
