"""Prefix KV caching in the local backend: same lines as a full prefill, fewer tokens prefilled."""

import pytest
import torch

from persona_pipeline.backends import SamplingParams
from persona_pipeline.backends import prefix_cache as pc
from persona_pipeline.backends.local import LocalBackend
from persona_pipeline.hooks import Steer

GREEDY = SamplingParams(max_new_tokens=8, temperature=0)
SYSTEM = "You are Marta, a retired railway engineer who doubts every claim and asks for the evidence behind it."


def _dialogue(backend: LocalBackend, personas: int = 3, turns: int = 4) -> list[list[str]]:
    """Every persona's line per turn, the history growing as a test dialogue's does."""
    history = [[] for _ in range(personas)]
    lines = []
    for _ in range(turns):
        chats = [[{"role": "system", "content": f"{SYSTEM} Persona {i}."}, *h] for i, h in enumerate(history)]
        said = backend.complete([[*c, {"role": "user", "content": "Go on."}] for c in chats], GREEDY)
        for h, line in zip(history, said):
            h += [{"role": "user", "content": "Go on."}, {"role": "assistant", "content": line or "..."}]
        lines.append(said)
    return lines


def _pair(backend: LocalBackend) -> tuple[LocalBackend, LocalBackend]:
    return (
        LocalBackend(backend.model, backend.tok, prefix_cache=False),
        LocalBackend(backend.model, backend.tok, prefix_cache=True),
    )


def test_cached_prefill_gives_the_same_logits_as_a_full_one(tiny_backend):
    """The mechanism itself: states of a shared prefix, padded into a batch, then only the new tokens."""
    model, tok = tiny_backend.model, tiny_backend.tok
    enc = lambda text: tuple(tok(text, add_special_tokens=False)["input_ids"])
    first, second = enc(SYSTEM + " One."), enc(SYSTEM + " One. And a longer second prompt than that.")
    store = pc.PrefixStore(min_shared=1)
    cold = pc.assemble([first], [(0, None)], tok.pad_token_id, "cpu")
    with torch.inference_mode():
        model(input_ids=cold.input_ids, attention_mask=cold.mask, cache=cold.cache, use_cache=True)
        store.put("", first, pc.prompt_states(cold, 1)[0])
        rows = [second, enc("Something unrelated.")]
        found = [store.longest("", x[:-1]) for x in rows]
        assert found[0][0] == len(first) and found[1][0] == 0
        warm = pc.assemble(rows, found, tok.pad_token_id, "cpu")
        cached = model(input_ids=warm.input_ids[:, warm.cached :], attention_mask=warm.mask, cache=warm.cache)
        for r, x in enumerate(rows):
            full = model(input_ids=torch.tensor([x])).logits[0, -1]
            assert torch.allclose(cached.logits[r, -1], full, atol=1e-4)


def test_dialogue_lines_match_and_the_history_is_not_prefilled_again(tiny_backend):
    plain, cached = _pair(tiny_backend)
    assert _dialogue(cached) == _dialogue(plain)
    assert cached.prefix.reused_tokens > cached.prefix.computed_tokens > 0


@pytest.mark.integration
def test_embedded_model_dialogue_is_unchanged_by_the_cache(embedded_backend):
    plain, cached = _pair(embedded_backend)
    assert _dialogue(cached, personas=2, turns=3) == _dialogue(plain, personas=2, turns=3)


def test_steered_rows_are_cached_under_their_own_vector(tiny_backend):
    plain, cached = _pair(tiny_backend)
    hidden = tiny_backend.model.config.hidden_size
    vectors = torch.stack([torch.zeros(hidden), 3 * torch.randn(hidden, generator=torch.Generator().manual_seed(1))])
    steer = Steer(vectors, layer=1, coef=1.0)
    chats = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Tell me more."}]] * 2
    outs = []
    for backend in (plain, cached, cached):  # the third call reads both rows from the cache
        with backend.steered([steer]):
            outs.append(backend.complete(chats, GREEDY))
    assert outs[0] == outs[1] == outs[2]
    assert len({ns for ns, _ in cached.prefix._entries}) == 2  # one entry per vector: never mixed
    with cached.steered([Steer(vectors[1], layer=1, coef=1.0, positions="prompt")]):
        assert cached._namespaces([0, 1]) is None  # a prompt-only steer is told apart by the pass: no cache


def test_a_cold_row_among_warm_ones_gets_its_own_call():
    assert pc.split_by_new_tokens([10, 12, 9]) == [[2, 0, 1]]
    assert pc.split_by_new_tokens([10, 400, 12, 9]) == [[3, 0, 2], [1]]


def test_the_store_evicts_the_least_recently_used_past_its_budget():
    kv = [(torch.zeros(1, 1, 10, 2), torch.zeros(1, 1, 10, 2))]
    store = pc.PrefixStore(max_tokens=25, min_shared=2)
    store.put("", tuple(range(10)), kv)
    store.put("", tuple(range(100, 110)), kv)
    assert store.longest("", tuple(range(5)))[0] == 5  # touching the first makes the second the oldest
    store.put("", tuple(range(200, 210)), kv)
    assert store.longest("", tuple(range(100, 105)))[0] == 0
    assert store.longest("", tuple(range(5)))[0] == 5
    assert store.longest("other", tuple(range(5)))[0] == 0
