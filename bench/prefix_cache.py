"""Benchmark: held-out test dialogues with and without prefix KV caching, side by side.

Every turn of a test dialogue re-sends the persona's definition and the whole history;
``LocalBackend`` on a CPU prefills each row only past the longest prefix it has cached
(``persona_pipeline/backends/prefix_cache.py``). This plays the same dialogues — real persona
specs, the simulator prompt, the embedded model as persona and assistant — once with the
cache off and once on, and prints both wall times, the ratio, the prefilled vs reused tokens
and how many persona lines are identical (greedy, float32: they should all be).

    .venv/bin/python bench/prefix_cache.py [--personas 4] [--turns 10] [--tokens 8]
"""

from __future__ import annotations

import argparse
import time

from persona_pipeline.backends import SamplingParams
from persona_pipeline.backends.local import LocalBackend
from persona_pipeline.loaders import load_personas
from persona_pipeline.modelio import convert_embedded, default_base_dir, inference_options, load_model
from persona_pipeline.prompts import assistant_chat, simulator_prompt
from persona_pipeline.settings import data_root, home


def play(backend: LocalBackend, specs: list, turns: int, tokens: int) -> tuple[list[str], float]:
    """Every persona's lines over ``turns`` messages (persona first), the assistant answering in between."""
    params = SamplingParams(max_new_tokens=tokens, temperature=0)
    dialogues: list[list[dict]] = [[] for _ in specs]
    lines = []
    start = time.perf_counter()
    for step in range(turns):
        if step % 2 == 0:
            chats = [
                simulator_prompt(s.id, s.definition(compact=True), d, topic="the weekend")
                for s, d in zip(specs, dialogues)
            ]
            said = backend.complete(chats, params)
            lines += said
            for d, line in zip(dialogues, said):
                d.append({"role": "user", "content": line or "..."})
        else:
            for d, reply in zip(dialogues, backend.complete([assistant_chat(d) for d in dialogues], params)):
                d.append({"role": "assistant", "content": reply or "..."})
    return lines, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--personas", type=int, default=4)
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=8, help="new tokens per line (the demo's test dialogues: 8)")
    args = ap.parse_args()
    base = default_base_dir(home())
    convert_embedded(base)
    model, tok = load_model(base, None, inference_options(exact=True))  # float32: identical lines expected
    specs = load_personas(data_root() / "personas")[: args.personas]
    plain = LocalBackend(model, tok, prefix_cache=False)
    cached = LocalBackend(model, tok, prefix_cache=True)
    play(plain, specs[:1], 2, 2)  # warm-up
    off, t_off = play(plain, specs, args.turns, args.tokens)
    on, t_on = play(cached, specs, args.turns, args.tokens)
    same = sum(a == b for a, b in zip(off, on))
    print(f"embedded model, {len(specs)} personas x {args.turns} messages, {args.tokens} new tokens per line, float32")
    print(f"no prefix cache : {t_off:7.2f} s")
    print(
        f"prefix cache    : {t_on:7.2f} s   prefilled {cached.prefix.computed_tokens} tokens, "
        f"reused {cached.prefix.reused_tokens}"
    )
    print(f"speed-up        : {t_off / t_on:.2f}x   identical persona lines: {same}/{len(off)}")


if __name__ == "__main__":
    main()
