"""Benchmark: every layer in one forward pass vs one forward pass per layer.

Why: ``activations.extract`` hooks every requested decoder layer and reads them
all from ONE forward pass per batch (``hooks.capture``). The naive approach runs
the model once per layer. This measures what the single pass buys with the
embedded model and checks that both give the same numbers, view by view.

    .venv/bin/python bench/activations.py [--n 32] [--batch-size 16] [--repeat 1] [--threads 1]

On a shared machine, other processes skew CPU timings badly (torch's threads
wait for each other); ``--threads 1`` and ``--repeat`` make runs comparable.
The naive side costs n_layers full forward passes: on 2 shared CPU cores
32 items take ~10 min, so ``--n 8 --batch-size 8`` keeps a run near 2 min.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

import torch
import yaml
from generation import measure  # bench/ is on sys.path when run as a script

from persona_pipeline.activations import VIEWS, Item, extract
from persona_pipeline.hooks import decoder_layers
from persona_pipeline.modelio import convert_embedded, default_base_dir, load_model
from persona_pipeline.settings import data_root, home

ROLES = ["pirate", "therapist", "drill_sergeant", "scientist", "noir_detective", "default"]
# Short made-up answers, in the spirit of each role; cycled against the questions.
RESPONSES = {
    "pirate": "Arr, the sea taught me that. Freedom, a loyal crew and a full hold of rum — that's all a soul needs.",
    "therapist": "That sounds hard. Let's slow down and notice what you're feeling before deciding anything.",
    "drill_sergeant": "Listen up! No excuses. You plan it, you drill it, you do it again until it's right. Move!",
    "scientist": "It depends on the evidence. I'd form a hypothesis, test it carefully and revise it if the data disagree.",
    "noir_detective": "The rain hadn't stopped in three days. Neither had the questions. Everybody's hiding something, kid.",
    "default": "Here is a short, balanced answer: weigh the options, consider the people involved, and take a small first step.",
}


def build_items(n: int) -> list[Item]:
    """``n`` (system + question, response) items from the real role prompts and question bank."""
    root = data_root() / "roles"
    questions = yaml.safe_load((root / "questions.yaml").read_text())["questions"]
    prompts = {r: yaml.safe_load((root / f"{r}.yaml").read_text()).get("system_prompts") or [None] for r in ROLES}
    items = []
    for i, (role, question) in enumerate(itertools.islice(zip(itertools.cycle(ROLES), questions * n), n)):
        system = prompts[role][i % len(prompts[role])]
        chat = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
        items.append(Item(chat=chat, response=RESPONSES[role]))
    return items


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32, help="number of (prompt, response) items")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=1, help="report the best of this many runs per mode")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--atol", type=float, default=0.0, help="largest tolerated |difference| between the two modes")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    base = default_base_dir(home())
    convert_embedded(base)  # a no-op once converted
    model, tok = load_model(base)
    n_layers = len(decoder_layers(model))
    items = build_items(args.n)
    extract(model, tok, items[:2], [0], batch_size=args.batch_size)  # warm-up
    n_tokens = sum(
        len(
            tok(
                tok.apply_chat_template(it.chat, tokenize=False, add_generation_prompt=True) + it.response,
                add_special_tokens=False,
            )["input_ids"]
        )
        for it in items
    )

    runs = measure(
        args.repeat,
        {
            "one pass": lambda: extract(model, tok, items, None, batch_size=args.batch_size),
            "per layer": lambda: [
                extract(model, tok, items, [layer], batch_size=args.batch_size) for layer in range(n_layers)
            ],
        },
    )
    (together, t_one), (per_layer, t_per) = runs["one pass"], runs["per layer"]

    print(
        f"embedded model, {args.n} items ({n_tokens} tokens), {n_layers} layers, batch size {args.batch_size}, "
        f"torch threads={torch.get_num_threads()}, device={next(model.parameters()).device}, best of {args.repeat}"
    )
    print(f"one pass, all {n_layers} layers : {t_one:7.2f} s")
    print(f"one pass per layer ({n_layers} passes): {t_per:7.2f} s")
    print(f"speed-up (per layer / one pass): **{t_per / t_one:.2f}×**")

    worst = 0.0
    for view in VIEWS:
        if together[view].shape != (args.n, n_layers, together[view].shape[-1]):
            sys.exit(f"FAIL: {view} has shape {tuple(together[view].shape)}")
        diffs = [
            float((together[view][:, layer] - per_layer[layer][view][:, 0]).abs().max()) for layer in range(n_layers)
        ]
        worst = max(worst, max(diffs))
        print(f"  {view:13s} max |diff| over layers: {max(diffs):.3g} (worst at layer {diffs.index(max(diffs))})")
    if worst > args.atol:
        sys.exit(f"FAIL: one-pass and per-layer activations differ by up to {worst:.3g} (> atol {args.atol})")
    print(f"results identical: max |diff| {worst:.3g} over {len(VIEWS)} views × {n_layers} layers")


if __name__ == "__main__":
    main()
