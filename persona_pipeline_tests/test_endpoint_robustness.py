"""Judge endpoints that misbehave on purpose, over real loopback HTTP, and replies written to break the parser.

* A server that trickles its reply a byte at a time (headers, or body) never
  trips a per-read timeout; the per-attempt deadline still cuts it.
* One item the server always fails is one failed result: the other items of the
  batch come back, and the bad one was re-asked with exponential, jittered,
  bounded backoff (or after the server's Retry-After).
* A judge reply nested thousands deep (in the text, or the HTTP body itself) is
  one failed judgement with a reason, never a RecursionError.
* ``parse_score`` reads the number after a score label, never "turn 1".
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from persona_pipeline.backends import BackendError, SamplingParams
from persona_pipeline.backends.openai_compat import OpenAIBackend, complete_each
from persona_pipeline.serve import serving
from persona_pipeline.verdicts import VerdictError, parse_score, parse_verdict, read_score

PARAMS = SamplingParams(max_new_tokens=8, temperature=0)
VERDICT = '{"adherence": 0.8, "consistency": 0.7, "quality": 0.9, "safety": "pass", "reasoning": "fits"}'
NESTED = '{"adherence": ' + "[" * 5000 + "]" * 5000 + ', "consistency": 1, "quality": 1, "safety": "pass"}'
DEEP_OBJECT = '{"a": ' * 5000 + "1" + "}" * 5000


@pytest.fixture(autouse=True)
def _no_key(monkeypatch):
    monkeypatch.delenv("PP_TEST_NO_KEY", raising=False)


def backend(url: str, **kw) -> OpenAIBackend:
    return OpenAIBackend("m", base_url=url, api_key_env="PP_TEST_NO_KEY", **kw)


def chat(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def completion(text: str) -> dict:
    message = {"role": "assistant", "content": text}
    choice = {"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}
    return {"id": "chatcmpl-t", "object": "chat.completion", "created": 0, "model": "m", "choices": [choice]}


# --- a server that trickles bytes -------------------------------------------------------------------


class Trickler:
    """A raw HTTP/1.1 server on loopback that answers a valid completion one byte every ``interval`` s.

    ``headers_too``: the status line and headers trickle as well (no per-read timeout can catch that).
    """

    def __init__(self, headers_too: bool, interval: float = 0.05):
        body = json.dumps(completion("x" * 400)).encode()
        self.head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        self.body, self.headers_too, self.interval = body, headers_too, interval
        self.connections, self.stop = 0, threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"

    def __enter__(self):
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.sock.close()

    def _accept(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket):
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, rest = data.partition(b"\r\n\r\n")
            length = int(next(h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")))
            while len(rest) < length:
                rest += conn.recv(65536)
            slow = self.head + self.body if self.headers_too else self.body
            if not self.headers_too:
                conn.sendall(self.head)
            try:
                for i in range(len(slow)):
                    if self.stop.is_set():
                        return
                    conn.sendall(slow[i : i + 1])
                    time.sleep(self.interval)
            except OSError:  # the client gave up: that is the point
                return


@pytest.mark.timeout(60)
@pytest.mark.parametrize("headers_too", [False, True], ids=["body-trickles", "headers-trickle"])
def test_a_trickling_endpoint_is_cut_at_the_per_attempt_deadline(headers_too):
    with Trickler(headers_too) as server:
        total_s = (len(server.head) * headers_too + len(server.body)) * server.interval
        assert total_s > 20  # the whole answer would take this long; each byte comes well inside the read timeout
        start = time.perf_counter()
        with pytest.raises(BackendError, match=r"did not answer m within the 1 s deadline \(2 attempts\)") as err:
            backend(server.url, timeout_s=1, max_retries=1, backoff_s=0.1, max_backoff_s=0.1).complete(
                [chat("hi")], PARAMS
            )
        elapsed = time.perf_counter() - start
    assert server.url in str(err.value)
    assert server.connections == 2, "the timed-out attempt was not re-asked exactly once"
    assert 2.0 <= elapsed < 3.5, f"two 1 s attempts + 0.1 s backoff took {elapsed:.2f} s"


# --- one bad item, backoff, Retry-After ------------------------------------------------------------


def picky_app(fail: dict[str, tuple[int, dict]], fail_times: int = 10**6) -> FastAPI:
    """Echoes the last message; a message in ``fail`` gets (status, headers) for its first ``fail_times`` asks.

    ``app.state.arrivals[text]`` records when each ask of each message arrived.
    """
    app = FastAPI()
    app.state.arrivals = {}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: dict):
        text = body["messages"][-1]["content"]
        seen = app.state.arrivals.setdefault(text, [])
        seen.append(time.monotonic())
        if text in fail and len(seen) <= fail_times:
            status, headers = fail[text]
            error = {"message": f"injected {status} for {text}", "type": "server_error"}
            return JSONResponse({"error": error}, status_code=status, headers=headers)
        return completion(text)

    return app


def gaps(times: list[float]) -> list[float]:
    return [round(b - a, 3) for a, b in itertools.pairwise(times)]


@pytest.mark.timeout(60)
def test_one_bad_item_is_one_failure_and_the_rest_of_the_batch_is_kept():
    app = picky_app({"poison": (500, {}), "too long": (400, {})})
    texts = ["alpha", "poison", "beta", "too long", "gamma"]
    with serving(app) as url:
        remote = backend(url, max_retries=2, backoff_s=0.2, max_backoff_s=1.0, concurrency=4)
        out = remote.complete_each([chat(t) for t in texts], PARAMS)
        with pytest.raises(BackendError, match="HTTP 500 for m: .*injected 500 for poison"):
            remote.complete([chat(t) for t in texts], PARAMS)  # the whole-batch call still fails loudly
    assert [out[0], out[2], out[4]] == ["alpha", "beta", "gamma"]
    assert (
        isinstance(out[1], BackendError) and f"{url} answered HTTP 500 for m" in str(out[1]) and "poison" in str(out[1])
    )
    assert isinstance(out[3], BackendError) and "HTTP 400" in str(out[3])
    arrivals = app.state.arrivals
    assert [len(arrivals[t]) for t in texts] == [2, 6, 2, 2, 2], "500 is re-asked (1 + 2), 400 and successes are not"
    first = arrivals["poison"][:3]
    g = gaps(first)
    assert 0.15 <= g[0] <= 0.45 and 0.3 <= g[1] <= 0.65, f"no exponential backoff between re-asks: {g}"


@pytest.mark.timeout(60)
def test_judges_record_one_failed_judgement_for_the_one_item_the_endpoint_refuses():
    """The JSON verdict judge and the JSON reward judge, over HTTP: the refused item fails with the
    endpoint's error, the other items of the same batch are judged."""
    from persona_pipeline.eval_judges import EvalItem, persona_judge
    from persona_pipeline.judging import JudgeItem
    from persona_pipeline.judging.llm import JsonRewardJudge

    app = FastAPI()
    app.state.asks = 0

    @app.post("/v1/chat/completions")
    async def chat_completions(body: dict):
        app.state.asks += 1
        if "poison-pill" in json.dumps(body["messages"]):
            return JSONResponse({"error": {"message": "context too long", "type": "invalid_request_error"}}, 400)
        return completion(VERDICT.replace('"adherence"', '"score": -0.5, "adherence"'))

    with serving(app) as url:
        remote = backend(url, max_retries=2, backoff_s=0.05, max_backoff_s=0.1)
        items = [EvalItem(id=i, persona_id="p", candidate=c) for i, c in [("a", "fine"), ("b", "poison-pill")]]
        fine, bad = persona_judge(remote, {"p": "Dmitri."}, max_retries=1)(items)
        rewards = JsonRewardJudge(remote).score(
            [JudgeItem("Dmitri.", [], "fine"), JudgeItem("Dmitri.", [], "poison-pill"), JudgeItem("Dmitri.", [], "ok")]
        )
    assert fine.ok is True and fine.adherence == 0.8
    assert bad.ok is False and bad.attempts == 2 and f"backend error: {url} answered HTTP 400" in bad.error
    assert [r.value for r in rewards] == [0.25, None, 0.25]
    assert "HTTP 400" in rewards[1].error and "context too long" in rewards[1].error
    assert app.state.asks == 3 + 3  # a 400 is not re-asked by the client (the verdict judge re-asks it once)


