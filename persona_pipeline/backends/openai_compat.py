"""OpenAI-compatible HTTP backend: OpenAI, ``vllm serve``, llama.cpp, our own ``serve``.

A batch of chats becomes N requests in flight (bounded concurrency), and each
request is on its own:

* **a hard deadline per attempt**: ``timeout_s`` bounds the whole attempt
  (connect, send, headers, body), not each socket read, so an endpoint that
  trickles a byte at a time cannot hold a worker past it;
* **re-asks with backoff**: connection errors, timeouts, 408/409/429 and 5xx
  are retried up to ``max_retries`` times after 0.5 s, 1 s, 2 s, … (×0.75–1
  jitter so a fleet does not retry in step, capped at ``max_backoff_s``;
  a ``Retry-After`` up to that cap is honoured);
* **per-item failures**: :meth:`OpenAIBackend.complete_each` returns one
  :class:`BackendError` for the item that failed and the texts of the others,
  so one bad item is one failed judgement, not a failed batch.
"""

from __future__ import annotations

import math
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpcore
import httpx

from .base import BackendError, Chat, SamplingParams, apply_stops, redact_url

OPENAI_URL = "https://api.openai.com/v1"
RETRY_STATUS = frozenset({408, 409, 429})  # and every 5xx


class NoLogprobs(BackendError):
    """The endpoint answers chats but sends no next-token logprobs (``transformers serve`` does this):
    a feature it lacks, not a transient error, so logprob judges report it instead of re-asking."""


# --- a deadline every socket operation of an attempt obeys ------------------------------------------

_deadline = threading.local()  # each request runs start to finish in one worker thread


@contextmanager
def _attempt_deadline(seconds: float):
    _deadline.at = time.monotonic() + seconds
    try:
        yield
    finally:
        _deadline.at = None


