"""Multi-turn on-policy rollouts for GRPO: the policy plays the persona against the assistant.

TRL 1.16's ``GRPOTrainer`` takes a ``rollout_func(prompts, trainer)`` (experimental) that
returns the token ids to train on; its ``environment_factory`` is a tool-calling loop, not a
second speaker, so the dialogue is played here. Each dataset row is a *seed* (persona +
topic, prompt = the opening simulator prompt). For every group of ``num_generations``
copies of a seed, one step:

1. the **current** policy (the trainer's model: SFT merged + the LoRA being trained, so the
   context is on-policy and moves as the policy learns) writes persona turns 1..K-1, the
   assistant model answers each; all groups advance in one batched call per side, as
   evaluation dialogues do (``eval_dialogues``);
2. the policy samples ``num_generations`` completions of persona turn K for that shared
   context — the GRPO group (same context, different lines, so advantages compare lines);
3. the policy answers a probe question about itself after each completion and once before
   the dialogue (``consistency.PROBES``), for the Q&A consistency term.

GRPO then updates on turn K only (the earlier turns are context, not trained tokens), with
TRL's KL (β) to the reference — the merged SFT policy. Rewards, one TRL reward function each
(so TRL logs every term's mean and std per step): the persona judge chosen for purpose
``reward`` minus the degeneracy penalty, prompt-to-line, line-to-line and Q&A consistency.
This is "per-dialogue context, per-final-turn reward": honest multi-turn RL would credit
every turn; that costs K× the generation and is what ``full`` can afford, not a 2-core demo.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

from .backends import Backend, SamplingParams
from .consistency import PROBES, line_to_line, prompt_to_line, qa_stability
from .contracts import Conversation
from .prompts import assistant_chat, simulator_prompt
from .splits import heldout_conversations
from .teacher_dialogues import clean_persona_line


@dataclass
class RolloutSettings:
    turns: int = 3  # persona turns per rollout (K); the last one is the GRPO completion
    persona_tokens: int = 32
    assistant_tokens: int = 48
    probe_tokens: int = 24
    temperature: float = 0.8  # context turns (the GRPO group uses RlSettings.temperature)
    weights: dict[str, float] = field(
        default_factory=lambda: {
            "persona_judge": 1.0,
            "prompt_to_line": 0.5,
            "line_to_line": 0.5,
            "qa_consistency": 0.5,
        }
    )


def rollout_seeds(
    convs: list[Conversation],
    definitions: dict[str, str],
    n: int,
    seed: int = 0,
    eval_fraction: float = 0.1,
    judge_specs: dict[str, str] | None = None,
) -> list[dict]:
    """(persona, topic) seeds from the training conversations (never the held-out sessions), as dataset rows."""
    held = heldout_conversations(convs, eval_fraction)
    pairs = sorted({(c.persona_id, c.topic) for c in convs if c.persona_role == "user" and c.id not in held})
    if not pairs:
        raise ValueError("no simulated-user training conversations to seed multi-turn RL rollouts from")
    random.Random(seed).shuffle(pairs)
    pairs = (pairs * (n // len(pairs) + 1))[:n]
    return [
        {
            "prompt": simulator_prompt(pid, definitions[pid], [], topic=topic),
            "persona_id": pid,
            "topic": topic,
            "spec": (judge_specs or definitions)[pid],
        }
        for pid, topic in pairs
    ]


def _key(prompt: list[dict]) -> str:
    return json.dumps(prompt, sort_keys=True)


def play_contexts(
    seeds: list[dict], definitions: dict[str, str], policy: Backend, assistant: Backend, s: RolloutSettings, seed: int
) -> list[list[dict]]:
    """K-1 persona turns by ``policy`` and as many assistant replies, all seeds batched per side."""
    dialogues: list[list[dict]] = [[] for _ in seeds]
    for k in range(s.turns - 1):
        persona = SamplingParams(max_new_tokens=s.persona_tokens, temperature=s.temperature, seed=seed + 2 * k)
        chats = [
            simulator_prompt(x["persona_id"], definitions[x["persona_id"]], d, topic=x["topic"])
            for x, d in zip(seeds, dialogues)
        ]
        for d, line in zip(dialogues, policy.complete(chats, persona)):
            d.append({"role": "user", "content": clean_persona_line(line, "")[0] or "..."})
        reply = SamplingParams(max_new_tokens=s.assistant_tokens, temperature=0.7, seed=seed + 2 * k + 1)
        for d, answer in zip(dialogues, assistant.complete([assistant_chat(d) for d in dialogues], reply)):
            d.append({"role": "assistant", "content": answer.strip() or "..."})
    return dialogues


def sample_group(policy, chats: list[list[dict]], g: int, max_new_tokens: int, temperature: float):
    """``g`` sampled completions per chat: (prompt ids per chat, completion ids per row, chat-major).

    Through the policy's backend, so each copy prefills only past the context it played (prefix cache)."""
    tok = policy.tok
    rows = [c for c in chats for _ in range(g)]
    gen = dict(  # noqa: C408 - reads as generate()'s keyword list
        do_sample=True,
        temperature=temperature,
        top_p=1.0,
        top_k=0,
        max_new_tokens=max_new_tokens,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    completions = []
    for row in policy.generate_ids(rows, gen):
        cut = row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
        completions.append(
            [t for t in row[:cut] if t != tok.pad_token_id or t == tok.eos_token_id] or [tok.eos_token_id]
        )
    return [policy.token_ids(c) for c in chats], completions


def probe_answers(
    policy: Backend, rows: list[tuple[dict, list[dict]]], definitions: dict[str, str], probe: str, tokens: int
) -> list[str]:
    """The persona's greedy answer to ``probe`` asked after each (seed, dialogue) in ``rows``."""
    chats = [
        simulator_prompt(x["persona_id"], definitions[x["persona_id"]], [*d, {"role": "assistant", "content": probe}])
        for x, d in rows
    ]
    return policy.complete(chats, SamplingParams(max_new_tokens=tokens, temperature=0))


def rollout_autocast():
    """bf16 autocast while the (fp32) policy plays its rollouts on a CPU that trains mixed-precision
    (``modelio.mixed_bf16``): 1.7× faster generation here. The trainer recomputes the log-probs it
    trains on, so sampling in bf16 only shifts which lines are drawn, as bf16 rollouts do on a GPU."""
    import contextlib

    import torch

    from .modelio import cuda_available, mixed_bf16

    if mixed_bf16() and not cuda_available():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_rollout_func(seeds: list[dict], definitions: dict[str, str], assistant: Backend, s: RolloutSettings):
    """The ``rollout_func`` for ``GRPOTrainer``: on-policy K-turn contexts, a group of final turns, probes."""
    from .backends.local import LocalBackend

    by_key = {_key(x["prompt"]): x for x in seeds}

    def rollout(prompts: list, trainer) -> dict:
        g = trainer.num_generations
        groups = [by_key[_key(p)] for p in prompts[::g]]
        model, tok = trainer.model, trainer.processing_class
        step = trainer.state.global_step
        was_training = model.training
        model.eval()  # no dropout while playing; the trainer recomputes log-probs in train mode
        try:
            with rollout_autocast():
                policy = LocalBackend(model, tok, name="policy", batch_size=32)
                contexts = play_contexts(groups, definitions, policy, assistant, s, seed=1000 * step)
                chats = [
                    simulator_prompt(x["persona_id"], definitions[x["persona_id"]], d) for x, d in zip(groups, contexts)
                ]
                prompt_ids, completion_ids = sample_group(
                    policy, chats, g, trainer.args.max_completion_length, trainer.args.temperature
                )
                decoded = tok.batch_decode(completion_ids, skip_special_tokens=True)
                lines = [clean_persona_line(t, "")[0] for t in decoded]
                probe = PROBES[step % len(PROBES)]
                rows = [
                    (groups[i // g], [*contexts[i // g], {"role": "user", "content": t}]) for i, t in enumerate(lines)
                ]
                # one call: the answer before the dialogue (the reference) and after each completion
                said = probe_answers(policy, [(x, []) for x in groups] + rows, definitions, probe, s.probe_tokens)
                reference, answers = said[: len(groups)], said[len(groups) :]
        finally:
            model.train(was_training)
        per_row = lambda values: [values[i // g] for i in range(len(completion_ids))]
        return {
            "prompt_ids": per_row(prompt_ids),
            "completion_ids": completion_ids,
            "logprobs": None,  # generated by the training model itself: no importance correction needed
            "history": per_row([json.dumps(d) for d in contexts]),
            "earlier": per_row([json.dumps([t["content"] for t in d if t["role"] == "user"]) for d in contexts]),
            "probe_answer": answers,
            "probe_reference": per_row(reference),
        }

    return rollout


def consistency_rewards(claims: dict[str, list[str]]) -> list:
    """The three consistency terms as TRL reward functions (named: TRL logs ``rewards/<name>/mean``)."""

    def texts(completions) -> list[str]:
        return [clean_persona_line(c[-1]["content"] if isinstance(c, list) else str(c), "")[0] for c in completions]

    def prompt_to_line_reward(completions, persona_id, **_) -> list[float]:
        lines = texts(completions)
        out = [0.0] * len(lines)
        for pid in set(persona_id):
            idx = [i for i, p in enumerate(persona_id) if p == pid]
            for i, v in zip(idx, prompt_to_line(claims[pid], [lines[i] for i in idx])):
                out[i] = v
        return out

    def line_to_line_reward(completions, earlier, **_) -> list[float]:
        return line_to_line([json.loads(e) for e in earlier], texts(completions))

    def qa_reward(probe_reference, probe_answer, **_) -> list[float]:
        return qa_stability(probe_reference, probe_answer)

    prompt_to_line_reward.__name__ = "prompt_to_line"
    line_to_line_reward.__name__ = "line_to_line"
    qa_reward.__name__ = "qa_consistency"
    return [prompt_to_line_reward, line_to_line_reward, qa_reward]
