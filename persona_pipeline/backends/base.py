"""The one interface every model user goes through.

Teacher, assistant, judge and policy all ask a backend for completions of a
*batch* of chats, so each implementation can batch (local), fan out
concurrently (HTTP) or hand the whole batch to an engine (vLLM).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from pydantic import BaseModel, Field

Chat = list[dict]  # [{"role": "system"|"user"|"assistant", "content": str}, ...]


class SamplingParams(BaseModel):
    max_new_tokens: int = Field(default=128, ge=1)
    temperature: float = Field(default=0.8, ge=0)
    top_p: float = Field(default=0.95, gt=0, le=1)
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)
    repetition_penalty: float = Field(default=1.0, ge=1.0, le=2.0)  # local models only; 1.0 = off


class BackendError(RuntimeError):
    """A backend could not serve a request (missing key, server down, bad reply)."""


@runtime_checkable
class Backend(Protocol):
    name: str

    def complete(self, chats: list[Chat], params: SamplingParams) -> list[str]:
        """One completion per chat, in order."""

    def next_token_logprobs(self, chats: list[Chat], top_k: int = 20) -> list[dict[str, float]]:
        """Top-k next-token logprobs after the assistant prefix, per chat (for judges)."""


def apply_stops(text: str, stops: list[str]) -> str:
    """Cut at the first stop string; backends that cannot stop server-side use this."""
    cut = len(text)
    for s in stops:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut]


SECRET_QUERY_KEYS = ("key", "token", "secret", "password", "sig", "auth")


def redact_url(url: str | None) -> str | None:
    """``url`` fit for metadata and logs: user:password and secret-looking query values become ``***``."""
    if not url:
        return url
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparseable url>"
    netloc = f"***@{host}{port}" if parts.username or parts.password else parts.netloc
    query = urlencode(
        [
            (k, "***" if any(s in k.lower() for s in SECRET_QUERY_KEYS) else v)
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
        ],
        safe="*",
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
