"""SFT and GRPO on a tiny random Llama: the adapter trains, saves atomically and changes outputs."""

import json

import pytest
import torch

from persona_pipeline.contracts import Conversation, ConversationMetadata, Turn
from persona_pipeline.train_rl import RlSettings, combine_adapters, make_reward, rl_prompts, train_rl
from persona_pipeline.train_sft import LoraSettings, SftSettings, build_mixture, train_sft
from persona_pipeline.unroll import unroll

LINES = [
    "hey, my train got cancelled",
    "Sorry to hear that. Where are you going?",
    "Milan, tonight. options?",
    "There is a bus at 9pm.",
    "ugh buses. fine. how long?",
    "About 6 hours.",
    "ok booking it [bye]",
    "Safe travels!",
    "one more thing: refunds?",
    "You can request one online.",
]


def dialogues(n=6):
    out = []
    for k in range(n):
        turns = [Turn(role="user" if i % 2 == 0 else "assistant", content=f"{x} ({k})") for i, x in enumerate(LINES)]
        out.append(
            Conversation(
                id=f"c{k}",
                persona_id="terse" if k % 2 else "chatty",
                topic="trains",
                turns=turns,
                metadata=ConversationMetadata(source="hitl" if k == 0 else "synthetic"),
            )
        )
    return out


def pairs(convs):
    return [p.model_dump(mode="json") for c in convs for p in unroll(c, f"definition of {c.persona_id}")]


SMALL_LORA = LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=("q_proj", "v_proj"))


def test_mixture_weights_sources_and_holds_out_whole_conversations():
    ps = pairs(dialogues())
    s = SftSettings(weights={"synthetic": 1, "hitl": 3, "retention": 2}, eval_fraction=0.3)
    retention = [
        {"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": "Hello!"}]}
    ]
    train, ev, mix = build_mixture(ps, retention, s)
    assert mix["sources"]["retention"]["rows"] == 2
    assert ev and all(r["source"] != "retention" for r in ev)
    histories = lambda rows: {r["prompt"][-1]["content"] for r in rows if "<empty>" not in r["prompt"][-1]["content"]}
    assert not histories(ev) & histories(r for r in train if r["source"] != "retention")
    with pytest.raises(ValueError, match="empty"):
        build_mixture([], [], s)


def test_sft_trains_saves_safetensors_and_changes_outputs(tiny_model_dir, tmp_path):
    from persona_pipeline.modelio import load_model

    ps = pairs(dialogues())
    s = SftSettings(lora=SMALL_LORA, max_steps=3, batch_size=2, learning_rate=5e-3, max_length=512, eval_fraction=0.3)
    train, ev, _ = build_mixture(ps, [], s)
    out = tmp_path / "sft"
    result = train_sft(tiny_model_dir, train, ev, s, out, {"base_model": "tiny", "personas": ["terse", "chatty"]})
    assert (out / "adapter_model.safetensors").exists() and (out / "README.md").exists()
    assert not list(out.glob("*.bin")) and not list(tmp_path.glob(".sft.*"))
    assert result.eval_loss < result.base_eval_loss  # a high LR on a repeated pattern must lower held-out loss
    assert result.train_tokens > 0 and any("loss" in h for h in result.log_history)
    base, tok = load_model(tiny_model_dir)
    tuned, _ = load_model(tiny_model_dir, adapter=out)
    ids = tok("hello there", return_tensors="pt")
    with torch.no_grad():
        assert not torch.allclose(base(**ids).logits, tuned(**ids).logits)


def test_reward_penalises_degenerate_and_out_of_character_lines(tiny_backend):
    reward = make_reward(tiny_backend, "logprob")
    spec, hist = ["a terse user"] * 3, [json.dumps([{"role": "assistant", "content": "Hi"}])] * 3
    natural, looped, broken = reward(
        None,
        [
            [{"content": "fine. how long is the bus?"}],
            [{"content": "why why why why why why why"}],
            [{"content": "As an AI language model, how can I help you today?"}],
        ],
        spec,
        hist,
    )
    assert looped < natural and broken < natural
    assert all(-1 <= r <= 1 for r in (natural, looped, broken))


