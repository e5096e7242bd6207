"""Models group: the base model, the SFT adapter and the GRPO-refined adapter."""

import os
from pathlib import Path
from typing import Literal

import dagster as dg

from persona_pipeline.contracts import Conversation
from persona_pipeline.defs.assets._common import (
    GPU,
    PersonaJudge,
    ProfileConfig,
    Quantize,
    md_table,
    persona_judge,
    png_meta,
)
from persona_pipeline.defs.resources import ModelResource
from persona_pipeline.general_chat import load_general_chat, training_rows
from persona_pipeline.layout import layout
from persona_pipeline.modelio import EMBEDDED, convert_embedded, resolve_quantize
from persona_pipeline.persona_simulator import definitions, greedy_lines
from persona_pipeline.plots import line_plot
from persona_pipeline.rl_rollouts import RolloutSettings, make_rollout_func, rollout_seeds
from persona_pipeline.settings import data_root, profile
from persona_pipeline.train_rl import (
    RlSettings,
    consistency_claims,
    make_reward,
    mean_reward,
    multiturn_rewards,
    reward_terms,
    rl_prompts,
    term_rows,
    train_rl,
)
from persona_pipeline.train_sft import (
    TARGET_MODULES,
    LoraSettings,
    SftSettings,
    build_mixture,
    log_curve,
    preventive_steer,
    retention_check,
    retention_rows,
    train_sft_processes,
)

GROUP = "models"


class BaseModelConfig(dg.Config):
    """``embedded`` converts the shipped SmolLM2 GGUF; otherwise an HF model id or a local folder.

    Defaults to ``PERSONA_POLICY_MODEL`` so the base and the policy resource agree.
    """

    model: str = os.environ.get("PERSONA_POLICY_MODEL", EMBEDDED)


def _describe_remote(model: str) -> dict:
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model)
    return {
        "path": model,
        "layers": cfg.num_hidden_layers,
        "hidden_size": cfg.hidden_size,
        "dtype": str(getattr(cfg, "torch_dtype", None) or getattr(cfg, "dtype", "auto")),
        "cache_hit": True,
    }


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "safetensors"},
    description="The policy base model as a local HF folder (embedded: SmolLM2-135M-Instruct GGUF → fp32 safetensors, once).",
)
def base_model(context: dg.AssetExecutionContext, config: BaseModelConfig) -> dict:
    if config.model == EMBEDDED:
        dest = layout().base_model
        manifest = {**convert_embedded(dest), "path": str(dest)}
    elif Path(config.model).exists():
        manifest = {**_describe_remote(str(Path(config.model).resolve())), "path": str(Path(config.model).resolve())}
    else:
        manifest = _describe_remote(config.model)
    context.add_output_metadata(
        {
            k: v
            for k, v in manifest.items()
            if k in ("params", "layers", "hidden_size", "dtype", "cache_hit", "source_sha256")
        }
        | {"location": dg.MetadataValue.path(manifest["path"])}
    )
    return manifest


