"""Dagster resources: which model plays teacher, assistant, judge and policy.

Each role picks a backend from env vars (``PERSONA_<ROLE>_KIND``, ``_MODEL``,
``_BASE_URL``, ``_API_KEY_ENV``), defaulting to the embedded model. Only the
*name* of the env var holding an API key is ever configured or stored.
"""

import os

import dagster as dg

from persona_pipeline.backends import Backend, BackendSpec, make_backend
from persona_pipeline.settings import home


class ModelResource(dg.ConfigurableResource):
    """A backend for one role in the pipeline."""

    role: str = "policy"
    kind: str = "local"
    model: str = "embedded"
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    timeout_s: float = 60.0
    max_retries: int = 4
    batch_size: int = 32
    quantize: str | None = None

    def spec(self) -> BackendSpec:
        return BackendSpec(**self.model_dump(exclude={"role"}))

    def backend(self) -> Backend:
        return make_backend(self.spec(), home())

    def describe(self) -> str:
        where = f" @ {self.base_url}" if self.base_url else ""
        return f"{self.kind}:{self.model}{where}"


def model_resource_from_env(role: str, **defaults) -> ModelResource:
    prefix = f"PERSONA_{role.upper()}_"
    env = {k[len(prefix) :].lower(): v for k, v in os.environ.items() if k.startswith(prefix)}
    allowed = set(ModelResource.model_fields) - {"role"}
    unknown = set(env) - allowed
    if unknown:
        raise ValueError(
            f"unknown settings {sorted(prefix + u.upper() for u in unknown)}; known: {sorted(prefix + a.upper() for a in allowed)}"
        )
    return ModelResource(role=role, **{**defaults, **env})
