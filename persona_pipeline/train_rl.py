"""GRPO refinement of the SFT adapter with an LLM-judge reward and a KL penalty.

TRL no longer ships PPO; GRPO needs no value model and its ``beta`` is the KL
coefficient (0.1, as in the seed). To keep the KL anchored to the *SFT* model
(not the raw base), the SFT adapter is merged into the base first and a fresh
LoRA is trained on top: with ``peft_config`` TRL's reference model is that
merged SFT model with the new adapter disabled. Finally the two adapters are
concatenated (PEFT ``cat``: ΔW = B₁A₁ + B₂A₂ exactly) into one standalone
adapter that loads on the plain base like any other.

Two modes. ``multiturn`` (the default): the policy plays the persona for K turns against
the assistant model and GRPO updates the final turn, rewarded by the persona judge plus
three consistency terms (see :mod:`.rl_rollouts`, :mod:`.consistency`). Single-turn: one
next line on fixed histories cut from the training dialogues (off-policy contexts), kept
as the baseline the multi-turn adapter is compared with.

A group whose completions all get the same reward teaches nothing (GRPO's advantage is
the reward minus the group mean). TRL logs the share of such groups
(``frac_reward_zero_std``); the defaults guard against it: 4 generations, temperature
1.0, and continuous consistency terms next to the judge.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .contracts import Conversation
from .judges import JudgeItem, degeneracy_penalty, persona_scores
from .prompts import simulator_prompt
from .splits import heldout_conversations
from .storage import atomic_path, write_json
from .train_sft import LoraSettings

BORING_REPLIES = [
    "Okay.",
    "I'm not sure I can help with that.",
    "Sure. Anything else?",
    "That depends on many factors.",
    "Please consult the official documentation.",
    "I understand. Is there anything else I can help you with?",
]


@dataclass
class RlSettings:
    lora: LoraSettings = field(default_factory=lambda: LoraSettings(r=16, alpha=32, dropout=0.05))
    beta: float = 0.1
    learning_rate: float = 2e-5
    max_steps: int = 6
    num_generations: int = 4  # ≥ 4 and temperature 1.0: groups must differ for GRPO to learn
    groups_per_step: int = 2
    max_completion_length: int = 40
    temperature: float = 1.0
    judge_method: str = "logprob"
    quantize: str | None = None  # "nf4": QLoRA, the base (with SFT merged in) loads as NF4 on CUDA
    boring_share: float = 0.3
    multiturn: bool = True
    seed: int = 0


def rl_prompts(
    convs: list[Conversation],
    definitions: dict[str, str],
    n: int,
    heldout: bool,
    seed: int = 0,
    boring_share: float = 0.3,
    eval_fraction: float = 0.1,
    judge_specs: dict[str, str] | None = None,
    max_depth: int = 0,
) -> list[dict]:
    """Histories cut at many depths, deepest ones included, some with a boring assistant.

    Those are the cases where SFT models drop character. ``heldout`` picks the
    conversations the SFT stage held out, for before/after evaluation.
    ``max_depth`` > 0 caps the history length in turns (small machines: RL cost grows with it).
    """
    rng = random.Random(f"{seed}:{heldout}")
    held = heldout_conversations(convs, eval_fraction)  # the same whole sessions SFT held out
    pool = [c for c in convs if c.persona_role == "user" and (c.id in held) == heldout]
    if not pool:
        pool = [c for c in convs if c.persona_role == "user"]
    if not pool:
        raise ValueError("no simulated-user conversations to build RL prompts from")
    cuts = [(c, i) for c in pool for i in c.persona_turn_indices() if 0 < i and (not max_depth or i <= max_depth)]
    deepest = sorted(cuts, key=lambda ci: -ci[1])[: max(1, n // 4)]
    rng.shuffle(cuts)
    chosen = (deepest + [x for x in cuts if x not in deepest])[:n]
    out = []
    for c, i in chosen:
        history = [{"role": t.role, "content": t.content} for t in c.turns[:i]]
        boring = rng.random() < boring_share and history[-1]["role"] == "assistant"
        if boring:
            history[-1] = {"role": "assistant", "content": rng.choice(BORING_REPLIES)}
        out.append(
            {
                "prompt": simulator_prompt(c.persona_id, definitions[c.persona_id], history),
                "spec": (judge_specs or definitions)[c.persona_id],
                "history": json.dumps(history),
                "persona_id": c.persona_id,
                "depth": i,
                "boring": boring,
            }
        )
    return out


def make_reward(judge, method: str):
    """TRL reward function: judge persona score in [-1, 1] minus a degeneracy penalty."""

    def persona_reward(prompts, completions, spec, history, **_) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else str(c) for c in completions]
        items = [JudgeItem(s, json.loads(h), t) for s, h, t in zip(spec, history, texts)]
        scores = persona_scores(judge, items, method)
        return [max(-1.0, (s if s is not None else 0.0) - degeneracy_penalty(t)) for s, t in zip(scores, texts)]

    return persona_reward


def mean_reward(texts: list[str], rows: list[dict], judge, method: str) -> float:
    """The policy's greedy lines ``texts`` for ``rows``, scored by the same reward as training."""
    reward = make_reward(judge, method)
    scores = reward(None, [[{"content": t}] for t in texts], [r["spec"] for r in rows], [r["history"] for r in rows])
    return sum(scores) / len(scores)


