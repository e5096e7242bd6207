"""Request security shared by our two HTTP servers (``serve`` and the rating server).

One ASGI middleware, installed by ``guard_app``, refuses before any handler runs:

* a body larger than ``max_body_bytes`` (413; counted as it streams, so a missing
  or lying ``Content-Length`` does not get past it);
* a ``Host`` header outside the allowlist (400): a server bound to loopback only
  answers to loopback names, so a web page cannot reach it by DNS rebinding;
* a missing or wrong API key (401) when one is configured: ``Authorization: Bearer
  <key>``, or HTTP Basic with the key as password, which a browser asks for itself.

Each server renders these errors in its own body format (OpenAI's error JSON for
``serve``, FastAPI's ``detail`` for the rating page), through ``error_body``.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

API_KEY_ENV = "PERSONA_PIPELINE_API_KEY"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")

ErrorBody = Callable[[int, str, str], dict]  # (status, message, code) -> JSON body


def is_loopback(host: str) -> bool:
    """True for names and addresses that only this machine can reach."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_key(given: str | None) -> str | None:
    """The key from ``--api-key``, else from the environment (preferred: not visible in ``ps``)."""
    return given or os.environ.get(API_KEY_ENV) or None


def warn_if_exposed(host: str, key: str | None, what: str) -> str | None:
    """Print (and return) a warning when ``host`` is reachable from other machines."""
    if is_loopback(host):
        return None
    msg = f"WARNING: {what} binds {host}: reachable from other machines" + (
        "" if key else f"; anyone who can reach it can use it (set {API_KEY_ENV} or --api-key)"
    )
    print(msg, file=sys.stderr, flush=True)
    return msg


@dataclass(frozen=True)
class Guard:
    """What the middleware enforces. ``allowed_hosts=None``: loopback names when bound to loopback, else any."""

    bind_host: str = "127.0.0.1"
    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    allowed_hosts: tuple[str, ...] | None = None
    browser_login: bool = False  # answer 401 with a Basic challenge, so a browser prompts for the key
    headers: dict[str, str] = field(default_factory=dict)  # added to every response

    def hosts(self) -> set[str] | None:
        if self.allowed_hosts is not None:
            return {h.lower() for h in self.allowed_hosts}
        return set(LOOPBACK_NAMES) if is_loopback(self.bind_host) else None

    def key_matches(self, authorization: str) -> bool:
        if self.api_key is None:
            return True
        scheme, _, value = authorization.partition(" ")
        given = value.strip()
        if scheme.lower() == "basic":
            try:
                given = base64.b64decode(given, validate=True).decode("utf-8").partition(":")[2]
            except ValueError:
                return False
        elif scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.encode(), self.api_key.encode())


def _host_name(host_header: str) -> str:
    """``[::1]:8000`` → ``::1``; ``Localhost:80`` → ``localhost``."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


class _TooLarge(Exception):
    pass


class GuardMiddleware:
    """Pure ASGI, so the body limit applies while the body streams in, before anything parses it."""

    def __init__(self, app, guard: Guard, error_body: ErrorBody):
        self.app, self.guard, self.error_body = app, guard, error_body
        self.allowed = guard.hosts()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._refusal(headers)
        if refusal:
            return await self._reply(send, *refusal)
        limit, state = self.guard.max_body_bytes, {"seen": 0, "over": False}
        forward = self._with_headers(send)

        async def bounded_receive():
            message = await receive()
            state["seen"] += len(message.get("body", b""))
            if state["seen"] > limit:
                state["over"] = True
                raise _TooLarge
            return message

        async def guarded_send(message):
            if not state["over"]:  # once over the limit, the app's own error reply is replaced by the 413
                await forward(message)

        try:
            await self.app(scope, bounded_receive, guarded_send)
        except _TooLarge:
            pass
        if state["over"]:
            await self._reply(send, *self._too_large())

    def _refusal(self, headers: dict[str, str]) -> tuple[int, str, str] | None:
        host = _host_name(headers.get("host", ""))
        if self.allowed is not None and host not in self.allowed:
            return (
                400,
                f"Host {host!r} is not allowed (this server answers to {', '.join(sorted(self.allowed))})",
                "host_not_allowed",
            )
        if not self.guard.key_matches(headers.get("authorization", "")):
            return 401, "missing or invalid API key (send Authorization: Bearer <key>)", "invalid_api_key"
        length = headers.get("content-length", "0")
        if not length.isdigit() or int(length) > self.guard.max_body_bytes:
            return self._too_large()
        return None

    def _too_large(self) -> tuple[int, str, str]:
        return 413, f"request body over {self.guard.max_body_bytes} bytes", "request_too_large"

    def _with_headers(self, send):
        extra = [(k.lower().encode(), v.encode()) for k, v in self.guard.headers.items()]

        async def send_with_headers(message):
            if message["type"] == "http.response.start" and extra:
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        return send_with_headers

    async def _reply(self, send, status: int, message: str, code: str) -> None:
        body = json.dumps(self.error_body(status, message, code)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if status == 401 and self.guard.browser_login:
            headers.append((b"www-authenticate", b'Basic realm="persona-pipeline", charset="UTF-8"'))
        headers += [(k.lower().encode(), v.encode()) for k, v in self.guard.headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def guard_app(app, guard: Guard, error_body: ErrorBody) -> None:
    """Install the guard as the outermost middleware of a FastAPI/Starlette ``app``."""
    app.add_middleware(GuardMiddleware, guard=guard, error_body=error_body)
