"""``serve`` probed as an outsider would: every request goes to the real app on a loopback port
running the tiny random Llama, and each must end in a clear OpenAI-style error (or work), with
the server still answering afterwards.
"""

from __future__ import annotations

import json
import os
import threading
import time

import httpx
import openai
import pytest
import torch

from persona_pipeline.http_guard import API_KEY_ENV, Guard
from persona_pipeline.serve import MAX_BODY_BYTES, create_app, guard_for, serving
from persona_pipeline.vectors import VectorError, resolver, save_tensors

HELLO = [{"role": "user", "content": "hello"}]


def openai_error(resp: httpx.Response, status: int) -> dict:
    """The response is ``status`` with OpenAI's error body; returns its ``error`` object."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json"), resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


@pytest.fixture(scope="module")
def artifacts_root(tmp_path_factory, tiny_backend):
    """An artifacts folder with one good vector, a corrupt one, and a symlink that leaves the folder."""
    root = tmp_path_factory.mktemp("home")
    hidden = tiny_backend.model.config.hidden_size
    torch.manual_seed(0)
    save_tensors(root / "persona_vectors" / "push.safetensors", {"mean_diff_response_avg": torch.randn(3, hidden) * 50})
    (root / "persona_vectors" / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    outside = tmp_path_factory.mktemp("elsewhere") / "secret.safetensors"
    save_tensors(outside, {"mean_diff_response_avg": torch.ones(3, hidden)})
    os.symlink(outside, root / "persona_vectors" / "escape.safetensors")
    save_tensors(root / "persona_vectors" / "wrongsize.safetensors", {"mean_diff_response_avg": torch.ones(3, 7)})
    return root, outside


@pytest.fixture(scope="module")
def url(tiny_backend, artifacts_root):
    with serving(create_app({"tiny": tiny_backend}, vectors=resolver(artifacts_root[0]))) as u:
        yield u


def chat(url: str, **body) -> httpx.Response:
    return httpx.post(f"{url}/chat/completions", json={"model": "tiny", "messages": HELLO, **body}, timeout=60)


def top_tokens(url: str, steering: list) -> list:
    r = chat(url, max_tokens=1, logprobs=True, top_logprobs=3, steering=steering)
    assert r.status_code == 200, r.text
    return [
        (t["token"], round(t["logprob"], 4)) for t in r.json()["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    ]


# --- steering vectors: names only, inside the artifacts folder ----------------------------------


@pytest.mark.parametrize(
    "name",
    ["/etc/passwd.safetensors", "persona:../../x", "../../x", "push/../push", "persona_vectors/push.safetensors", ""],
)
def test_vector_paths_and_traversal_are_refused(url, artifacts_root, name):
    err = openai_error(chat(url, max_tokens=1, steering=[{"vector": name, "layer": 0, "coef": 1}]), 400)
    assert err["code"] == "invalid_vector" and err["param"] == "steering[0].vector"
    assert "not a vector name" in err["message"]


def test_a_symlink_leaving_the_artifacts_folder_is_refused(url, artifacts_root):
    err = openai_error(chat(url, max_tokens=1, steering=[{"vector": "escape", "layer": 0, "coef": 1}]), 400)
    assert "outside the artifacts folder" in err["message"]
    assert str(artifacts_root[1]) not in err["message"]  # the target is not revealed


def test_named_vector_steers_and_unknown_is_a_clear_400(url):
    plain = top_tokens(url, [])
    assert top_tokens(url, [{"vector": "push", "layer": 1, "coef": 1.0}]) != plain
    assert top_tokens(url, []) == plain  # the hook is gone after the request
    err = openai_error(chat(url, max_tokens=1, steering=[{"vector": "nope", "layer": 0, "coef": 1}]), 400)
    assert err["code"] == "vector_not_found" and "'nope'" in err["message"]


def test_vectors_are_loaded_once_and_reloaded_when_rewritten(artifacts_root, tiny_backend):
    root, _ = artifacts_root
    resolve = resolver(root)
    first = resolve("push")
    assert resolve("push") is first  # cached: no second read of the file
    path = root / "persona_vectors" / "fresh.safetensors"
    save_tensors(path, {"mean_diff_response_avg": torch.zeros(3, 4)})
    old = resolve("fresh")
    save_tensors(path, {"mean_diff_response_avg": torch.ones(3, 4)})
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert torch.equal(resolve("fresh"), torch.ones(3, 4)) and not torch.equal(old, torch.ones(3, 4))
    with pytest.raises(VectorError, match="not a vector name"):
        resolve("../x")


@pytest.mark.parametrize(
    "steer, param, needle",
    [
        ({"vector": "broken", "layer": 0, "coef": 1}, "steering[0].vector", "cannot read broken.safetensors"),
        ({"vector": "wrongsize", "layer": 0, "coef": 1}, "steering[0].vector", "not a finite [64] direction"),
        ({"vector": "push", "layer": 7, "coef": 1}, "steering[0].layer", "out of range"),
        ({"vector": "push", "layer": 0, "mode": "cap"}, "steering[0].threshold", "cap steering needs a threshold"),
    ],
)
def test_bad_steering_is_a_400_not_a_500(url, steer, param, needle):
    err = openai_error(chat(url, max_tokens=1, steering=[steer]), 400)
    assert err["param"] == param and needle in err["message"]
    assert chat(url, max_tokens=1).status_code == 200  # the server is fine afterwards


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_numbers_are_rejected(url, value):
    def post(**fields) -> httpx.Response:  # json.dumps writes NaN / Infinity literals, which Python's parser accepts
        body = json.dumps({"model": "tiny", "messages": HELLO, "max_tokens": 1, **fields})
        assert "NaN" in body or "Infinity" in body
        return httpx.post(f"{url}/chat/completions", content=body, headers={"content-type": "application/json"})

    assert "coef" in openai_error(post(steering=[{"vector": "push", "layer": 0, "coef": value}]), 400)["message"]
    assert "temperature" in openai_error(post(temperature=value), 400)["message"]


# --- bounds -----------------------------------------------------------------------------------


def test_max_tokens_beyond_the_context_is_a_400_like_vllm(url, tiny_backend):
    context = tiny_backend.model.config.max_position_embeddings
    err = openai_error(chat(url, max_tokens=10**9), 400)
    assert err["code"] == "context_length_exceeded" and err["param"] == "max_tokens"
    assert f"maximum context length is {context} tokens" in err["message"]
    long = [{"role": "user", "content": "word " * (context + 50)}]
    err = openai_error(chat(url, messages=long, max_tokens=1), 400)
    assert err["param"] == "messages" and "in the messages" in err["message"]


@pytest.mark.parametrize(
    "body, needle",
    [
        ({"messages": HELLO * 257}, "messages"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": "x" * 201}, "stop"),
        ({"steering": [{"vector": "push", "layer": 0}] * 9}, "steering"),
        ({"n": 2}, "n=2"),
        ({"model": "m" * 300}, "model"),
    ],
)
def test_lists_and_fields_are_bounded(url, body, needle):
    assert needle in openai_error(chat(url, max_tokens=1, **body), 400)["message"]


def test_oversize_body_is_a_413_before_parsing(url):
    huge = [{"role": "user", "content": "x" * (MAX_BODY_BYTES + 10)}]
    err = openai_error(chat(url, messages=huge, max_tokens=1), 413)
    assert err["code"] == "request_too_large"

    def chunks():  # no Content-Length: the limit is counted as the body streams in
        yield b'{"model": "tiny", "messages": [{"role": "user", "content": "'
        for _ in range(MAX_BODY_BYTES // 65536 + 2):
            yield b"y" * 65536
        yield b'"}]}'

    r = httpx.post(f"{url}/chat/completions", content=chunks(), headers={"content-type": "application/json"})
    assert openai_error(r, 413)["code"] == "request_too_large"
    assert chat(url, max_tokens=1).status_code == 200


# --- errors, routes, Host, key ------------------------------------------------------------------


def test_404_405_and_unknown_model_are_openai_errors(url):
    assert openai_error(httpx.get(f"{url}/nothing-here"), 404)["code"] == "not_found"
    assert openai_error(httpx.get(f"{url}/chat/completions"), 405)["code"] == "method_not_allowed"
    err = openai_error(chat(url, model="gpt-5"), 404)
    assert err["code"] == "model_not_found" and "tiny" in err["message"]
    r = httpx.post(f"{url}/chat/completions", content=b"{nope", headers={"content-type": "application/json"})
    assert openai_error(r, 400)["type"] == "invalid_request_error"


def test_docs_are_off_unless_asked_for(url, tiny_backend):
    for path in ("/docs", "/openapi.json", "/redoc"):
        assert openai_error(httpx.get(url.removesuffix("/v1") + path), 404)
    with serving(create_app({"tiny": tiny_backend}, docs=True)) as docs_url:
        assert httpx.get(docs_url.removesuffix("/v1") + "/openapi.json").status_code == 200


def test_foreign_host_header_is_refused_on_a_loopback_bind(url):
    err = openai_error(httpx.get(f"{url}/models", headers={"Host": "attacker.example:8000"}), 400)
    assert err["code"] == "host_not_allowed"
    for host in ("localhost:1234", "127.0.0.1", "[::1]:8000"):
        assert httpx.get(f"{url}/models", headers={"Host": host}).status_code == 200


def test_api_key_is_required_when_set(tiny_backend, monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, "sk-local-test")
    guard = guard_for("127.0.0.1")  # the key comes from the environment
    assert guard.api_key == "sk-local-test"
    with serving(create_app({"tiny": tiny_backend}, guard=guard)) as u:
        assert openai_error(httpx.get(f"{u}/models"), 401)["code"] == "invalid_api_key"
        wrong = httpx.get(f"{u}/models", headers={"Authorization": "Bearer sk-other"})
        assert openai_error(wrong, 401)["code"] == "invalid_api_key"
        assert openai_error(httpx.get(f"{u}/nothing"), 401)  # no route is probed without the key
        client = openai.OpenAI(base_url=u, api_key="sk-local-test", max_retries=0)
        assert client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=2).choices
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=u, api_key="sk-nope", max_retries=0).models.list()


def test_binding_a_public_address_warns(capsys):
    assert guard_for("127.0.0.1").hosts() == {"localhost", "127.0.0.1", "::1"}
    assert capsys.readouterr().err == ""
    guard = guard_for("0.0.0.0", key=None)
    assert guard.hosts() is None  # a public bind answers any Host; the warning says so
    err = capsys.readouterr().err
    assert "WARNING" in err and "0.0.0.0" in err and API_KEY_ENV in err
    assert Guard(bind_host="0.0.0.0", allowed_hosts=("persona.internal",)).hosts() == {"persona.internal"}


def test_model_failure_is_a_json_500_and_the_server_survives(tiny_backend):
    class Failing:  # a backend that really raises (e.g. CUDA OOM on a cluster): not a model stand-in
        name = "failing"

        def complete(self, chats, params):
            raise RuntimeError("out of memory")

        next_token_logprobs = complete

    with serving(create_app({"tiny": tiny_backend, "failing": Failing()})) as u:
        r = httpx.post(f"{u}/chat/completions", json={"model": "failing", "messages": HELLO, "max_tokens": 2})
        err = openai_error(r, 500)
        assert err["type"] == "server_error" and "out of memory" in err["message"]
        ok = httpx.post(f"{u}/chat/completions", json={"model": "tiny", "messages": HELLO, "max_tokens": 2})
        assert ok.status_code == 200


def test_concurrent_first_requests_load_a_lazy_model_once(tiny_backend):
    from persona_pipeline.persona_simulator import LazyBackend

    loads = []

    def factory():
        loads.append(threading.get_ident())
        time.sleep(0.2)  # a real load takes seconds: wide open for a race
        return tiny_backend

    lazy = LazyBackend(factory, name="lazy")
    with serving(create_app({"lazy": lazy})) as u:
        results = []

        def ask():
            body = {"model": "lazy", "messages": HELLO, "max_tokens": 2}
            results.append(httpx.post(f"{u}/chat/completions", json=body, timeout=60).status_code)

        threads = [threading.Thread(target=ask) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results == [200] * 6 and len(loads) == 1


def test_request_json_keeps_openai_shape(url):
    body = chat(url, max_tokens=2).json()
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["role"] == "assistant"
    json.dumps(body)


@pytest.mark.integration
def test_cli_serve_with_key_from_env_and_persona_context_check(shared_home, embedded_dir, tmp_path):
    """The real ``persona-pipeline serve`` (base model, persona wrappers, lazy loading) as launched by a user."""
    import signal
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PERSONA_PIPELINE_HOME": str(shared_home), API_KEY_ENV: "sk-cli-test", "HF_HUB_OFFLINE": "1"}
    cli = str(Path(sys.executable).parent / "persona-pipeline")
    log = tmp_path / "serve.log"
    server = subprocess.Popen(
        [cli, "serve", "--port", str(port), "--adapters", "none"],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}/v1"
    key = {"Authorization": "Bearer sk-cli-test"}
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                models = httpx.get(f"{base}/models", headers=key, timeout=5)
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
                time.sleep(0.5)
        persona = next(m["id"] for m in models.json()["data"] if m["id"].startswith("persona-simulator-none:"))
        assert openai_error(httpx.get(f"{base}/models"), 401)["code"] == "invalid_api_key"
        history = [{"role": "assistant", "content": "Hi! How can I help?"}]
        body = {"model": persona, "messages": history, "max_tokens": 8, "temperature": 0}
        ok = httpx.post(f"{base}/chat/completions", json=body, headers=key, timeout=120)
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"].strip()
        # the persona's simulator prompt counts against the context, not just the user's messages
        too_long = httpx.post(
            f"{base}/chat/completions", json={**body, "max_tokens": 8192 - 5}, headers=key, timeout=60
        )
        err = openai_error(too_long, 400)
        prompt_tokens = int(err["message"].split("(")[1].split(" in the messages")[0])
        assert err["code"] == "context_length_exceeded" and prompt_tokens > 100  # far more than the 8-word history
        assert "WARNING" not in log.read_text()  # loopback bind: no exposure warning
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
