"""``serve`` batches concurrent requests: requests that arrive together run as one backend call,
with each request's own sampling parameters and steering, and answer exactly what they would
alone. A full queue answers 503 + Retry-After and loses nothing already accepted.

Real servers on loopback, real models: greedy equality on the embedded SmolLM2 (the tiny
random Llama's greedy text is all whitespace), per-row steering on the tiny one.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

from persona_pipeline.backends import SamplingParams
from persona_pipeline.hooks import Steer
from persona_pipeline.serve import create_app, serving

QUESTIONS = [
    "What did you do last weekend?",
    "Explain how a bicycle stays upright.",
    "Give me three tips for saving money.",
    "Write a short poem about rain.",
    "How do you deal with stress?",
    "What is your favourite season and why?",
    "Describe your morning routine.",
    "Name a colour you dislike.",
]


def post(url: str, model: str, messages: list, **body) -> httpx.Response:
    return httpx.post(f"{url}/chat/completions", json={"model": model, "messages": messages, **body}, timeout=300)


def at_once(fn, args: list) -> list:
    """Call ``fn`` on every args tuple from its own thread, all released together."""
    gate = threading.Barrier(len(args))

    def run(a):
        gate.wait()
        return fn(*a)

    with ThreadPoolExecutor(len(args)) as pool:
        return list(pool.map(run, args))


def batch_sizes(app) -> list[int]:
    return [n for b in app.state.batchers.values() for n in b.batches]


@pytest.mark.integration
def test_greedy_batched_output_equals_one_at_a_time(embedded_backend):
    chats = [[{"role": "user", "content": q}] for q in QUESTIONS]
    greedy = SamplingParams(max_new_tokens=16, temperature=0)
    alone = [embedded_backend.complete([c], greedy)[0] for c in chats]  # the unbatched answers
    assert all(alone) and len(set(alone)) > 1
    app = create_app({"smollm2": embedded_backend}, batch_window_s=1.0)
    with serving(app) as url:
        replies = at_once(lambda c: post(url, "smollm2", c, max_tokens=16, temperature=0), [(c,) for c in chats])
    assert [r.status_code for r in replies] == [200] * len(chats)
    assert [r.json()["choices"][0]["message"]["content"] for r in replies] == alone
    assert batch_sizes(app) == [len(chats)]  # all eight in ONE generate call


def test_per_row_steering_and_sampling_in_one_batch(tiny_backend):
    torch.manual_seed(0)
    push = torch.randn(tiny_backend.model.config.hidden_size) * 50
    msgs = [{"role": "user", "content": "hello"}]
    rows = [[], [{"vector": "push", "layer": 1, "coef": 1.0}], [{"vector": "push", "layer": 0, "coef": 0.5}], []]

    def in_process(steering):  # the unbatched answer: the model steered directly, one chat
        steers = [Steer(push, s["layer"], s["coef"]) for s in steering]
        with tiny_backend.steered(steers):
            return tiny_backend.next_token_logprobs([msgs], top_k=3)[0]

    want = [in_process(s) for s in rows]
    assert want[0] != want[1] != want[2]
    seeded = SamplingParams(max_new_tokens=8, temperature=1.0, top_p=1.0, seed=3)
    seeded_text = tiny_backend.complete([msgs], seeded)[0]

    app = create_app({"tiny": tiny_backend}, vectors={"push": push}.get, batch_window_s=1.0)
    with serving(app) as url:

        def ask(kind, arg):
            if kind == "logprobs":
                r = post(url, "tiny", msgs, max_tokens=1, logprobs=True, top_logprobs=3, steering=arg)
            else:
                r = post(url, "tiny", msgs, max_tokens=8, temperature=1.0, top_p=1.0, seed=arg)
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]

        out = at_once(ask, [("logprobs", s) for s in rows] + [("seeded", 3)])
    for choice, expected in zip(out, want):
        got = {t["token"]: t["logprob"] for t in choice["logprobs"]["content"][0]["top_logprobs"]}
        assert got == pytest.approx(expected, abs=1e-4)
    assert out[-1]["message"]["content"] == seeded_text  # a seeded sample runs alone: its seed reproduces it
    assert sorted(batch_sizes(app)) == [1, 4]  # four steered/unsteered rows in one call; the seeded one alone


class Gated:
    """The tiny model behind a gate the test opens: a deterministic 'model is busy'."""

    def __init__(self, inner):
        self.inner, self.name, self.gate, self.entered = inner, "gated", threading.Event(), threading.Event()

    def complete(self, chats, params):
        self.entered.set()
        assert self.gate.wait(60)
        return self.inner.complete(chats, params)

    def next_token_logprobs(self, chats, top_k=20):
        return self.inner.next_token_logprobs(chats, top_k)


def test_full_queue_is_a_503_with_retry_after_and_loses_nothing(tiny_backend):
    gated = Gated(tiny_backend)
    app = create_app({"gated": gated}, max_queue=1, batch_window_s=0)
    msgs = [{"role": "user", "content": "hi"}]
    seeded = {"max_tokens": 4, "temperature": 1.0, "top_p": 1.0, "seed": 1}
    with serving(app) as url, ThreadPoolExecutor(2) as pool:
        running = pool.submit(post, url, "gated", msgs, **seeded)
        assert gated.entered.wait(30)  # the worker is inside the model
        queued = pool.submit(post, url, "gated", msgs, **seeded)
        (batcher,) = app.state.batchers.values()
        deadline = time.monotonic() + 30
        while batcher.queue.qsize() < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        refused = post(url, "gated", msgs, **seeded)
        assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
        err = refused.json()["error"]
        assert err["code"] == "server_overloaded" and err["type"] == "server_error" and "retry" in err["message"]
        start = time.monotonic()
        assert httpx.get(f"{url}/models").status_code == 200  # the event loop is not blocked by the model
        assert time.monotonic() - start < 1.0
        gated.gate.set()
        first, second = running.result(), queued.result()
    want = tiny_backend.complete([msgs], SamplingParams(max_new_tokens=4, temperature=1.0, top_p=1.0, seed=1))[0]
    assert first.status_code == second.status_code == 200
    assert first.json()["choices"][0]["message"]["content"] == second.json()["choices"][0]["message"]["content"] == want


def test_different_personas_of_one_model_share_a_batch(tiny_backend):
    from persona_pipeline.persona_simulator import PersonaBackend

    personas = {
        f"persona-simulator:{pid}": PersonaBackend(tiny_backend, pid, f"You are {pid}, {what}.")
        for pid, what in [("ana", "a nervous student"), ("ben", "a retired sailor"), ("cleo", "a busy chef")]
    }
    history = [{"role": "assistant", "content": "Hi! How can I help?"}]
    alone = {name: b.next_token_logprobs([history], top_k=3)[0] for name, b in personas.items()}
    assert alone["persona-simulator:ana"] != alone["persona-simulator:ben"]  # the persona prompt matters
    app = create_app(personas, batch_window_s=1.0)
    with serving(app) as url:
        replies = at_once(
            lambda name: post(url, name, history, max_tokens=1, logprobs=True, top_logprobs=3),
            [(name,) for name in personas],
        )
    for name, r in zip(personas, replies):
        got = {t["token"]: t["logprob"] for t in r.json()["choices"][0]["logprobs"]["content"][0]["top_logprobs"]}
        assert got == pytest.approx(alone[name], abs=1e-4)
    assert batch_sizes(app) == [3]  # three personas, one forward pass of the shared model
