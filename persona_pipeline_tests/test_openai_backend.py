"""OpenAIBackend and our OpenAI-compatible server, end to end over loopback HTTP.

The real ``openai`` client talks to ``serve.create_app`` running the tiny
Llama, so every answer is checked against the same model called in-process.
Only OpenAI itself is replaced, by small FastAPI apps that fail, flake or stall
on purpose.
"""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import openai
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from persona_pipeline.backends import BackendError, SamplingParams
from persona_pipeline.backends.openai_compat import OpenAIBackend
from persona_pipeline.serve import create_app, serving

# The random tiny Llama's greedy answer is all newlines (it strips to ""), so texts are compared under
# seeded sampling: one seed gives the same tokens in-process and through the server, and it proves that
# temperature, top_p and seed travel over HTTP. Greedy decoding is checked on the next token (logprobs).
SEEDED = SamplingParams(max_new_tokens=12, temperature=1.0, top_p=1.0, seed=3)
CHATS = [
    [{"role": "user", "content": "Describe your morning routine."}],
    [{"role": "system", "content": "You are a retired sailor."}, {"role": "user", "content": "Any regrets?"}],
    [{"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "user", "content": "Name a colour you dislike and say why, briefly."}],
]


@pytest.fixture(scope="module")
def tiny_url(tiny_backend):
    with serving(create_app({"tiny": tiny_backend})) as url:
        yield url


@pytest.fixture(scope="module")
def client(tiny_url):
    return openai.OpenAI(base_url=tiny_url, api_key="EMPTY", max_retries=0, timeout=30)


def local_text(backend, chat) -> str:
    """What the model says for one chat, in-process: the server runs one chat per request too."""
    text = backend.complete([chat], SEEDED)[0]
    assert text, "an empty answer would make the comparison meaningless"
    return text


# --- the server, through the official client -------------------------------------------------


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_chat_completion_runs_the_model(client, tiny_backend):
    want = local_text(tiny_backend, CHATS[0])
    resp = client.chat.completions.create(
        model="tiny",
        messages=CHATS[0],
        max_tokens=12,
        temperature=1.0,
        top_p=1.0,
        seed=3,
    )
    assert resp.choices[0].message.content == want
    assert resp.choices[0].message.role == "assistant"


def test_stop_string_cuts_the_text(client, tiny_backend):
    full = local_text(tiny_backend, CHATS[0])
    stop = full.split()[1]
    resp = client.chat.completions.create(
        model="tiny",
        messages=CHATS[0],
        max_tokens=12,
        temperature=1.0,
        top_p=1.0,
        seed=3,
        stop=stop,
    )
    assert resp.choices[0].message.content == full[: full.index(stop)].strip()


def test_streaming_yields_the_same_text(client, tiny_backend):
    want = local_text(tiny_backend, CHATS[1])
    stream = client.chat.completions.create(
        model="tiny",
        messages=CHATS[1],
        max_tokens=12,
        temperature=1.0,
        top_p=1.0,
        seed=3,
        stream=True,
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_logprobs_are_the_greedy_next_token_distribution(client, tiny_backend):
    local = tiny_backend.next_token_logprobs([CHATS[2]], top_k=5)[0]
    resp = client.chat.completions.create(
        model="tiny",
        messages=CHATS[2],
        max_tokens=1,
        temperature=0,
        logprobs=True,
        top_logprobs=5,
    )
    first = resp.choices[0].logprobs.content[0]
    assert first.token == resp.choices[0].message.content == max(local, key=local.get)
    assert {t.token: t.logprob for t in first.top_logprobs} == pytest.approx(local, abs=1e-5)


def test_unknown_model_is_an_openai_404(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no-such-model", messages=CHATS[0], max_tokens=4)
    assert err.value.code == "model_not_found"
    assert "no-such-model" in err.value.message and "tiny" in err.value.message


def test_bad_requests_are_400s(client, tiny_url):
    with pytest.raises(openai.BadRequestError, match="n=2"):
        client.chat.completions.create(model="tiny", messages=CHATS[0], max_tokens=4, n=2)
    resp = httpx.post(f"{tiny_url}/chat/completions", json={"model": "tiny"})  # no messages
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "invalid_request_error" and "messages" in resp.json()["error"]["message"]


# --- OpenAIBackend against the served model ---------------------------------------------------


def test_backend_batch_matches_local_in_order(tiny_url, tiny_backend):
    remote = OpenAIBackend("tiny", base_url=tiny_url, concurrency=4)
    assert remote.complete(CHATS, SEEDED) == [local_text(tiny_backend, c) for c in CHATS]


def test_backend_next_token_logprobs_match_local(tiny_url, tiny_backend):
    remote = OpenAIBackend("tiny", base_url=tiny_url).next_token_logprobs(CHATS[:2], top_k=8)
    local = [tiny_backend.next_token_logprobs([c], top_k=8)[0] for c in CHATS[:2]]
    for got, want in zip(remote, local):
        assert max(got, key=got.get) == max(want, key=want.get)
        assert got == pytest.approx(want, abs=1e-5)


def test_backend_unknown_model_is_a_clear_backend_error(tiny_url):
    with pytest.raises(BackendError, match=r"HTTP 404 for no-such-model: .*not found"):
        OpenAIBackend("no-such-model", base_url=tiny_url, max_retries=0).complete(CHATS[:1], SEEDED)


def test_missing_key_for_openai_names_the_env_var(monkeypatch):
    monkeypatch.delenv("PP_TEST_NO_SUCH_KEY", raising=False)
    with pytest.raises(BackendError, match="PP_TEST_NO_SUCH_KEY"):
        OpenAIBackend(model="gpt-4o-mini", base_url=None, api_key_env="PP_TEST_NO_SUCH_KEY")


def test_local_server_needs_no_key(monkeypatch, tiny_url, tiny_backend):
    monkeypatch.delenv("PP_TEST_NO_SUCH_KEY", raising=False)
    remote = OpenAIBackend("tiny", base_url=tiny_url, api_key_env="PP_TEST_NO_SUCH_KEY")
    assert remote.client.api_key == "EMPTY"
    assert remote.complete(CHATS[:1], SEEDED) == [local_text(tiny_backend, CHATS[0])]


def test_key_never_in_repr(monkeypatch, tiny_url):
    monkeypatch.setenv("PP_TEST_KEY", "sk-test-very-secret-123")
    remote = OpenAIBackend("tiny", base_url=tiny_url, api_key_env="PP_TEST_KEY")
    assert remote.client.api_key == "sk-test-very-secret-123"
    assert "very-secret" not in repr(remote) and "very-secret" not in str(remote)


# --- failure modes, against servers that misbehave on purpose ------------------------------------


def completion_body(text: str) -> dict:
    message = {"role": "assistant", "content": text}
    choice = {"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}
    return {"id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": "m", "choices": [choice]}


def misbehaving_app(fail_first: int = 0, stall_s: float = 0.0, echo_delay_s: float = 0.0) -> FastAPI:
    """Fails the first requests with HTTP 500, or stalls, or echoes the last message after a delay.

    ``app.state`` records the number of requests and the most seen in flight at once.
    """
    app = FastAPI()
    app.state.requests, app.state.in_flight, app.state.max_in_flight = 0, 0, 0

    @app.post("/v1/chat/completions")
    async def chat(body: dict):
        s = app.state
        s.requests += 1
        if s.requests <= fail_first:
            return JSONResponse({"error": {"message": "overloaded", "type": "server_error"}}, status_code=500)
        s.in_flight += 1
        s.max_in_flight = max(s.max_in_flight, s.in_flight)
        await asyncio.sleep(stall_s or echo_delay_s)
        s.in_flight -= 1
        return completion_body(body["messages"][-1]["content"])

    return app


def test_server_down_fails_fast_naming_the_url():
    with socket.socket() as s:  # a loopback port that nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    start = time.perf_counter()
    with pytest.raises(BackendError, match=url):
        OpenAIBackend("m", base_url=url, max_retries=1, timeout_s=2).complete(CHATS[:1], SEEDED)
    assert time.perf_counter() - start < 5


def test_flaky_server_is_retried():
    app = misbehaving_app(fail_first=2)
    with serving(app) as url:
        out = OpenAIBackend("m", base_url=url, max_retries=3).complete(CHATS[:1], SEEDED)
    assert out == [CHATS[0][-1]["content"]]
    assert app.state.requests == 3


def test_flaky_server_with_too_few_retries_is_an_error():
    app = misbehaving_app(fail_first=2)
    with serving(app) as url, pytest.raises(BackendError, match="HTTP 500"):
        OpenAIBackend("m", base_url=url, max_retries=1).complete(CHATS[:1], SEEDED)
    assert app.state.requests == 2


def test_stalled_server_times_out():
    with serving(misbehaving_app(stall_s=2)) as url:
        start = time.perf_counter()
        with pytest.raises(BackendError, match=url):
            OpenAIBackend("m", base_url=url, max_retries=0, timeout_s=1).complete(CHATS[:1], SEEDED)
        assert time.perf_counter() - start < 1.9


def test_batch_fans_out_concurrently_and_keeps_order():
    app = misbehaving_app(echo_delay_s=0.3)
    with serving(app) as url:
        out = OpenAIBackend("m", base_url=url, concurrency=4).complete(CHATS, SEEDED)
    assert out == [c[-1]["content"] for c in CHATS]
    assert app.state.max_in_flight == 4


def test_a_request_can_carry_a_steering_vector(tiny_backend):
    import openai
    import torch

    from persona_pipeline.serve import create_app, serving

    torch.manual_seed(0)
    vectors = {"push": torch.randn(tiny_backend.model.config.hidden_size) * 50}
    app = create_app({"tiny": tiny_backend}, vectors=vectors.get)
    msgs = [{"role": "user", "content": "hello"}]
    with serving(app) as url:
        client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)

        def top(steering):
            r = client.chat.completions.create(
                model="tiny",
                messages=msgs,
                max_tokens=1,
                logprobs=True,
                top_logprobs=3,
                extra_body={"steering": steering},
            )
            return [(t.token, round(t.logprob, 4)) for t in r.choices[0].logprobs.content[0].top_logprobs]

        plain = top([])
        assert top([{"vector": "push", "layer": 1, "coef": 0.0}]) == plain
        assert top([{"vector": "push", "layer": 1, "coef": 1.0}]) != plain
        assert top([]) == plain  # the hook is gone after the request
        with pytest.raises(openai.BadRequestError, match="unknown steering vector"):
            top([{"vector": "nope", "layer": 0, "coef": 1.0}])
