"""Multi-turn on-policy GRPO (tiny random Llama) and the consistency scorers (real MiniLM)."""

import json

import pytest

from persona_pipeline.consistency import line_to_line, negated, prompt_to_line, qa_stability
from persona_pipeline.rl_rollouts import RolloutSettings, make_rollout_func, rollout_seeds
from persona_pipeline.train_rl import RlSettings, multiturn_rewards, train_rl
from persona_pipeline.train_sft import SftSettings, build_mixture, train_sft
from persona_pipeline_tests.test_training import SMALL_LORA, dialogues, pairs


def test_line_to_line_catches_a_contradiction_and_a_loop_but_not_a_new_line():
    earlier = ["I have two kids and they both take the school bus."]
    contradiction, loop, fresh = line_to_line(
        [earlier] * 3,
        [
            "I don't have any kids, they don't take the bus.",
            "I have two kids and they both take the school bus.",
            "What time does the museum open on Sundays?",
        ],
    )
    assert fresh > 0.9 and contradiction < 0.6 and loop < 0.2
    assert negated("I can't") and not negated("I can")


def test_prompt_to_line_and_qa_prefer_the_consistent_line():
    claims = ["A retired teacher who loves gardening and distrusts technology."]
    on, off = prompt_to_line(claims, ["My tomatoes and roses keep me busy since I retired from teaching.", "lol gg ez"])
    assert on > off
    same, other = qa_stability(
        ["I'm a retired teacher, I garden."] * 2,
        ["Retired schoolteacher here, mostly gardening.", "I race motorbikes."],
    )
    assert same > other


@pytest.mark.parametrize("cpu_dtype", ["float32", "bfloat16"])  # bf16: mixed-precision steps, autocast rollouts
def test_multiturn_grpo_plays_on_policy_dialogues_and_logs_every_term(
    tiny_model_dir, tiny_backend, tmp_path, monkeypatch, cpu_dtype
):
    monkeypatch.setenv("PERSONA_PIPELINE_CPU_DTYPE", cpu_dtype)
    convs = dialogues()
    s = SftSettings(lora=SMALL_LORA, max_steps=1, batch_size=2, max_length=512)
    train, ev, _ = build_mixture(pairs(convs), [], s)
    sft = tmp_path / "sft"
    train_sft(tiny_model_dir, train, ev, s, sft, {})
    defs = {"terse": "T", "chatty": "C"}
    seeds = rollout_seeds(convs, defs, n=4)
    assert {x["topic"] for x in seeds} == {"trains"} and "[TOPIC: trains]" in seeds[0]["prompt"][1]["content"]
    ro = RolloutSettings(turns=3, persona_tokens=6, assistant_tokens=6, probe_tokens=6)
    seen: list[dict] = []
    inner = make_rollout_func(seeds, defs, tiny_backend, ro)

    def recording(prompts, trainer):
        out = inner(prompts, trainer)
        seen.append(out)
        return out

    claims = {"terse": ["short replies"], "chatty": ["long friendly replies"]}

    def shorter(prompts, completions, **_):  # a varying stand-in judge: the tiny model cannot judge
        return [-len(c[-1]["content"]) / 50 for c in completions]

    funcs, weights = multiturn_rewards(shorter, None, claims, ro.weights)
    funcs[0] = shorter
    rs = RlSettings(lora=SMALL_LORA, max_steps=2, num_generations=4, groups_per_step=2, max_completion_length=8)
    result = train_rl(tiny_model_dir, sft, seeds, funcs, rs, tmp_path / "rl", {}, recording, weights)
    assert (tmp_path / "rl" / "adapter_model.safetensors").exists()
    logged = {k for h in result.log_history for k in h}
    for term in ("prompt_to_line", "line_to_line", "qa_consistency"):
        assert f"rewards/{term}/mean" in logged and f"rewards/{term}/std" in logged
    assert "kl" in logged and "frac_reward_zero_std" in logged
    assert len(seen) == 2  # one rollout per step: the context is replayed with the updated policy
    for out in seen:
        assert len(out["completion_ids"]) == 8 and len(out["prompt_ids"]) == 8
        history = json.loads(out["history"][0])
        assert [t["role"] for t in history] == ["user", "assistant"] * 2  # K-1 = 2 on-policy persona turns
        assert out["history"][0] == out["history"][3] != out["history"][4]  # one shared context per group
        assert len(json.loads(out["earlier"][0])) == 2 and len(out["probe_answer"]) == 8