def multiturn_rewards(judge, method: str, claims: dict[str, list[str]], weights: dict[str, float]):
    """(reward functions, weights): the persona judge (named ``persona_judge``) plus the consistency terms."""
    from .rl_rollouts import consistency_rewards

    judged = make_reward(judge, method)
    judged.__name__ = "persona_judge"
    funcs = [judged, *consistency_rewards(claims)]
    return funcs, [weights.get(f.__name__, 1.0) for f in funcs]


@dataclass
class RlResult:
    log_history: list[dict]
    seconds: float
    seconds_per_step: float

    @property
    def zero_std_share(self) -> float:
        """Mean share of GRPO groups whose completions all got the same reward (they teach nothing)."""
        shares = [h["frac_reward_zero_std"] for h in self.log_history if "frac_reward_zero_std" in h]
        return sum(shares) / len(shares) if shares else float("nan")


def train_rl(
    base: str | Path,
    sft_adapter: Path,
    prompts: list[dict],
    reward_fn,
    s: RlSettings,
    out: Path,
    card: dict,
    rollout_func=None,
    reward_weights: list[float] | None = None,
) -> RlResult:
    """``reward_fn``: a TRL reward function (``make_reward``) or a list (``multiturn_rewards``);
    ``rollout_func``: multi-turn on-policy generation (``rl_rollouts.make_rollout_func``), else TRL's own."""
    from datasets import Dataset
    from trl import GRPOConfig

    from .grpo_shared_prompt import trainer_class
    from .modelio import LoadOptions, cuda_available, load_model, mixed_bf16
    from .trl_scoring import score_labelled_positions_only

    score_labelled_positions_only()  # where a group shares no prompt, TRL's own pass scores completions only

    if not prompts:
        raise ValueError("no RL prompts: conversations has no simulated-user dialogues")
    cuda = cuda_available()
    model, tok = load_model(base, adapter=sft_adapter, opts=LoadOptions(quantize=s.quantize))
    model = model.merge_and_unload()  # the SFT policy becomes the reference for the KL term
    with atomic_path(out) as tmp:
        args = GRPOConfig(
            output_dir=str(tmp.parent / "trainer"),
            learning_rate=s.learning_rate,
            max_steps=s.max_steps,
            beta=s.beta,
            num_generations=s.num_generations,
            per_device_train_batch_size=s.num_generations * s.groups_per_step,
            reward_weights=reward_weights,
            max_completion_length=s.max_completion_length,
            temperature=s.temperature,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            seed=s.seed,
            bf16=mixed_bf16(),
            use_cpu=not cuda,
            dataloader_num_workers=0,
            gradient_checkpointing=cuda,  # TRL turns it on by default; on a CPU it only recomputes
        )
        trainer = trainer_class()(  # TRL's GRPOTrainer, each group's shared prompt read once
            model=model,
            reward_funcs=reward_fn,
            args=args,
            train_dataset=Dataset.from_list(prompts),
            processing_class=tok,
            peft_config=s.lora.peft_config(),
            rollout_func=rollout_func,
        )
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
        delta = tmp.parent / "rl_delta"
        trainer.model.save_pretrained(delta, safe_serialization=True)
        combine_adapters(base, sft_adapter, delta, tmp)
        shutil.rmtree(delta)
        tok.save_pretrained(tmp)
        result = RlResult(trainer.state.log_history, seconds, seconds / max(1, s.max_steps))
        write_json(
            tmp / "training_summary.json",
            {**card, "settings": json.loads(json.dumps(asdict(s), default=list)), "seconds": seconds},
        )
    return result


def combine_adapters(base: str | Path, sft: Path, rl_delta: Path, out: Path) -> None:
    """Save one adapter equal to SFT + RL delta (``cat`` keeps the sum exact)."""
    from peft import PeftModel

    from .modelio import load_model, make_portable

    model, _ = load_model(base)
    peft = PeftModel.from_pretrained(model, str(sft), adapter_name="sft")
    peft.load_adapter(str(rl_delta), adapter_name="rl")
    peft.add_weighted_adapter(["sft", "rl"], [1.0, 1.0], adapter_name="combined", combination_type="cat")
    peft.set_adapter("combined")
    staging = out.parent / "combined_staging"
    peft.save_pretrained(staging, selected_adapters=["combined"], safe_serialization=True)
    src = staging / "combined" if (staging / "combined").exists() else staging
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file():
            shutil.copy(f, out / f.name)
    shutil.rmtree(staging)
    make_portable(out, base)


def reward_terms(history: list[dict]) -> list[str]:
    """The per-term reward means TRL logged (``rewards/<term>/mean``)."""
    return sorted({k for h in history for k in h if k.startswith("rewards/") and k.endswith("/mean")})


def term_rows(history: list[dict]) -> list[dict]:
    """Per reward term: first and last logged step mean, and the mean within-group std (0: no signal)."""
    from .train_sft import log_curve

    rows = []
    for key in reward_terms(history):
        name, (_, ys) = key.split("/")[1], log_curve(history, key)
        _, std = log_curve(history, key.replace("/mean", "/std"))
        rows.append(
            {
                "term": name,
                "first": round(ys[0], 4),
                "last": round(ys[-1], 4),
                "std": round(sum(std) / max(1, len(std)), 4),
            }
        )
    return rows


def consistency_claims(persona_specs: list[dict], full: dict[str, str]) -> dict[str, list[str]]:
    """The spec claims prompt-to-line consistency compares with (survey people: their definition's lines)."""
    from .consistency import spec_sentences
    from .contracts import PersonaSpec

    claims = {pid: [x for x in text.splitlines() if x.strip()] for pid, text in full.items()}
    return claims | {s["id"]: spec_sentences(PersonaSpec(**s)) for s in persona_specs}
