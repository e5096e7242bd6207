"""Model loading and the local backend, on a tiny random Llama (fast) and the real embedded model."""

import pytest
import torch

from persona_pipeline.backends import SamplingParams
from persona_pipeline.backends.base import apply_stops
from persona_pipeline.modelio import LoadOptions, convert_embedded, load_model, read_manifest

CHATS = [
    [{"role": "user", "content": "hi"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Explain how a bicycle gear works in detail."},
    ],
    [{"role": "user", "content": "Name three rivers in Europe, please, with one fact each."}],
]
GREEDY = SamplingParams(max_new_tokens=12, temperature=0)


def test_batched_generation_matches_one_at_a_time(tiny_backend):
    batched = tiny_backend.complete(CHATS, GREEDY)
    single = [tiny_backend.complete([c], GREEDY)[0] for c in CHATS]
    assert batched == single
    assert all(isinstance(x, str) for x in batched)


def test_left_padding_and_order_are_preserved(tiny_backend):
    assert tiny_backend.tok.padding_side == "left"
    out = tiny_backend.complete(list(reversed(CHATS)), GREEDY)
    assert out == list(reversed(tiny_backend.complete(CHATS, GREEDY)))


def test_seeded_sampling_is_reproducible(tiny_backend):
    p = SamplingParams(max_new_tokens=10, temperature=1.0, seed=7)
    assert tiny_backend.complete(CHATS, p) == tiny_backend.complete(CHATS, p)


def test_apply_stops_cuts_at_the_earliest_stop():
    assert apply_stops("alpha beta. gamma\nuser: x", ["\nuser:", "."]) == "alpha beta"
    assert apply_stops("no stops here", []) == "no stops here"


@pytest.mark.integration
def test_stop_strings_cut_a_real_completion(embedded_backend):
    text = embedded_backend.complete(CHATS[2:], SamplingParams(max_new_tokens=24, temperature=0))[0]
    word = text.split()[2]
    cut = embedded_backend.complete(CHATS[2:], SamplingParams(max_new_tokens=24, temperature=0, stop=[word]))[0]
    assert text.startswith(cut) and word not in cut


def test_next_token_logprobs_are_a_top_k_distribution(tiny_backend):
    out = tiny_backend.next_token_logprobs(CHATS, top_k=5)
    assert len(out) == 3
    for d in out:
        assert 1 <= len(d) <= 5
        assert all(v <= 0 for v in d.values())
        assert sum(torch.tensor(list(d.values())).exp()) <= 1.0001


def test_missing_adapter_is_a_clear_error(tiny_model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_model(tiny_model_dir, adapter=tmp_path)


def test_pad_token_is_not_eos(tiny_backend):
    assert tiny_backend.tok.pad_token_id != tiny_backend.tok.eos_token_id


def test_nf4_quantised_load_generates_on_cpu(embedded_dir):
    pytest.importorskip("bitsandbytes")
    model, tok = load_model(embedded_dir, opts=LoadOptions(quantize="nf4", device="cpu"))
    assert any("4bit" in type(m).__name__ for m in model.modules())
    ids = tok("Hello", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_unknown_quantisation_is_rejected(tiny_model_dir):
    with pytest.raises(ValueError, match="nf4"):
        load_model(tiny_model_dir, opts=LoadOptions(quantize="int3"))


@pytest.mark.integration
def test_embedded_conversion_is_cached_by_hash(embedded_dir):
    manifest = convert_embedded(embedded_dir)
    assert manifest["cache_hit"] is True
    on_disk = read_manifest(embedded_dir)
    assert on_disk["layers"] == 30 and on_disk["hidden_size"] == 576 and on_disk["dtype"] == "float32"
    assert (embedded_dir / "model.safetensors").exists() and (embedded_dir / "chat_template.jinja").exists()


@pytest.mark.integration
def test_embedded_model_batched_greedy_equals_single(embedded_backend):
    p = SamplingParams(max_new_tokens=16, temperature=0)
    batched = embedded_backend.complete(CHATS, p)
    assert batched == [embedded_backend.complete([c], p)[0] for c in CHATS]
    assert all(len(x.split()) >= 2 for x in batched)  # a real model says real words


def test_inference_dtype_follows_env_then_profile(tiny_model_dir, monkeypatch):
    """Generation loads take the CPU dtype from the env var, else the profile (demo: bf16); bad names fail."""
    from persona_pipeline.modelio import CPU_DTYPE_ENV, inference_options

    monkeypatch.delenv(CPU_DTYPE_ENV)
    monkeypatch.setenv("PERSONA_PIPELINE_PROFILE", "demo")
    assert inference_options().dtype == "bfloat16"
    assert inference_options(exact=True).dtype == "float32"  # adapters, and a base compared with one
    monkeypatch.setenv("PERSONA_PIPELINE_PROFILE", "ci")
    assert inference_options().dtype == "float32"
    monkeypatch.setenv(CPU_DTYPE_ENV, "bfloat16")
    model, _ = load_model(tiny_model_dir, opts=inference_options())
    assert next(model.parameters()).dtype == torch.bfloat16
    assert inference_options("nf4").dtype is None  # quantised loads keep their own compute dtype
    monkeypatch.setenv(CPU_DTYPE_ENV, "float16")
    with pytest.raises(ValueError, match="PERSONA_PIPELINE_CPU_DTYPE='float16'"):
        inference_options()


def test_inference_loads_merge_the_adapter_into_the_weights(tiny_model_dir, tmp_path):
    """A generation-only load folds the LoRA in (a plain model, ~1.4x faster) and computes what base + LoRA does."""
    from peft import LoraConfig, PeftModel, get_peft_model

    model, tok = load_model(tiny_model_dir)
    torch.manual_seed(1)
    peft = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    peft.save_pretrained(tmp_path / "adapter")
    separate, _ = load_model(tiny_model_dir, tmp_path / "adapter")
    merged, _ = load_model(tiny_model_dir, tmp_path / "adapter", LoadOptions(merge=True))
    assert isinstance(separate, PeftModel) and not isinstance(merged, PeftModel)
    ids = tok("a persona line", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        want, got, plain = separate(ids).logits, merged(ids).logits, load_model(tiny_model_dir)[0](ids).logits
    assert torch.allclose(want, got, atol=1e-4) and not torch.allclose(want, plain, atol=1e-4)


def test_greedy_lines_are_generated_once_per_policy(tiny_model_dir):
    """rl_adapter's before/after reward and the models' checks share one generation of the held-out lines."""
    from persona_pipeline.persona_simulator import _cached_lines, greedy_lines

    rows = [{"prompt": c} for c in CHATS[:2]]
    first = greedy_lines(str(tiny_model_dir), None, rows, 4)
    hits = _cached_lines.cache_info().hits
    assert greedy_lines(str(tiny_model_dir), None, rows, 4) == first and len(first) == 2
    assert _cached_lines.cache_info().hits == hits + 1
