"""Benchmark: a GRPO group's log-probs, TRL's full pass per row vs the shared prompt read once.

One group as the demo's multi-turn GRPO trains it: ``--group`` completions of ``--tokens`` tokens
after one real simulator prompt (persona definition + a short dialogue), the embedded model with
a LoRA as GRPO trains it. Times the reference pass (no grad) and the training pass (forward +
backward) both ways, side by side, and checks the log-probs agree.

    .venv/bin/python bench/grpo_shared_prompt.py [--group 4] [--tokens 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time

import torch


def _group(tok, group: int, tokens: int):
    from persona_pipeline.loaders import load_personas
    from persona_pipeline.prompts import simulator_prompt
    from persona_pipeline.settings import data_root

    spec = load_personas(data_root() / "personas")[0]
    history = [
        {"role": "user", "content": "Hi, I need help with my garden."},
        {"role": "assistant", "content": "Sure!"},
    ]
    chat = simulator_prompt(spec.id, spec.definition(compact=True), history)
    text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    prompt = tok(text, add_special_tokens=False)["input_ids"]
    g = torch.Generator().manual_seed(0)
    done = torch.randint(100, 20000, (group, tokens), generator=g)
    ids = torch.cat([torch.tensor([prompt]).expand(group, -1), done], dim=1)
    return ids, torch.ones_like(ids), tokens


def _full(model, ids, mask, keep):
    from trl.trainer.utils import selective_log_softmax

    logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep + 1).logits[:, :-1]
    return selective_log_softmax(logits, ids[:, -keep:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    from peft import LoraConfig, get_peft_model

    from persona_pipeline.grpo_shared_prompt import shared_prompt_logps
    from persona_pipeline.modelio import convert_embedded, default_base_dir, load_model
    from persona_pipeline.settings import home
    from persona_pipeline.train_sft import TARGET_MODULES

    base = default_base_dir(home())
    convert_embedded(base)
    model, tok = load_model(base)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=list(TARGET_MODULES)))
    ids, mask, keep = _group(tok, args.group, args.tokens)
    ways = {"full pass per row": lambda: _full(model, ids, mask, keep),
            "shared prompt": lambda: shared_prompt_logps(model, ids, mask, keep)[0]}  # fmt: skip
    best: dict[str, dict[str, float]] = {}
    out = {}
    for _ in range(args.rounds):
        for name, fn in ways.items():
            with torch.no_grad():
                t = time.perf_counter()
                out[name] = fn()
                ref = time.perf_counter() - t
            t = time.perf_counter()
            fn().sum().backward()
            train = time.perf_counter() - t
            model.zero_grad()
            b = best.setdefault(name, {"ref": ref, "train": train})
            b["ref"], b["train"] = min(b["ref"], ref), min(b["train"], train)
    full, shared = best["full pass per row"], best["shared prompt"]
    diff = (out["full pass per row"] - out["shared prompt"]).abs().max().item()
    print(f"GRPO group: {args.group} x {args.tokens} completion tokens after a {ids.shape[1] - keep}-token prompt, "
          f"LoRA r16, fp32 CPU, best of {args.rounds}")  # fmt: skip
    for name, b in best.items():
        print(f"  {name:18s}: reference pass {b['ref']:6.2f} s   forward+backward {b['train']:6.2f} s")
    print(f"  speed-up: reference {full['ref'] / shared['ref']:.2f}x, training {full['train'] / shared['train']:.2f}x; "
          f"max |Δ log-prob| {diff:.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