def _capped(timeout: float | None, exc: type[Exception]) -> float | None:
    """``timeout`` shortened to what is left of this thread's deadline; ``exc`` once it has passed."""
    at = getattr(_deadline, "at", None)
    if at is None:
        return timeout
    left = at - time.monotonic()
    if left <= 0:
        raise exc("the per-request deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream):
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _capped(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _capped(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(ssl_context, server_hostname, _capped(timeout, httpcore.ConnectTimeout))
        return _DeadlineStream(inner)

    def get_extra_info(self, info: str):
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's sync sockets, each read/write/connect given at most what is left of the attempt's deadline."""

    def __init__(self, inner: httpcore.NetworkBackend):
        self._inner = inner

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        stream = self._inner.connect_tcp(
            host, port, _capped(timeout, httpcore.ConnectTimeout), local_address, socket_options
        )
        return _DeadlineStream(stream)

    def connect_unix_socket(self, path, timeout=None, socket_options=None):
        return _DeadlineStream(
            self._inner.connect_unix_socket(path, _capped(timeout, httpcore.ConnectTimeout), socket_options)
        )

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _deadline_http_client(timeout_s: float) -> httpx.Client:
    """An httpx client whose sockets obey the per-attempt deadline.

    httpx has per-operation timeouts only; the network backend is the one place
    that sees every read, so it is wrapped there (httpcore keeps it as
    ``_network_backend``: there is no public hook).
    """
    transport = httpx.HTTPTransport(limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100))
    pool = transport._pool
    pool._network_backend = _DeadlineBackend(pool._network_backend)
    return httpx.Client(
        transport=transport, timeout=httpx.Timeout(timeout_s, connect=min(5.0, timeout_s)), follow_redirects=True
    )


# --- the backend -------------------------------------------------------------------------------------


class OpenAIBackend:
    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        timeout_s: float = 60.0,
        max_retries: int = 4,
        name: str | None = None,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
    ):
        import openai

        if timeout_s <= 0 or max_retries < 0 or backoff_s < 0 or max_backoff_s < backoff_s:
            raise BackendError(
                f"{model}: need timeout_s > 0, max_retries >= 0 and 0 <= backoff_s <= max_backoff_s "
                f"(got {timeout_s}, {max_retries}, {backoff_s}, {max_backoff_s})"
            )
        key = os.environ.get(api_key_env)
        if not key:
            if base_url in (None, OPENAI_URL):
                raise BackendError(
                    f"no API key: set the env var {api_key_env} to use {model} at {base_url or OPENAI_URL}"
                )
            key = "EMPTY"  # local servers (vllm serve, llama.cpp) accept any key
        self.model, self.base_url, self.concurrency = model, base_url or OPENAI_URL, concurrency
        self.name = name or f"openai:{model}"
        self.timeout_s, self.max_retries = timeout_s, max_retries
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.client = openai.OpenAI(
            api_key=key,
            base_url=self.base_url,
            timeout=timeout_s,
            max_retries=0,  # re-asks are ours: under the same deadline and backoff as every attempt
            http_client=_deadline_http_client(timeout_s),
        )

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIBackend(model={self.model!r}, base_url={redact_url(self.base_url)!r})"

    # --- one item: attempts, backoff, a clear error ---

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before re-ask ``attempt + 1``: exponential with jitter, bounded by ``max_backoff_s``."""
        if retry_after is not None and 0 < retry_after <= self.max_backoff_s:
            return retry_after
        return min(self.max_backoff_s, self.backoff_s * 2**attempt) * random.uniform(0.75, 1.0)

    def _error(self, e: Exception, attempts: int) -> tuple[BackendError, bool, float | None]:
        """(the error as the caller sees it, whether a re-ask may help, the server's Retry-After)."""
        import openai

        url, model, tries = redact_url(self.base_url), self.model, f"{attempts} attempt{'s' * (attempts > 1)}"
        if isinstance(e, BackendError):
            return e, False, None
        if isinstance(e, openai.APITimeoutError):
            return (
                BackendError(f"{url} did not answer {model} within the {self.timeout_s:g} s deadline ({tries})"),
                True,
                None,
            )
        if isinstance(e, openai.APIConnectionError):
            return BackendError(f"could not reach {url} for {model} ({tries}): {e}"), True, None
        if isinstance(e, openai.AuthenticationError):
            return BackendError(f"{url} rejected the API key for {model}: {e.message}"), False, None
        if isinstance(e, openai.APIStatusError):
            retry = e.status_code in RETRY_STATUS or e.status_code >= 500
            return (
                BackendError(f"{url} answered HTTP {e.status_code} for {model}: {e.message}"),
                retry,
                _retry_after(e.response),
            )
        if isinstance(e, (AttributeError, TypeError, IndexError, KeyError, ValueError, RecursionError)):
            # a 200 whose body is no chat completion (or JSON nested too deep to decode)
            return (
                BackendError(f"{url} sent a malformed chat completion for {model}: {type(e).__name__}: {e}"),
                False,
                None,
            )
        raise e

    def _one(self, fn, item):
        """``fn(item)``, re-asked with backoff on transient errors; the result or a :class:`BackendError`."""
        for attempt in range(self.max_retries + 1):
            try:
                with _attempt_deadline(self.timeout_s):
                    return fn(item)
            except Exception as e:  # noqa: BLE001 — sorted into retryable / final by _error
                error, retry, retry_after = self._error(e, attempt + 1)
                if not retry or attempt == self.max_retries:
                    return error
                time.sleep(self.backoff(attempt, retry_after))
        raise AssertionError("unreachable")

    def _each(self, fn, items) -> list:
        with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
            return list(pool.map(lambda it: self._one(fn, it), items))

    def _all(self, fn, items) -> list:
        out = self._each(fn, items)
        if errors := [r for r in out if isinstance(r, BackendError)]:
            raise errors[0]
        return out

    # --- the Backend protocol ---

    def _chat(self, params: SamplingParams):
        def one(chat: Chat) -> str:
            resp = self.client.chat.completions.create(
                model=self.model,
                messages=chat,
                max_tokens=params.max_new_tokens,
                temperature=params.temperature,
                top_p=params.top_p,
                seed=params.seed,
                stop=params.stop or None,
            )
            return apply_stops(resp.choices[0].message.content or "", params.stop).strip()

        return one

    def complete(self, chats: list[Chat], params: SamplingParams) -> list[str]:
        """One completion per chat, in order; the first item that fails for good raises its BackendError."""
        return self._all(self._chat(params), chats)

    def complete_each(self, chats: list[Chat], params: SamplingParams) -> list[str | BackendError]:
        """One completion per chat, in order, or that item's BackendError: the other items still count."""
        return self._each(self._chat(params), chats)

    def next_token_logprobs(self, chats: list[Chat], top_k: int = 20) -> list[dict[str, float]]:
        """Top-k next-token logprobs per chat; the first item that fails for good raises its BackendError."""
        return self._all(self._logprobs(top_k), chats)

    def next_token_logprobs_each(self, chats: list[Chat], top_k: int = 20) -> list[dict[str, float] | BackendError]:
        """Per chat its distribution or its BackendError: one bad item is one failed judgement."""
        return self._each(self._logprobs(top_k), chats)

    def _logprobs(self, top_k: int):
        def one(chat: Chat) -> dict[str, float]:
            resp = self.client.chat.completions.create(
                model=self.model,
                messages=chat,
                max_tokens=1,
                temperature=0,
                logprobs=True,
                top_logprobs=top_k,
            )
            content = resp.choices[0].logprobs and resp.choices[0].logprobs.content
            if not content:
                raise NoLogprobs(
                    f"{redact_url(self.base_url)} returned no next-token logprobs for {self.model} "
                    f"(asked logprobs=True, top_logprobs={top_k}; got logprobs: None)"
                )
            return _merge_stripped((t.token, t.logprob) for t in content[0].top_logprobs)

        return one


def complete_each(backend, chats: list[Chat], params: SamplingParams) -> list[str | BackendError]:
    """Per-item completions from any backend: item by item where it can (:class:`OpenAIBackend`),
    else the whole batch, a batch failure then counting as every item's failure."""
    if hasattr(backend, "complete_each"):
        return backend.complete_each(chats, params)
    try:
        return list(backend.complete(chats, params))
    except BackendError as e:
        return [e] * len(chats)


def next_token_logprobs_each(backend, chats: list[Chat], top_k: int = 20) -> list[dict[str, float] | BackendError]:
    """Per-item next-token logprobs from any backend (see :func:`complete_each`). An endpoint without
    logprobs raises :class:`NoLogprobs` for the whole call: that is a missing feature, not a bad item."""
    if hasattr(backend, "next_token_logprobs_each"):
        out = backend.next_token_logprobs_each(chats, top_k=top_k)
        if out and all(isinstance(r, NoLogprobs) for r in out):
            raise out[0]
        return out
    try:
        return list(backend.next_token_logprobs(chats, top_k=top_k))
    except NoLogprobs:
        raise
    except BackendError as e:
        return [e] * len(chats)


def _retry_after(response: httpx.Response | None) -> float | None:
    try:
        return float(response.headers.get("retry-after", "")) if response is not None else None
    except ValueError:
        return None


def _merge_stripped(pairs) -> dict[str, float]:
    """Key by stripped token, adding up probabilities: " Yes" and "Yes" are one answer (as in LocalBackend)."""
    out: dict[str, float] = {}
    for token, lp in pairs:
        key = token.strip()
        out[key] = math.log(math.exp(out[key]) + math.exp(lp)) if key in out else lp
    return out