def test_rl_prompts_cover_depths_and_boring_assistants():
    convs = dialogues(6)
    rows = rl_prompts(convs, {"terse": "T", "chatty": "C"}, n=12, heldout=False, boring_share=0.5)
    assert max(r["depth"] for r in rows) == 8 and min(r["depth"] for r in rows) == 2
    assert any(r["boring"] for r in rows)
    assert all(r["prompt"][1]["content"].startswith("[PERSONA: ") for r in rows)


def test_grpo_refines_from_sft_into_one_loadable_adapter(tiny_model_dir, tmp_path):
    from peft import PeftModel

    from persona_pipeline.modelio import load_model

    convs = dialogues()
    s = SftSettings(lora=SMALL_LORA, max_steps=1, batch_size=2, max_length=512)
    train, ev, _ = build_mixture(pairs(convs), [], s)
    sft = tmp_path / "sft"
    train_sft(tiny_model_dir, train, ev, s, sft, {})
    prompts = rl_prompts(convs, {"terse": "T", "chatty": "C"}, n=4, heldout=False)
    rl = tmp_path / "rl"
    rs = RlSettings(
        lora=SMALL_LORA, max_steps=2, num_generations=4, max_completion_length=8, learning_rate=5e-2, temperature=1.5
    )

    def shorter_is_better(prompts, completions, **_):  # a real, varying reward: the tiny judge is pure noise
        return [-len(c[-1]["content"]) / 50 for c in completions]

    result = train_rl(tiny_model_dir, sft, prompts, shorter_is_better, rs, rl, {})
    assert (rl / "adapter_model.safetensors").exists()
    assert any("reward" in h for h in result.log_history) and any("kl" in h for h in result.log_history)
    # the saved single adapter equals base + SFT + RL delta
    base, tok = load_model(tiny_model_dir)
    combined = PeftModel.from_pretrained(base, str(rl)).eval()
    ids = tok("where is my refund", return_tensors="pt")
    with torch.no_grad():
        got = combined(**ids).logits
        sft_only = PeftModel.from_pretrained(load_model(tiny_model_dir)[0], str(sft)).eval()(**ids).logits
    assert not torch.allclose(got, sft_only)  # RL changed something…
    assert torch.isfinite(got).all()


def test_combine_adapters_is_the_exact_sum(tiny_model_dir, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    from persona_pipeline.modelio import load_model

    def random_adapter(path, seed):
        torch.manual_seed(seed)
        m = get_peft_model(
            load_model(tiny_model_dir)[0], LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
        )
        for n, p in m.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.02)
        m.save_pretrained(path)

    random_adapter(tmp_path / "a", 1)
    random_adapter(tmp_path / "b", 2)
    combine_adapters(tiny_model_dir, tmp_path / "a", tmp_path / "b", tmp_path / "ab")
    model, tok = load_model(tiny_model_dir)
    ids = tok("a quick check", return_tensors="pt")
    merged = PeftModel.from_pretrained(model, str(tmp_path / "a")).merge_and_unload()
    expected = PeftModel.from_pretrained(merged, str(tmp_path / "b")).eval()
    got = PeftModel.from_pretrained(load_model(tiny_model_dir)[0], str(tmp_path / "ab")).eval()
    with torch.no_grad():
        assert torch.allclose(expected(**ids).logits, got(**ids).logits, atol=1e-4)


