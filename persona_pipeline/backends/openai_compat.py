"""OpenAI-compatible HTTP backend: OpenAI, ``vllm serve``, llama.cpp, our own ``serve``.

The ``openai`` client does the retries (exponential backoff on 5xx, 429,
timeouts and dropped connections) and timeouts; we add bounded concurrency so a
batch of chats becomes N requests in flight, not N in a row.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

from .base import BackendError, Chat, SamplingParams, apply_stops

OPENAI_URL = "https://api.openai.com/v1"


class NoLogprobs(BackendError):
    """The endpoint answers chats but sends no next-token logprobs (``transformers serve`` does this):
    a feature it lacks, not a transient error, so logprob judges report it instead of re-asking."""


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
    ):
        import openai

        key = os.environ.get(api_key_env)
        if not key:
            if base_url in (None, OPENAI_URL):
                raise BackendError(
                    f"no API key: set the env var {api_key_env} to use {model} at {base_url or OPENAI_URL}"
                )
            key = "EMPTY"  # local servers (vllm serve, llama.cpp) accept any key
        self.model, self.base_url, self.concurrency = model, base_url or OPENAI_URL, concurrency
        self.name = name or f"openai:{model}"
        self.client = openai.OpenAI(api_key=key, base_url=self.base_url, timeout=timeout_s, max_retries=max_retries)

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIBackend(model={self.model!r}, base_url={self.base_url!r})"

    def _call(self, fn, items):
        import openai

        try:
            with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
                return list(pool.map(fn, items))
        except openai.AuthenticationError as e:
            raise BackendError(f"{self.base_url} rejected the API key for {self.model}: {e.message}") from None
        except openai.APIConnectionError as e:
            raise BackendError(f"could not reach {self.base_url} for {self.model} after retries: {e}") from None
        except openai.APIStatusError as e:
            raise BackendError(f"{self.base_url} answered HTTP {e.status_code} for {self.model}: {e.message}") from None
        except (AttributeError, TypeError, IndexError) as e:  # a 200 whose body is not a chat completion
            raise BackendError(
                f"{self.base_url} sent a malformed chat completion for {self.model}: {type(e).__name__}: {e}"
            ) from None

    def complete(self, chats: list[Chat], params: SamplingParams) -> list[str]:
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

        return self._call(one, chats)

    def next_token_logprobs(self, chats: list[Chat], top_k: int = 20) -> list[dict[str, float]]:
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
                    f"{self.base_url} returned no next-token logprobs for {self.model} "
                    f"(asked logprobs=True, top_logprobs={top_k}; got logprobs: None)"
                )
            return _merge_stripped((t.token, t.logprob) for t in content[0].top_logprobs)

        return self._call(one, chats)


def _merge_stripped(pairs) -> dict[str, float]:
    """Key by stripped token, adding up probabilities: " Yes" and "Yes" are one answer (as in LocalBackend)."""
    out: dict[str, float] = {}
    for token, lp in pairs:
        key = token.strip()
        out[key] = math.log(math.exp(out[key]) + math.exp(lp)) if key in out else lp
    return out