class SftConfig(ProfileConfig):
    """LoRA hyperparameters as in the seed (r 32, α 64, dropout 0.1, all projections); None → profile."""

    PROFILE = {
        "max_steps": "sft_max_steps",
        "batch_size": "sft_batch_size",
        "max_length": "sft_max_length",
        "retention_prompts": "retention_prompts",
    }

    r: int = 32
    alpha: int = 64
    dropout: float = 0.1
    target_modules: list[str] = list(TARGET_MODULES)
    learning_rate: float = 2e-4
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int | None = None
    max_length: int | None = None  # None → profile (sft_max_length)
    eval_fraction: float = 0.1
    weights: dict[str, float] = {"synthetic": 1.0, "hitl": 2.0, "survey": 2.0, "retention": 1.0, "general": 2.0}
    logging_steps: int = 1  # a loss point per step: the demo's curve needs ≥ 20 points
    retention_prompts: int | None = None
    quantize: Quantize = "auto"
    seed: int = 0
    # training-time (preventative) steering: a vector name from a previous run (e.g. "impolite",
    # "persona:skeptic", "assistant_axis") or a .safetensors path; None = off
    preventative_vector: str | None = None
    preventative_layer: int | None = None  # default: the middle layer
    preventative_coef: float = 4.0
    preventative_mode: Literal["add", "ablate"] = "add"
    # > 1: data-parallel training, one process per GPU, via `accelerate launch` (deploy/accelerate.yaml)
    num_processes: int = 1

    def steer(self, n_layers: int):
        return preventive_steer(
            self.preventative_vector, self.preventative_layer, self.preventative_coef, self.preventative_mode, n_layers
        )

    def settings(self) -> SftSettings:
        return SftSettings(
            lora=LoraSettings(self.r, self.alpha, self.dropout, tuple(self.target_modules)),
            learning_rate=self.learning_rate,
            epochs=self.epochs,
            max_steps=self.max_steps,
            batch_size=self.batch_size,
            max_length=self.max_length,
            eval_fraction=self.eval_fraction,
            max_eval_rows=profile().sft_eval_rows,
            weights=self.weights,
            logging_steps=self.logging_steps,
            quantize=resolve_quantize(self.quantize),
            seed=self.seed,
        )


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "safetensors"},
    **GPU,
    description="One LoRA/QLoRA adapter for all personas (switch by [PERSONA: id]), trained with TRL SFTTrainer on sft_pairs.",
)
def sft_adapter(
    context: dg.AssetExecutionContext, config: SftConfig, sft_pairs: list[dict], base_model: dict, role_specs: dict
) -> dict:
    s = config.settings()
    s.steer = config.steer(base_model.get("layers") or 30)
    n_ret = config.retention_prompts
    general = load_general_chat(data_root() / "general_chat.jsonl")
    retention = retention_rows(base_model["path"], role_specs["questions"], n_ret) + training_rows(general)
    train, eval_rows, mixture = build_mixture(sft_pairs, retention, s)
    split = mixture.pop("split")  # re-read by the sft_split_leak_free check and the human-eval page
    out = layout().adapter("sft")
    card = {
        "name": "persona-pipeline SFT persona simulator",
        "base_model": base_model.get("model_id", base_model["path"]),
        "data_version": _data_version(context, "sft_pairs"),
        "personas": sorted({p["persona_id"] for p in sft_pairs}),
    }
    r = train_sft_processes(base_model["path"], train, eval_rows, s, out, card, config.num_processes)
    png = line_plot({"train loss": log_curve(r.log_history, "loss")}, "SFT loss", "step", "loss")
    p = profile()
    kept = retention_check(base_model["path"], str(out), general, p.check_prompts, p.assistant_max_new_tokens)
    plots: dict[str, str] = {}
    context.add_output_metadata(
        {
            "path": dg.MetadataValue.path(str(out)),
            "base_eval_loss": round(r.base_eval_loss, 4),
            "eval_loss": round(r.eval_loss, 4),
            "tokens_per_second": round(r.tokens_per_second, 1),
            "train_tokens": r.train_tokens,
            "seconds": round(r.seconds, 1),
            "dropped_overlong": r.dropped_overlong,
            "heldout_sessions": len(split["heldout_sessions"]),
            "heldout_pairs": len(split["heldout_ids"]),
            "mixture": md_table([{"source": k, **v} for k, v in mixture["sources"].items()]),
            "loss_points": len(log_curve(r.log_history, "loss")[0]),
            "general_chat_retention": dg.MetadataValue.json(kept),
            **png_meta(png, "sft_loss", "loss_curve", layout().training_plot("sft_loss"), plots),
        }
    )
    return {
        "path": str(out),
        "base_model": base_model["path"],
        "base_eval_loss": r.base_eval_loss,
        "eval_loss": r.eval_loss,
        "tokens_per_second": r.tokens_per_second,
        "mixture": mixture,
        "split": split,
        "general_chat_retention": kept,
        "plots": plots,
    }


def _data_version(context: dg.AssetExecutionContext, asset: str) -> str:
    record = context.instance.get_latest_materialization_event(dg.AssetKey(asset))
    return str(record.run_id)[:8] if record else "unknown"