def test_qlora_nf4_training_runs_when_asked(tiny_model_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    s = SftSettings(lora=SMALL_LORA, max_steps=2, batch_size=2, max_length=512, quantize="nf4", eval_fraction=0.3)
    train, ev, _ = build_mixture(pairs(dialogues()), [], s)
    result = train_sft(tiny_model_dir, train, ev, s, tmp_path / "qlora", {"base_model": "tiny"})
    assert (tmp_path / "qlora" / "adapter_model.safetensors").exists()
    assert "nf4" in (tmp_path / "qlora" / "README.md").read_text()
    assert result.train_tokens > 0


def test_preventative_steering_changes_what_training_learns_and_is_off_afterwards(tiny_model_dir, tmp_path):
    """Same data and seed; only the training-time push differs → different adapters. The push is
    applied only while training: the saved adapter loads and runs with no hooks attached."""
    from safetensors.torch import load_file

    from persona_pipeline.hooks import decoder_layers
    from persona_pipeline.modelio import load_model
    from persona_pipeline.train_sft import PreventiveSteer

    ps = pairs(dialogues())
    runs = {}
    for name, steer in (("plain", None), ("steered", PreventiveSteer(torch.ones(64), layer=0, coef=6.0))):
        s = SftSettings(
            lora=SMALL_LORA,
            max_steps=2,
            batch_size=2,
            learning_rate=5e-3,
            max_length=512,
            eval_fraction=0.3,
            steer=steer,
        )
        train, ev, _ = build_mixture(ps, [], s)
        train_sft(tiny_model_dir, train, ev, s, tmp_path / name, {"base_model": "tiny"})
        runs[name] = load_file(str(tmp_path / name / "adapter_model.safetensors"))
    assert any(not torch.allclose(runs["plain"][k], runs["steered"][k]) for k in runs["plain"])
    summary = json.loads((tmp_path / "steered" / "training_summary.json").read_text())
    assert summary["settings"]["steer"] == {"layer": 0, "coef": 6.0, "mode": "add"}
    model, _ = load_model(tiny_model_dir, adapter=tmp_path / "steered")
    assert all(not layer._forward_hooks for layer in decoder_layers(model))
    with pytest.raises(ValueError, match="mode"):
        PreventiveSteer(torch.ones(64), 0, mode="cap").hooks()


@pytest.mark.slow
def test_the_sft_job_trains_under_accelerate_launch(tiny_model_dir, tmp_path):
    """The path multi-GPU training takes (`sft_adapter` with num_processes > 1), run here as one CPU process."""
    import subprocess
    import sys
    from pathlib import Path

    from persona_pipeline.train_sft import write_job

    s = SftSettings(lora=SMALL_LORA, max_steps=2, batch_size=2, max_length=512, eval_fraction=0.3)
    train, ev, _ = build_mixture(pairs(dialogues()), [], s)
    out, job = tmp_path / "adapter", tmp_path / "job.json"
    write_job(job, str(tiny_model_dir), train, ev, s, out, {"base_model": "tiny"})
    accelerate = Path(sys.executable).parent / "accelerate"
    proc = subprocess.run(
        [
            str(accelerate),
            "launch",
            "--cpu",
            "--num_processes",
            "1",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            "persona_pipeline.cli",
            "train-sft",
            "--job",
            str(job),
        ],
        capture_output=True,
        check=False,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "adapter_model.safetensors").exists()
    result = json.loads((tmp_path / "adapter.result.json").read_text())
    assert result["train_tokens"] > 0 and result["eval_loss"] > 0


def test_scoring_labelled_positions_only_leaves_sft_losses_unchanged(tiny_model_dir, tmp_path):
    """TRL's fused head made compact on CPUs (persona_pipeline.trl_scoring): the same losses as scoring every position."""
    import trl.trainer.utils as tu

    from persona_pipeline.trl_scoring import score_labelled_positions_only

    ps = pairs(dialogues())
    s = SftSettings(lora=SMALL_LORA, max_steps=2, batch_size=2, learning_rate=5e-3, max_length=512, eval_fraction=0.3)
    train, ev, _ = build_mixture(ps, [], s)
    assert score_labelled_positions_only() and score_labelled_positions_only()  # idempotent
    compact = tu._use_triton
    assert compact(torch.device("cpu"))
    losses = {}
    try:
        for name, switch in (("every", compact.original), ("labelled", compact)):
            tu._use_triton = switch
            with pytest.MonkeyPatch.context() as mp:  # train_sft switches it on; keep this run's choice
                mp.setattr("persona_pipeline.trl_scoring.score_labelled_positions_only", lambda: True)
                r = train_sft(tiny_model_dir, train, ev, s, tmp_path / name, {})
            losses[name] = [h["loss"] for h in r.log_history if "loss" in h] + [r.base_eval_loss, r.eval_loss]
    finally:
        tu._use_triton = compact
    assert losses["every"] == pytest.approx(losses["labelled"], rel=1e-4)