def logprob_completion(top: dict[str, float]) -> dict:
    """A one-token completion carrying OpenAI-format top logprobs (what vLLM sends)."""
    tops = [{"token": t, "logprob": lp, "bytes": None} for t, lp in top.items()]
    first = next(iter(top))
    content = [{"token": first, "logprob": top[first], "bytes": None, "top_logprobs": tops}]
    body = completion(first)
    body["choices"][0]["logprobs"] = {"content": content}
    return body


@pytest.mark.timeout(60)
def test_logprob_judges_fail_only_the_item_the_endpoint_refuses():
    """Logprob judges (persona 0–10, trait 0–100 prompt, role 0–3) over HTTP: the refused item is one
    failed judgement carrying the endpoint's error; the other items of the batch are scored."""
    from persona_pipeline.contracts import RoleSpec
    from persona_pipeline.judging import JudgeItem
    from persona_pipeline.judging.llm import LogprobPersonaJudge, LogprobPromptJudge
    from persona_pipeline.judging.roles import RoleJudge

    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat_completions(body: dict):
        if "poison-pill" in json.dumps(body["messages"]):
            return JSONResponse({"error": {"message": "context too long", "type": "invalid_request_error"}}, 400)
        return logprob_completion({"2": -0.1, "1": -2.5})

    items = [JudgeItem("Dmitri.", [], "fine", "r"), JudgeItem("Dmitri.", [], "poison-pill", "r")]
    role = RoleSpec(role="r", description="a role", system_prompts=["Be r.", "Play r.", "You are r."])
    with serving(app) as url:
        remote = backend(url, max_retries=0)
        judged = [
            LogprobPersonaJudge(remote).score(items),
            LogprobPromptJudge(remote, "Q: {question} A: {answer} 0-100?", "trait").score(items),
            RoleJudge({"r": role}, "logprob", remote).score(items),
        ]
    for fine, bad in judged:
        assert fine.value is not None and 0 < fine.value < 1
        assert bad.value is None and "HTTP 400" in bad.error and "context too long" in bad.error


