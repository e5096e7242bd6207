"""Activation capture and steering hooks on a tiny random Llama."""

import torch

from persona_pipeline.hooks import Steer, capture, decoder_layers, relative_coef, steering


def _inputs(backend, text="the quick brown fox"):
    return backend.tok(text, return_tensors="pt")


def test_capture_all_layers_in_one_pass_equals_hidden_states(tiny_backend):
    model, ids = tiny_backend.model, _inputs(tiny_backend)
    with torch.no_grad(), capture(model) as store:
        out = model(**ids, output_hidden_states=True)
    n = len(decoder_layers(model))
    assert sorted(store) == list(range(n)) and all(len(v) == 1 for v in store.values())
    # the last layer's hook sees the residual before the final norm; earlier ones match hidden_states exactly
    for layer in range(n - 1):
        assert torch.allclose(store[layer][0], out.hidden_states[layer + 1], atol=1e-6)


def test_capturing_one_layer_alone_equals_capturing_it_with_all(tiny_backend):
    model, ids = tiny_backend.model, _inputs(tiny_backend)
    with torch.no_grad(), capture(model, [1]) as alone:
        model(**ids)
    with torch.no_grad(), capture(model) as together:
        model(**ids)
    assert torch.equal(alone[1][0], together[1][0])


def test_zero_coef_is_identity_and_hooks_are_removed(tiny_backend):
    model, ids = tiny_backend.model, _inputs(tiny_backend)
    v = torch.randn(model.config.hidden_size)
    with torch.no_grad():
        base = model(**ids).logits
        with steering(model, [Steer(v, layer=0, coef=0.0)]):
            same = model(**ids).logits
        with steering(model, [Steer(v, layer=0, coef=8.0)]):
            pushed = model(**ids).logits
        after = model(**ids).logits
    assert torch.equal(base, same) and not torch.allclose(base, pushed) and torch.equal(base, after)


def test_ablate_removes_the_component_and_cap_bounds_the_projection(tiny_backend):
    model, ids = tiny_backend.model, _inputs(tiny_backend)
    v = torch.randn(model.config.hidden_size)
    unit = v / v.norm()
    with torch.no_grad():
        with steering(model, [Steer(v, layer=0, mode="ablate")]), capture(model, [0]) as s:
            model(**ids)
        assert (s[0][0] @ unit).abs().max() < 1e-4
        with steering(model, [Steer(v, layer=0, mode="cap", threshold=1.5)]), capture(model, [0]) as s:
            model(**ids)
        assert (s[0][0] @ unit).min() >= 1.5 - 1e-4


def test_response_only_steering_leaves_the_prompt_pass_alone(tiny_backend):
    model, ids = tiny_backend.model, _inputs(tiny_backend)
    v = torch.randn(model.config.hidden_size)
    with torch.no_grad():
        base = model(**ids).logits
        with steering(model, [Steer(v, layer=0, coef=5.0, positions="response")]):
            prefill = model(**ids).logits
    assert torch.equal(base, prefill)


def test_relative_coef_scales_by_layer_norm():
    v = torch.ones(4) * 2  # norm 4
    assert relative_coef(0.5, 100.0, v) == 12.5


def test_local_backend_generates_with_steering_for_a_batch(tiny_backend):
    from persona_pipeline.backends import SamplingParams

    chats = [[{"role": "user", "content": "tell me a story"}], [{"role": "user", "content": "hi"}]]
    p = SamplingParams(max_new_tokens=6, temperature=1.0, top_p=1.0, seed=1)
    v = torch.randn(tiny_backend.model.config.hidden_size)
    base = tiny_backend.next_token_logprobs(chats, top_k=3)
    with tiny_backend.steered([Steer(v, layer=1, coef=0.0)]):
        assert tiny_backend.next_token_logprobs(chats, top_k=3) == base
        assert tiny_backend.complete(chats, p) == tiny_backend.complete(chats, p)
    with tiny_backend.steered([Steer(v, layer=1, coef=20.0)]):
        assert tiny_backend.next_token_logprobs(chats, top_k=3) != base
    assert tiny_backend.next_token_logprobs(chats, top_k=3) == base  # removed on exit
