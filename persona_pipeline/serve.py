"""An OpenAI-compatible HTTP server over our ``Backend`` interface.

Anything that speaks the OpenAI chat API (the ``openai`` client, our own
``OpenAIBackend``, eval harnesses) can then use a local or adapted model.

Safe to expose: every request is bounded (body size, list lengths,
``max_tokens ≤ context − prompt``) and validated — steering vectors by *name*
only, resolved inside the artifacts folder — before it queues, and every error is
OpenAI's ``{"error": {...}}`` JSON. Host allowlist, optional API key and the body
limit live in ``http_guard``, shared with the rating server. Fast under load:
requests for one model that arrive together are generated in one batched call
(``serve_batching``), behind a bounded queue that answers 503 when full.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Annotated, Literal

import uvicorn
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .backends.base import Backend, Chat, SamplingParams
from .http_guard import Guard, api_key, guard_app, warn_if_exposed
from .prompts import split_end
from .serve_batching import Batcher, Job, Overloaded

MAX_BODY_BYTES = 1 << 20  # 1 MiB: far above any chat this model's context can hold
MAX_MESSAGES = 256
MAX_STEERING = 8
MAX_STOP = 4  # OpenAI's own limit


def openai_error(status: int, message: str, code: str | None = None, param: str | None = None) -> dict:
    """OpenAI's error body; the type follows the status as OpenAI's does."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class APIError(Exception):
    """An error the client should see as an OpenAI-style ``{"error": {...}}`` body."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None, headers=None):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.headers = status, message, code, param, headers

    def response(self) -> JSONResponse:
        body = openai_error(self.status, self.message, self.code, self.param)
        return JSONResponse(body, status_code=self.status, headers=self.headers)


StopString = Annotated[str, Field(max_length=200)]


class TextPart(BaseModel):
    type: Literal["text"] = "text"
    text: str


class Message(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def as_chat_turn(self) -> dict:
        """Our chats are plain role/content dicts; "developer" is OpenAI's newer name for "system"."""
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class SteeringSpec(BaseModel):
    """One steering intervention in a request (an extension field, sent via ``extra_body``)."""

    vector: str = Field(max_length=200, description="a vector name: <trait>, <trait>:svd, persona:<id>, assistant_axis")
    layer: int = Field(ge=0)
    coef: float = Field(default=0.0, allow_inf_nan=False)
    mode: Literal["add", "ablate", "cap"] = "add"
    positions: Literal["all", "prompt", "response"] = "all"
    threshold: float | None = Field(default=None, allow_inf_nan=False)


class ChatRequest(BaseModel):
    """The subset of the chat completions request we honour; unknown fields are ignored."""

    model: str = Field(max_length=256)
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOP)] | None = None
    n: int = 1
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    stream: bool = False
    steering: list[SteeringSpec] = Field(default_factory=list, max_length=MAX_STEERING)

    def sampling(self, default: SamplingParams) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        given = {
            "max_new_tokens": self.max_completion_tokens or self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "stop": stop,
        }
        return default.model_copy(update={k: v for k, v in given.items() if v is not None})


def _lp_entry(token: str, logprob: float) -> dict:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}


def _logprobs_block(dist: dict[str, float], top: int) -> tuple[str, dict]:
    """The greedy next token and its OpenAI ``logprobs`` block, from a ``next_token_logprobs`` row."""
    ranked = sorted(dist.items(), key=lambda kv: kv[1], reverse=True)
    first = {**_lp_entry(*ranked[0]), "top_logprobs": [_lp_entry(t, lp) for t, lp in ranked[:top]]}
    return ranked[0][0], {"content": [first]}


def _local_model(backend):
    """The innermost backend that can be steered (through persona and lazy wrappers), or None."""
    while True:
        if hasattr(backend, "steered"):
            return backend
        nxt = getattr(backend, "inner", None) or getattr(backend, "backend", None)
        if nxt is None or nxt is backend:
            return None
        backend = nxt


def _unwrap(backend, chat: Chat) -> tuple[Backend, Chat]:
    """(the backend that generates, the chat it sees). Persona wrappers rewrite the chat into their
    simulator prompt; unwrapping them here lets requests for different personas of one model batch."""
    while hasattr(backend, "model_chat"):
        chat, backend = backend.model_chat(chat), backend.inner
    return backend, chat