def test_backoff_is_exponential_jittered_and_bounded():
    remote = backend("http://127.0.0.1:9/v1", backoff_s=0.5, max_backoff_s=8.0)
    for attempt in range(12):
        cap = min(8.0, 0.5 * 2**attempt)
        draws = [remote.backoff(attempt) for _ in range(200)]
        assert all(0.75 * cap <= d <= cap for d in draws), (attempt, min(draws), max(draws))
        assert len(set(draws)) > 100, "no jitter: a fleet of clients would retry in lock-step"
    assert remote.backoff(3, retry_after=2.0) == 2.0  # the server's Retry-After, when within the cap
    assert remote.backoff(3, retry_after=3600) <= 8.0  # never an hour


@pytest.mark.timeout(60)
def test_retry_after_is_honoured_and_backoff_caps_at_max():
    app = picky_app({"busy": (429, {"Retry-After": "0.05"}), "down": (503, {})}, fail_times=3)
    with serving(app) as url:
        remote = backend(url, max_retries=3, backoff_s=0.4, max_backoff_s=0.5)
        assert remote.complete_each([chat("busy"), chat("down")], PARAMS) == ["busy", "down"]
    busy, down = gaps(app.state.arrivals["busy"]), gaps(app.state.arrivals["down"])
    assert all(g < 0.3 for g in busy), f"Retry-After: 0.05 was not honoured: {busy}"
    assert 0.3 <= down[0] <= 0.55 and all(0.375 <= g <= 0.7 for g in down[1:]), f"backoff not capped at 0.5 s: {down}"