class RlConfig(ProfileConfig):
    PROFILE = {
        "learning_rate": "rl_learning_rate",
        "max_steps": "rl_max_steps",
        "num_generations": "rl_num_generations",
        "turns": "rl_turns",
        "prompts": "rl_prompts",
        "max_completion_length": "rl_completion_tokens",
    }

    beta: float = 0.1
    learning_rate: float | None = None  # None → profile (rl_learning_rate)
    max_steps: int | None = None
    num_generations: int | None = None
    temperature: float = 1.0  # GRPO groups need different lines: sample hot
    multiturn: bool = True  # on-policy K-turn rollouts against the assistant; False: single-turn baseline
    turns: int | None = None  # K persona turns per rollout; None → profile (rl_turns)
    consistency_weights: dict[str, float] = RolloutSettings().weights
    prompts: int | None = None
    max_completion_length: int | None = None  # None → profile (rl_completion_tokens)
    r: int = 16
    alpha: int = 32
    judge_method: PersonaJudge = "auto"  # auto: MiniLM voice judge with the local judge model, logprob with an endpoint
    boring_share: float = 0.3
    seed: int = 0
    quantize: Quantize = "auto"  # like sft_adapter


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "safetensors"},
    **GPU,
    description="GRPO-refined adapter (TRL, LLM-judge persona reward, KL β to the SFT model), saved as one standalone LoRA.",
)
def rl_adapter(
    context: dg.AssetExecutionContext,
    config: RlConfig,
    sft_adapter: dict,
    base_model: dict,
    conversations: list[dict],
    persona_specs: list[dict],
    surveys: dict,
    judge: ModelResource,
    assistant: ModelResource,
) -> dict:
    p = profile()
    judge_backend, method = persona_judge(config.judge_method, judge, persona_specs, surveys, purpose="reward")
    s = RlSettings(
        lora=LoraSettings(config.r, config.alpha, 0.05),
        beta=config.beta,
        learning_rate=config.learning_rate,
        max_steps=config.max_steps,
        num_generations=config.num_generations,
        groups_per_step=p.rl_groups_per_step,
        temperature=config.temperature,
        multiturn=config.multiturn,
        max_completion_length=config.max_completion_length,
        judge_method=method,
        boring_share=config.boring_share,
        seed=config.seed,
        quantize=resolve_quantize(config.quantize),
    )
    convs = [Conversation(**c) for c in conversations]
    defs, full = definitions(persona_specs, surveys), definitions(persona_specs, surveys, compact=False)
    train = rl_prompts(
        convs,
        defs,
        config.prompts,
        False,
        s.seed,
        s.boring_share,
        judge_specs=full,
        max_depth=p.rl_max_depth,
    )
    heldout = rl_prompts(
        convs, defs, p.check_prompts, True, s.seed, s.boring_share, judge_specs=full, max_depth=p.rl_max_depth
    )
    out = layout().adapter("rl")
    card = {"base_model": base_model["path"], "sft_adapter": sft_adapter["path"], "judge": judge.describe()}
    if s.multiturn:
        ro = RolloutSettings(
            turns=config.turns,
            persona_tokens=p.rl_completion_tokens,
            assistant_tokens=p.rl_completion_tokens,
            probe_tokens=p.rl_completion_tokens,
            weights=config.consistency_weights,
        )
        train = rollout_seeds(convs, defs, config.prompts, s.seed, judge_specs=full)
        funcs, weights = multiturn_rewards(
            judge_backend, s.judge_method, consistency_claims(persona_specs, full), ro.weights
        )
        rollout = make_rollout_func(train, defs, assistant.backend(), ro)
        r = train_rl(base_model["path"], Path(sft_adapter["path"]), train, funcs, s, out, card, rollout, weights)
    else:
        r = train_rl(
            base_model["path"],
            Path(sft_adapter["path"]),
            train,
            make_reward(judge_backend, s.judge_method),
            s,
            out,
            card,
        )
    # the same cached greedy lines the sft/rl checks read (one generation per policy per run)
    lines = lambda adapter: greedy_lines(base_model["path"], adapter, heldout, p.persona_max_new_tokens)
    before = mean_reward(lines(sft_adapter["path"]), heldout, judge_backend, s.judge_method)
    after = mean_reward(lines(str(out)), heldout, judge_backend, s.judge_method)
    terms = {k.split("/")[1]: log_curve(r.log_history, k) for k in reward_terms(r.log_history)}
    curves = line_plot({"reward": log_curve(r.log_history, "reward"), **terms}, "GRPO reward", "step", "mean reward")
    kl = line_plot({"KL": log_curve(r.log_history, "kl")}, "KL to the SFT policy", "step", "KL")
    plots: dict[str, str] = {}
    context.add_output_metadata(
        {
            "path": dg.MetadataValue.path(str(out)),
            "mean_reward_sft": round(before, 4),
            "mean_reward_rl": round(after, 4),
            "seconds_per_step": round(r.seconds_per_step, 1),
            "beta": s.beta,
            "judge": judge.describe(),
            "judge_method": method,
            "mode": f"multi-turn on-policy, K={config.turns}" if s.multiturn else "single-turn",
            "train_prompts": len(train),
            "steps_logged": len(log_curve(r.log_history, "kl")[0]),
            "zero_variance_group_share": round(r.zero_std_share, 3),
            "num_generations": s.num_generations,
            "temperature": s.temperature,
            "final_kl": round(log_curve(r.log_history, "kl")[1][-1], 6) if log_curve(r.log_history, "kl")[1] else None,
            "reward_terms": md_table(term_rows(r.log_history)),
            **png_meta(curves, "rl_reward", "reward_curve", layout().training_plot("rl_reward"), plots),
            **png_meta(kl, "rl_kl", "kl_curve", layout().training_plot("rl_kl"), plots),
        }
    )
    return {
        "path": str(out),
        "base_model": base_model["path"],
        "sft_adapter": sft_adapter["path"],
        "mean_reward_sft": before,
        "mean_reward_rl": after,
        "seconds_per_step": r.seconds_per_step,
        "mode": "multiturn" if s.multiturn else "single-turn",
        "zero_variance_group_share": r.zero_std_share,
        "num_generations": s.num_generations,
        "temperature": s.temperature,
        "reward_terms": [k.split("/")[1] for k in reward_terms(r.log_history)],
        "plots": plots,
    }
