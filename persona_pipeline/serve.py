"""An OpenAI-compatible HTTP server over our ``Backend`` interface.

Anything that speaks the OpenAI chat API (the ``openai`` client, our own
``OpenAIBackend``, eval harnesses) can then use a local or adapted model. One
request is one chat: requests to the same backend are serialised by a lock,
because a transformers model must not run two ``generate`` calls at once.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Literal

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from .backends.base import Backend, Chat, SamplingParams


class APIError(Exception):
    """An error the client should see as an OpenAI-style ``{"error": {...}}`` body."""

    def __init__(self, status: int, message: str, code: str | None = None, type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.code, self.type = status, message, code, type_

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": None, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


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

    vector: str
    layer: int = Field(ge=0)
    coef: float = 0.0
    mode: Literal["add", "ablate", "cap"] = "add"
    positions: Literal["all", "prompt", "response"] = "all"
    threshold: float | None = None


class ChatRequest(BaseModel):
    """The subset of the chat completions request we honour; unknown fields are ignored."""

    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    stream: bool = False
    steering: list[SteeringSpec] = Field(default_factory=list)

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


def _token_logprobs(backend: Backend, chat: Chat, top: int) -> tuple[str, dict]:
    """The greedy next token and its OpenAI ``logprobs`` block, from ``next_token_logprobs``."""
    dist = backend.next_token_logprobs([chat], top_k=max(top, 1))[0]
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


def _steers(backend: Backend, specs: list[SteeringSpec], vectors) -> tuple[object | None, list]:
    if not specs:
        return None, []
    from .hooks import Steer

    local = _local_model(backend)
    if local is None:
        raise APIError(400, f"{backend.name} cannot be steered (only local models can)", "unsupported_value")
    steers = []
    for spec in specs:
        vec = vectors(spec.vector) if vectors else None
        if vec is None:
            raise APIError(400, f"unknown steering vector {spec.vector!r}", "vector_not_found")
        if vec.dim() == 2:  # [layers × hidden] persona vectors: take the requested layer
            vec = vec[spec.layer]
        steers.append(Steer(vec, spec.layer, spec.coef, spec.mode, spec.positions, spec.threshold))
    return local, steers


def _run(
    backend: Backend, lock: threading.Lock, req: ChatRequest, params: SamplingParams, vectors=None
) -> tuple[str, dict | None]:
    """Generate one completion: text and the logprobs block (or None)."""
    if req.n != 1:
        raise APIError(400, f"n={req.n}: only n=1 is supported", "unsupported_value")
    chat = [m.as_chat_turn() for m in req.messages]
    if req.logprobs and params.max_new_tokens != 1:
        raise APIError(400, "logprobs are only supported with max_tokens=1 (next-token scoring)", "unsupported_value")
    local, steers = _steers(backend, req.steering, vectors)
    try:
        with lock, local.steered(steers) if local else contextlib.nullcontext():
            if req.logprobs:
                return _token_logprobs(backend, chat, req.top_logprobs or 0)
            return backend.complete([chat], params)[0], None
    except Exception as e:  # a model failure is the server's fault, not the request's
        raise APIError(500, f"{backend.name} failed: {type(e).__name__}: {e}", None, "server_error") from e


def _chunks(head: dict, text: str, logprobs: dict | None) -> Iterator[str]:
    """SSE ``chat.completion.chunk`` events for an already generated text, then ``[DONE]``."""

    def event(delta: dict, finish: str | None = None, lp: dict | None = None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish}
        return f"data: {json.dumps({**head, 'object': 'chat.completion.chunk', 'choices': [choice]})}\n\n"

    yield event({"role": "assistant", "content": ""})
    for i, piece in enumerate(p for p in re.split(r"(?<=\s)", text) if p):  # word by word, as a token stream would
        yield event({"content": piece}, lp=logprobs if i == 0 else None)
    yield event({}, "stop")
    yield "data: [DONE]\n\n"


def create_app(backends: dict[str, Backend], default_params: SamplingParams | None = None, vectors=None) -> FastAPI:
    """Serve each backend under its model name at ``/v1/models`` and ``/v1/chat/completions``.

    ``vectors`` resolves a steering-vector name to a tensor ([hidden] or
    [layers × hidden]) for requests that carry a ``steering`` list.
    """
    app = FastAPI(title="persona-pipeline")

    # One lock per backend object: two names may share one loaded model (make_backend caches them).
    # Persona wrappers share their ``inner`` model, so lock on the innermost backend.
    def model_of(b):
        return model_of(b.inner) if hasattr(b, "inner") else b

    by_object = {id(model_of(b)): threading.Lock() for b in backends.values()}
    locks = {name: by_object[id(model_of(b))] for name, b in backends.items()}
    defaults = default_params or SamplingParams()
    created = int(time.time())

    @app.exception_handler(APIError)
    def _api_error(_req: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    def _invalid(_req: Request, exc: RequestValidationError) -> JSONResponse:
        msg = "; ".join(f"{'.'.join(map(str, e['loc'][1:])) or 'body'}: {e['msg']}" for e in exc.errors())
        return APIError(400, f"invalid request: {msg}", "invalid_request").response()

    @app.get("/v1/models")
    def list_models() -> dict:
        data = [{"id": n, "object": "model", "created": created, "owned_by": "persona-pipeline"} for n in backends]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    def chat_completions(req: ChatRequest):  # sync: FastAPI runs it in a worker thread
        if req.model not in backends:
            known = ", ".join(backends) or "none"
            raise APIError(404, f"model {req.model!r} not found; this server has: {known}", "model_not_found")
        text, logprobs = _run(backends[req.model], locks[req.model], req, req.sampling(defaults), vectors)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": req.model}
        if req.stream:
            return StreamingResponse(_chunks(head, text, logprobs), media_type="text/event-stream")
        message = {"role": "assistant", "content": text}
        choice = {"index": 0, "message": message, "logprobs": logprobs, "finish_reason": "stop"}
        return {**head, "object": "chat.completion", "choices": [choice]}

    return app


def run_server(app: FastAPI, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve in the foreground until Ctrl-C (the future ``persona-pipeline serve``)."""
    uvicorn.run(app, host=host, port=port, log_level="info")


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