def _budget(local, chat: Chat, params: SamplingParams, given: bool) -> SamplingParams:
    """``max_tokens ≤ context − prompt``, as vLLM checks it; an unset max_tokens shrinks to fit."""
    context = getattr(local.model.config, "max_position_embeddings", None)
    if not context:
        return params
    text = local.tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    prompt = len(local.tok(text, add_special_tokens=False)["input_ids"])
    room = context - prompt
    if given and params.max_new_tokens > room or room < 1:
        raise APIError(
            400,
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{prompt + params.max_new_tokens} tokens ({prompt} in the messages, {params.max_new_tokens} in the "
            "completion). Please reduce the length of the messages or completion.",
            "context_length_exceeded",
            "max_tokens" if room >= 1 else "messages",
        )
    return params if params.max_new_tokens <= room else params.model_copy(update={"max_new_tokens": room})


def _steer(local, i: int, spec: SteeringSpec, vectors):
    """One validated ``hooks.Steer``; every problem a 400 naming ``steering[i]``."""
    from .hooks import Steer, decoder_layers
    from .vectors import VectorError

    where = f"steering[{i}]"
    try:
        vec = vectors(spec.vector) if vectors else None
    except VectorError as e:
        raise APIError(400, str(e), "invalid_vector", f"{where}.vector") from None
    if vec is None:
        raise APIError(400, f"unknown steering vector {spec.vector!r}", "vector_not_found", f"{where}.vector")
    n_layers = len(decoder_layers(local.model))
    if spec.layer >= n_layers:
        raise APIError(
            400, f"layer {spec.layer} out of range: the model has layers 0–{n_layers - 1}", None, f"{where}.layer"
        )
    if vec.dim() == 2:  # [layers × hidden] persona vectors: take the requested layer
        if spec.layer >= vec.shape[0]:
            raise APIError(400, f"vector {spec.vector!r} has no layer {spec.layer}", None, f"{where}.layer")
        vec = vec[spec.layer]
    hidden = local.model.config.hidden_size
    if vec.dim() != 1 or vec.shape[0] != hidden or not bool(vec.isfinite().all()):
        msg = f"vector {spec.vector!r} is not a finite [{hidden}] direction for this model (shape {list(vec.shape)})"
        raise APIError(400, msg, "invalid_vector", f"{where}.vector")
    if spec.mode == "cap" and spec.threshold is None:
        raise APIError(400, "cap steering needs a threshold", None, f"{where}.threshold")
    return Steer(vec, spec.layer, spec.coef, spec.mode, spec.positions, spec.threshold)


def _job(backend: Backend, req: ChatRequest, defaults: SamplingParams, vectors) -> Job:
    """Validate a request completely (before it queues) and turn it into a ``Job``."""
    if req.n != 1:
        raise APIError(400, f"n={req.n}: only n=1 is supported", "unsupported_value", "n")
    params = req.sampling(defaults)
    if req.logprobs and params.max_new_tokens != 1:
        raise APIError(
            400, "logprobs are only supported with max_tokens=1 (next-token scoring)", "unsupported_value", "logprobs"
        )
    model, chat = _unwrap(backend, [m.as_chat_turn() for m in req.messages])
    local = _local_model(model)
    if req.steering and local is None:
        raise APIError(
            400, f"{backend.name} cannot be steered (only local models can)", "unsupported_value", "steering"
        )
    if local is not None:
        given = (req.max_completion_tokens or req.max_tokens) is not None
        params = _budget(local, chat, params, given)
    steers = [_steer(local, i, s, vectors) for i, s in enumerate(req.steering)]
    top = (req.top_logprobs or 0) if req.logprobs else None
    return Job(model, local, chat, params, steers, top)


def _chunks(head: dict, text: str, logprobs: dict | None, end: dict | None = None) -> Iterator[str]:
    """SSE ``chat.completion.chunk`` events for an already generated text, then ``[DONE]``."""

    def event(delta: dict, finish: str | None = None, lp: dict | None = None) -> str:
        choice = {
            "index": 0,
            "delta": delta,
            "logprobs": lp,
            "finish_reason": finish,
            **((end or {}) if finish else {}),
        }
        return f"data: {json.dumps({**head, 'object': 'chat.completion.chunk', 'choices': [choice]})}\n\n"

    yield event({"role": "assistant", "content": ""})
    for i, piece in enumerate(p for p in re.split(r"(?<=\s)", text) if p):  # word by word, as a token stream would
        yield event({"content": piece}, lp=logprobs if i == 0 else None)
    yield event({}, "stop")
    yield "data: [DONE]\n\n"


def create_app(
    backends: dict[str, Backend],
    default_params: SamplingParams | None = None,
    vectors=None,
    guard: Guard | None = None,
    docs: bool = False,
    max_queue: int = 64,
    max_batch: int = 32,
    batch_window_s: float = 0.005,
) -> FastAPI:
    """Serve each backend under its model name at ``/v1/models`` and ``/v1/chat/completions``.

    ``vectors`` resolves a steering-vector name to a tensor ([hidden] or
    [layers × hidden]) for requests that carry a ``steering`` list (``vectors.resolver``).
    ``guard`` (default: loopback names only, no key, 1 MiB bodies) is checked before
    any handler; ``docs`` turns on ``/docs`` and ``/openapi.json``. Each loaded model
    gets one batching worker with a queue of ``max_queue`` requests; it waits up to
    ``batch_window_s`` for companions of a request that finds it idle.
    """
    app = FastAPI(
        title="persona-pipeline",
        docs_url="/docs" if docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
    )
    guard_app(app, guard or Guard(max_body_bytes=MAX_BODY_BYTES), lambda st, msg, code: openai_error(st, msg, code))
    defaults = default_params or SamplingParams()
    created = int(time.time())
    app.state.batchers = {}  # id(model) → Batcher; the tests and the bench read the batch sizes
    made = threading.Lock()

    # One worker per model object: two names may share one loaded model (make_backend caches them),
    # and persona wrappers share their ``inner`` model, so key on the innermost wrapper.
    def model_of(b):
        return model_of(b.inner) if hasattr(b, "inner") else b

    def batcher(name: str) -> Batcher:
        model = model_of(backends[name])
        with made:
            if id(model) not in app.state.batchers:
                app.state.batchers[id(model)] = Batcher(
                    model.name, max_queue=max_queue, max_batch=max_batch, window_s=batch_window_s
                )
            return app.state.batchers[id(model)]

    @app.exception_handler(APIError)
    def _api_error(_req: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    def _invalid(_req: Request, exc: RequestValidationError) -> JSONResponse:
        msg = "; ".join(f"{'.'.join(map(str, e['loc'][1:])) or 'body'}: {e['msg']}" for e in exc.errors())
        first = ".".join(map(str, exc.errors()[0]["loc"][1:])) or None if exc.errors() else None
        return APIError(400, f"invalid request: {msg}", "invalid_request", first).response()

    @app.exception_handler(StarletteHTTPException)
    def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        return APIError(exc.status_code, str(exc.detail), codes.get(exc.status_code), headers=exc.headers).response()

    @app.exception_handler(Exception)
    def _crash(_req: Request, exc: Exception) -> JSONResponse:  # never a plain-text 500
        return APIError(500, f"internal error: {type(exc).__name__}", "internal_error").response()

    @app.get("/v1/models")
    def list_models() -> dict:
        data = [{"id": n, "object": "model", "created": created, "owned_by": "persona-pipeline"} for n in backends]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest):
        if req.model not in backends:
            known = ", ".join(backends) or "none"
            raise APIError(404, f"model {req.model!r} not found; this server has: {known}", "model_not_found", "model")
        backend = backends[req.model]
        # validation may load the model (lazily) and read vector files: in a thread, never on the event loop
        lane = batcher(req.model)
        try:
            with lane.expecting():  # companions still being validated are worth a short wait
                job = await run_in_threadpool(_job, backend, req, defaults, vectors)
                future = lane.submit(job)
        except Overloaded as e:
            raise APIError(503, str(e), "server_overloaded", headers={"Retry-After": str(e.retry_after_s)}) from None
        try:
            result = await asyncio.wrap_future(future)
        except Exception as e:  # a model failure is the server's fault, not the request's
            raise APIError(500, f"{backend.name} failed: {type(e).__name__}: {e}", "model_error") from e
        text, logprobs = (result, None) if job.top_logprobs is None else _logprobs_block(result, job.top_logprobs)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": req.model}
        end = {}  # a persona simulator that writes [END] has ended the dialogue by its stop rule: say so
        if hasattr(backend, "persona_id") and job.top_logprobs is None:
            text, ended = split_end(text)
            end = {"end_of_conversation": ended}
        if req.stream:
            return StreamingResponse(_chunks(head, text, logprobs, end), media_type="text/event-stream")
        message = {"role": "assistant", "content": text}
        choice = {"index": 0, "message": message, "logprobs": logprobs, "finish_reason": "stop", **end}
        return {**head, "object": "chat.completion", "choices": [choice]}

    return app


def run_server(app: FastAPI, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve in the foreground until Ctrl-C (``persona-pipeline serve``)."""
    uvicorn.run(app, host=host, port=port, log_level="info")


def guard_for(host: str, key: str | None = None, allowed_hosts: list[str] | None = None) -> Guard:
    """The guard ``serve`` runs with: the key from ``--api-key`` or the environment; warns on a public bind."""
    key = api_key(key)
    warn_if_exposed(host, key, "serve")
    return Guard(
        bind_host=host,
        api_key=key,
        max_body_bytes=MAX_BODY_BYTES,
        allowed_hosts=tuple(allowed_hosts) if allowed_hosts else None,
    )


@contextlib.contextmanager
def serving(app: FastAPI, host: str = "127.0.0.1", ready_timeout_s: float = 10.0) -> Iterator[str]:
    """Run ``app`` on a free loopback port in a background thread; yield its base URL (ending in ``/v1``).

    The socket is bound here, before uvicorn starts, so no other process can
    take the port between choosing it and serving on it.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="serving")
    thread.start()
    deadline = time.monotonic() + ready_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError(f"uvicorn did not start on {host}:{port}")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
