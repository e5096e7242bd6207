"""Backends: one interface, three implementations, chosen by a small spec."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from .base import Backend, BackendError, Chat, SamplingParams

__all__ = ["Backend", "BackendError", "BackendSpec", "Chat", "SamplingParams", "make_backend"]


class BackendSpec(BaseModel):
    """Which model serves a role. ``model="embedded"`` is the shipped SmolLM2."""

    kind: Literal["local", "openai", "vllm"] = "local"
    model: str = "embedded"
    adapter: str | None = None
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    timeout_s: float = 60.0
    max_retries: int = 4
    batch_size: int = 32
    quantize: str | None = None


def make_backend(spec: BackendSpec, home: Path) -> Backend:
    if spec.kind == "openai":
        from .openai_compat import OpenAIBackend

        return OpenAIBackend(
            spec.model, spec.base_url, spec.api_key_env, spec.concurrency, spec.timeout_s, spec.max_retries
        )
    from ..modelio import resolve_base

    base = str(resolve_base(spec.model, home))
    if spec.kind == "vllm":
        from .vllm_engine import VLLMBackend

        return VLLMBackend(base, adapter=spec.adapter)
    stamp = _stamp(spec.adapter)
    return _local(base, spec.adapter, spec.batch_size, spec.quantize, spec.model, stamp)


def _stamp(adapter: str | None) -> float:
    """Retraining an adapter in place changes its mtime, so a cached copy is never stale."""
    if not adapter:
        return 0.0
    weights = Path(adapter) / "adapter_model.safetensors"
    return weights.stat().st_mtime if weights.exists() else 0.0


@functools.lru_cache(maxsize=4)
def _local(base: str, adapter: str | None, batch_size: int, quantize: str | None, label: str, stamp: float):
    """One loaded copy per (weights, adapter) per process: teacher and assistant share it."""
    from ..modelio import LoadOptions
    from .local import LocalBackend

    name = "smollm2-135m-instruct" if label == "embedded" else label
    if adapter:
        name += f"+{Path(adapter).name}"
    return LocalBackend.from_pretrained(
        base, adapter, name=name, batch_size=batch_size, opts=LoadOptions(quantize=quantize)
    )