def test_complete_each_on_a_batch_backend_fails_every_item_with_the_batch_error():
    class Batchy:
        name = "batchy"

        def complete(self, chats, params):
            raise BackendError("engine fell over")

    out = complete_each(Batchy(), [chat("a"), chat("b")], PARAMS)
    assert [str(e) for e in out] == ["engine fell over"] * 2


# --- nested JSON -------------------------------------------------------------------------------------


@pytest.mark.parametrize("reply", [NESTED, DEEP_OBJECT, "{" * 40000], ids=["nested-array", "nested-object", "open"])
def test_deeply_nested_replies_are_verdict_errors_not_recursion_errors(reply):
    start = time.perf_counter()
    with pytest.raises(VerdictError):
        parse_verdict(reply)
    with pytest.raises(VerdictError):
        read_score(reply)
    assert time.perf_counter() - start < 5, "brace-heavy junk must not take quadratic time"


def test_an_over_long_reply_is_refused_with_its_size():
    with pytest.raises(VerdictError, match=r"reply of 200000 characters is too long"):
        parse_verdict(VERDICT + " " * (200_000 - len(VERDICT)))


@pytest.mark.timeout(60)
def test_a_nested_judge_reply_is_one_failed_judgement_over_http():
    from persona_pipeline.eval_judges import EvalItem, persona_judge

    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat_completions(body: dict):
        last = body["messages"][-1]["content"]
        return completion(NESTED if "nested-bait" in last else VERDICT)

    items = [
        EvalItem(id="bait", persona_id="p", candidate="nested-bait, please"),
        EvalItem(id="fine", persona_id="p", candidate="An ordinary line."),
    ]
    with serving(app) as url:
        bait, fine = persona_judge(backend(url, max_retries=0), {"p": "Dmitri, a skeptical engineer."}, max_retries=1)(
            items
        )
    assert bait.ok is False and bait.attempts == 2 and bait.adherence is None
    assert "adherence" in bait.error and "not a number" in bait.error
    assert fine.ok is True and (fine.adherence, fine.consistency, fine.quality) == (0.8, 0.7, 0.9)


@pytest.mark.timeout(60)
def test_a_nested_http_body_is_a_backend_error_for_that_item():
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await request.json()
        if body["messages"][-1]["content"] == "deep":
            return PlainTextResponse(
                '{"choices": ' + "[" * 100_000 + "]" * 100_000 + "}", media_type="application/json"
            )
        return completion("ok")

    with serving(app) as url:
        out = backend(url, max_retries=0).complete_each([chat("deep"), chat("plain")], PARAMS)
    assert isinstance(out[0], BackendError) and "malformed chat completion" in str(out[0])
    assert out[1] == "ok"


# --- parse_score ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("In turn 1 the persona drifts into generic advice; score -0.8", -0.8),
        ("Across turns 1 and 2 it holds up. Score: 0.4", 0.4),
        ("the score is 0.5.", 0.5),
        ('{"score": -0.25, "reasoning": "turn 1 is fine"}', -0.25),
        ("0.3", 0.3),
    ],
)
def test_parse_score_reads_the_labelled_number(text, want):
    assert parse_score(text) == want


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("In turn 1 the persona stays in character.", "no score"),
        ('{"rating": 0.5}', "no score"),
        ('{"score": 7}', r"score=7 is outside \[-1, 1\]"),
        ('{"score": "high"}', "is not a number"),
        ("score: 8/10", "no score"),
        ('{"score": 0.5', "cut off"),
    ],
)
def test_parse_score_fails_explicitly_without_a_labelled_in_range_score(text, error):
    assert parse_score(text) is None
    with pytest.raises(VerdictError, match=error):
        read_score(text)
