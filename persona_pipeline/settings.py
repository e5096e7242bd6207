"""Where things live and how big a run is.

Paths come from env vars with repo-local defaults; sizes come from a named
profile (``PERSONA_PIPELINE_PROFILE``): ``demo`` fits 2 CPU cores, ``ci`` is the
smallest run that still exercises every code path, ``study`` is the demo with its
experiments sized for confidence intervals (≤ 60 min on 2 CPU cores), ``full`` is for GPUs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel


def home() -> Path:
    """Artifacts root: models, adapters, tensors, resumable work files."""
    return Path(os.environ.get("PERSONA_PIPELINE_HOME", "./.persona_home")).resolve()


def data_root() -> Path:
    """The versioned input data (``data_assets/``)."""
    default = Path(__file__).resolve().parent.parent / "data_assets"
    return Path(os.environ.get("PERSONA_PIPELINE_DATA", default)).resolve()


class Profile(BaseModel):
    """Run sizes, grouped by stage. Every asset config takes its defaults from here: a config field left
    None is filled from the field named here (``defs.assets._common.ProfileConfig``)."""

    name: str
    # generation and activation reads on a CPU (modelio.inference_options); training is always float32
    cpu_dtype: Literal["float32", "bfloat16"] = "float32"
    # data stage: teacher dialogues (synthetic_conversations) and survey conversations
    conversations_per_persona: int
    min_turns: int
    max_turns: int
    persona_max_new_tokens: int
    assistant_max_new_tokens: int
    max_line_retries: int
    survey_follow_up_items: int
    survey_answer_tokens: int  # survey answers in the person's voice (data) and on held-out items (evaluation)
    # models stage: SFT
    sft_max_steps: int
    sft_batch_size: int
    sft_eval_rows: int  # held-out rows scored before and after training
    sft_max_length: int  # longer training rows (deep histories) are dropped
    retention_prompts: int
    check_prompts: int  # held-out prompts of the model checks and of the RL before/after reward
    # models stage: GRPO
    rl_max_steps: int
    rl_num_generations: int
    rl_prompts: int
    rl_completion_tokens: int
    rl_max_depth: int  # longest history (turns) in RL and check prompts; 0: no cap
    rl_turns: int = 3  # persona turns per multi-turn on-policy rollout (the last one is trained)
    rl_groups_per_step: int = 2  # GRPO groups (contexts) per step, rl_num_generations lines each
    rl_learning_rate: float = 2e-5
    # representations stage: role transcripts and trait responses
    role_system_prompts: int  # per role
    role_questions: int
    role_rollouts: int
    role_max_new_tokens: int
    trait_instruction_pairs: int
    trait_questions: int
    trait_samples: int
    trait_max_new_tokens: int
    # representations stage: steering sweep and CMA-ES
    sweep_layers: int  # layers around the middle
    sweep_coefs: list[float]  # relative to the layer's typical residual norm
    sweep_questions: int
    cmaes_generations: int
    cmaes_popsize: int
    cmaes_prompts: int
    cmaes_max_new_tokens: int
    # evaluation stage
    eval_personas: int  # personas given held-out test dialogues (0: all; the demo evaluates a seeded subset)
    eval_topics: int  # held-out topics per persona (one dialogue each per method)
    eval_turns: int  # turns per test dialogue (≥ 10)
    eval_persona_tokens: int
    eval_assistant_tokens: int
    survey_eval_items: int  # held-out survey items answered per method; 0: all
    human_eval_items: int  # contexts per persona on the human-eval page
    capability_items: int = 0  # multiple-choice items in the capability_retention probe (0: all shipped)
    capability_finetune_sets: list[
        str
    ] = []  # trait fine-tune sets whose LoRAs also take the probe (study: the strongest)
    # trait fine-tunes (trait_finetune_sets / trait_finetunes): toy sizes unless a profile sets them
    trait_finetune_traits: list[str] = ["humorous"]  # traits fine-tuned on; [] = every trait
    trait_finetune_examples: int = 6  # teacher-written rows per set (normal / misaligned_1 / misaligned_2)
    trait_finetune_tokens: int = 16  # teacher answer length
    trait_finetune_steps: int = 1  # LoRA steps per fine-tune (-1: one epoch); ~1.3 s a step here at batch 1
    trait_finetune_snapshots: int = 0  # evenly spaced intermediate adapters per fine-tune (extra checkpoints)
    trait_finetune_eval_questions: int = 4  # held-out eval questions each checkpoint answers
    trait_finetune_eval_tokens: int = 8  # a decode step costs ~0.2 s here whatever the batch: tokens set the time
    trait_cap_percentiles: list[float] = [25.0]  # Assistant-Axis cap floors (percentiles of the base's projections)
    trait_cap_layers: int = 1  # layers capped, from the axis layer on (the paper caps a band of layers)


PROFILES = {
    "ci": Profile(
        name="ci",
        conversations_per_persona=1,
        min_turns=8,
        max_turns=8,
        persona_max_new_tokens=24,
        assistant_max_new_tokens=24,
        max_line_retries=1,
        survey_follow_up_items=6,
        sft_max_steps=3,
        sft_batch_size=2,
        sft_eval_rows=12,
        sft_max_length=512,
        survey_answer_tokens=24,
        retention_prompts=4,
        rl_max_steps=1,
        rl_num_generations=2,
        rl_prompts=4,
        rl_completion_tokens=16,
        rl_max_depth=6,
        rl_turns=2,  # the smallest rollout that still plays the policy against the assistant
        rl_groups_per_step=1,
        check_prompts=4,
        survey_eval_items=0,
        role_system_prompts=1,
        role_questions=2,
        role_rollouts=1,
        role_max_new_tokens=24,
        trait_instruction_pairs=2,
        trait_questions=2,
        trait_samples=1,
        trait_max_new_tokens=24,
        sweep_layers=2,
        sweep_coefs=[0.0, 0.5],
        sweep_questions=2,
        cmaes_generations=2,
        cmaes_popsize=4,
        cmaes_prompts=2,
        cmaes_max_new_tokens=16,
        eval_personas=0,
        eval_topics=1,
        eval_turns=10,
        eval_persona_tokens=16,
        eval_assistant_tokens=16,
        human_eval_items=1,
        capability_items=20,
        capability_finetune_sets=["misaligned_2"],
        trait_cap_layers=2,  # the multi-layer cap path
        trait_finetune_examples=4,  # every code path of the trait fine-tunes, at the smallest size
        trait_finetune_tokens=8,
        trait_finetune_eval_questions=2,
        trait_finetune_eval_tokens=6,
    ),
    "demo": Profile(  # every asset on 2 CPU cores in about ten minutes: a tour, not a study
        name="demo",
        cpu_dtype="bfloat16",  # ~1.7× faster generation on this CPU (AVX512-BF16); training stays float32
        conversations_per_persona=1,
        min_turns=8,
        max_turns=8,
        persona_max_new_tokens=12,
        assistant_max_new_tokens=12,
        max_line_retries=1,
        survey_follow_up_items=4,
        sft_max_steps=20,  # a loss point per step: a curve of 20 points, not one
        sft_batch_size=1,  # batching buys nothing for training on 2 cores (bench/RESULTS.md)
        sft_eval_rows=8,
        sft_max_length=512,  # the persona prompt + history is long: at 384 most held-out rows do not fit
        survey_answer_tokens=24,
        survey_eval_items=4,
        retention_prompts=4,
        rl_max_steps=5,  # multi-turn GRPO steps (~27 s each on 2 cores): a reward and KL curve of 5 points
        rl_num_generations=4,  # with temperature 1.0: groups carry reward variance
        rl_prompts=5,
        rl_completion_tokens=8,  # every rollout turn, the group's lines and the probes: 7 generate calls a step
        rl_max_depth=6,
        rl_turns=3,
        rl_groups_per_step=1,
        rl_learning_rate=3e-4,  # LoRA on 5 steps: 1e-4 left the KL at ~7e-4 and the greedy check lines unchanged
        check_prompts=4,
        role_system_prompts=1,
        role_questions=2,
        role_rollouts=1,
        role_max_new_tokens=16,
        trait_instruction_pairs=2,
        trait_questions=2,
        trait_samples=1,
        trait_max_new_tokens=16,
        sweep_layers=1,  # the middle layer only (full sweeps 7)
        sweep_coefs=[0.0, 0.15, 0.3],  # the informative range on the 135M model (ENVIRONMENT.md)
        sweep_questions=2,
        cmaes_generations=2,
        cmaes_popsize=3,
        cmaes_prompts=1,
        cmaes_max_new_tokens=8,  # the test dialogues' line length
        eval_personas=2,
        eval_topics=1,
        eval_turns=10,
        eval_persona_tokens=8,
        eval_assistant_tokens=8,
        human_eval_items=1,
        capability_items=16,  # stratified subset of the shipped 116: a tour; the asset says when n is too small to claim
    ),
    "full": Profile(
        name="full",
        conversations_per_persona=60,
        min_turns=8,
        max_turns=14,
        persona_max_new_tokens=96,
        assistant_max_new_tokens=256,
        max_line_retries=3,
        survey_follow_up_items=200,
        sft_max_steps=-1,
        sft_batch_size=8,
        sft_eval_rows=256,
        sft_max_length=2048,
        survey_answer_tokens=128,
        retention_prompts=48,
        rl_max_steps=300,
        rl_num_generations=8,
        rl_prompts=2000,
        rl_completion_tokens=96,
        rl_max_depth=0,
        check_prompts=64,
        survey_eval_items=0,
        role_system_prompts=5,
        role_questions=48,
        role_rollouts=3,
        role_max_new_tokens=512,
        trait_instruction_pairs=5,
        trait_questions=20,
        trait_samples=10,
        trait_max_new_tokens=256,
        sweep_layers=7,
        sweep_coefs=[0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0],
        sweep_questions=20,
        cmaes_generations=40,
        cmaes_popsize=12,
        cmaes_prompts=10,
        cmaes_max_new_tokens=64,
        eval_personas=0,
        eval_topics=6,
        eval_turns=16,
        eval_persona_tokens=96,
        eval_assistant_tokens=256,
        human_eval_items=6,
        trait_finetune_traits=[],
        trait_finetune_examples=200,
        trait_finetune_tokens=160,
        trait_finetune_steps=-1,
        trait_finetune_eval_questions=20,
        trait_finetune_eval_tokens=128,
        trait_cap_percentiles=[1.0, 25.0, 50.0],
        trait_cap_layers=8,
    ),
}

PROFILES["study"] = Profile(  # the demo DAG, with the experiments big enough for their shapes to show or not
    **{
        **PROFILES["demo"].model_dump(),
        "name": "study",
        "conversations_per_persona": 2,
        "sft_max_steps": 60,
        "trait_instruction_pairs": 3,  # 3 pairs × 10 questions: 30 paired pos/neg answers per trait
        "trait_questions": 10,
        "trait_max_new_tokens": 20,
        "sweep_coefs": [0.0, 0.05, 0.1, 0.2, 0.3],  # ≥ 5 points inside the informative range (ENVIRONMENT.md)
        "sweep_questions": 20,
        "eval_personas": 0,  # every persona, two held-out topics each: 16 paired test dialogues a method
        "eval_topics": 2,
        "eval_persona_tokens": 12,
        "eval_assistant_tokens": 12,
        "capability_items": 60,
        "capability_finetune_sets": ["misaligned_2"],  # with and without preventative steering, on capability
        "trait_finetune_traits": ["humorous", "optimistic"],
        "trait_finetune_examples": 24,
        "trait_finetune_tokens": 24,
        "trait_finetune_steps": -1,  # one epoch over each set
        "trait_finetune_snapshots": 1,  # a mid-training adapter too: 10 fine-tuned checkpoints per trait
        "trait_finetune_eval_questions": 20,
        "trait_finetune_eval_tokens": 16,
        "trait_cap_percentiles": [10.0, 25.0, 50.0],
        "trait_cap_layers": 4,  # layers 15-18 of 30 on the 135M model
    }
)

# What people run, by name (`persona-pipeline materialize --job NAME`): asset selections that
# `runplan` splits into one Dagster run per partition set, in dependency order.
NAMED_JOBS = {
    "data": "group:specs or group:data",
    "train": "group:models",
    "representations": "group:representations",
    "evaluate": "group:evaluation",
    "everything": "*",
}


def ratings_dir() -> Path:
    """Where human ratings land (served page or downloaded JSON) and are ingested from."""
    return Path(os.environ.get("PERSONA_PIPELINE_RATINGS", data_root() / "human_ratings")).resolve()


def profile() -> Profile:
    name = os.environ.get("PERSONA_PIPELINE_PROFILE", "demo")
    if name not in PROFILES:
        raise ValueError(f"PERSONA_PIPELINE_PROFILE={name!r} is not one of {sorted(PROFILES)}")
    return PROFILES[name]
