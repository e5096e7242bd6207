"""Dagster resources: which model plays teacher, assistant, judge and policy.

Each role picks a backend from env vars (``PERSONA_<ROLE>_KIND``, ``_MODEL``,
``_ADAPTER``, ``_QUANTIZE``, ``_BASE_URL``, ``_API_KEY_ENV``...), defaulting to the
embedded model. Where a role *sends* requests and which env var holds its key are
read from the environment only — never from run config — so whoever can launch a
run cannot redirect a secret to a server of their choosing. Only the *name* of the
key's env var is ever stored, and URLs are redacted before they reach metadata.
"""

import os
import re

import dagster as dg
from pydantic import ConfigDict

from persona_pipeline.backends import Backend, BackendSpec, make_backend
from persona_pipeline.backends.base import redact_url
from persona_pipeline.settings import home

ENDPOINT_SETTINGS = ("base_url", "api_key_env")  # env only: not part of the resource's config schema
ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")


class ModelResource(dg.ConfigurableResource):
    """A backend for one role in the pipeline (endpoint and key env var: env only, see module doc)."""

    model_config = ConfigDict(extra="forbid")  # ModelResource(base_url=...) fails loudly instead of being ignored

    role: str = "policy"
    kind: str = "local"
    model: str = "embedded"
    adapter: str | None = None  # a PEFT folder, or "sft" / "rl" for the pipeline's own adapters
    concurrency: int = 8
    timeout_s: float = 60.0
    max_retries: int = 4
    batch_size: int = 32
    quantize: str | None = None  # auto | nf4 | none: NF4 weights on CUDA for local loads
    gpu_memory_utilization: float = 0.5  # vLLM: share of GPU memory its engine reserves
    max_lora_rank: int | None = None  # vLLM: LoRA room when this role starts the engine (default: its adapter's)

    def _env(self, setting: str) -> str | None:
        return os.environ.get(f"PERSONA_{self.role.upper()}_{setting.upper()}") or None

    @property
    def base_url(self) -> str | None:
        url = self._env("base_url")
        if url and not url.startswith(("http://", "https://")):
            raise ValueError(f"PERSONA_{self.role.upper()}_BASE_URL={redact_url(url)!r}: use an http(s) URL")
        return url

    @property
    def api_key_env(self) -> str:
        name = self._env("api_key_env") or "OPENAI_API_KEY"
        if not ENV_NAME.fullmatch(name):
            raise ValueError(f"PERSONA_{self.role.upper()}_API_KEY_ENV={name!r}: not an env var name")
        return name

    def spec(self) -> BackendSpec:
        return BackendSpec(**self.model_dump(exclude={"role"}), base_url=self.base_url, api_key_env=self.api_key_env)

    def backend(self) -> Backend:
        return make_backend(self.spec(), home())

    def describe(self) -> str:
        """How the role is served, for metadata and logs (credentials in the URL redacted)."""
        adapter = f"+{self.adapter}" if self.adapter else ""
        where = f" @ {redact_url(self.base_url)}" if self.base_url else ""
        return f"{self.kind}:{self.model}{adapter}{where}"


def model_resource_from_env(role: str, **defaults) -> ModelResource:
    prefix = f"PERSONA_{role.upper()}_"
    env = {k[len(prefix) :].lower(): v for k, v in os.environ.items() if k.startswith(prefix)}
    allowed = set(ModelResource.model_fields) - {"role"} | set(ENDPOINT_SETTINGS)
    unknown = set(env) - allowed
    if unknown:
        raise ValueError(
            f"unknown settings {sorted(prefix + u.upper() for u in unknown)}; known: {sorted(prefix + a.upper() for a in allowed)}"
        )
    return ModelResource(role=role, **{**defaults, **{k: v for k, v in env.items() if k not in ENDPOINT_SETTINGS}})
