"""Backends: one interface, three implementations, chosen by a small spec."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from .base import Backend, BackendError, Chat, SamplingParams

__all__ = ["Backend", "BackendError", "BackendSpec", "Chat", "SamplingParams", "make_backend"]


class BackendSpec(BaseModel):
    """Which model serves a role. ``model="embedded"`` is the shipped SmolLM2.

    ``adapter``: a PEFT folder, or ``sft`` / ``rl`` for the pipeline's own. ``quantize``
    (auto | nf4 | none) applies to local loads; a spec built without one — the policy
    loads made inside assets — follows ``PERSONA_POLICY_QUANTIZE``, the policy
    resource's setting. ``gpu_memory_utilization`` and ``max_lora_rank`` size a
    vLLM engine (the first role to start one for a model decides them).
    """

    kind: Literal["local", "openai", "vllm"] = "local"
    model: str = "embedded"
    adapter: str | None = None
    base_url: str | None = Field(default=None, repr=False)  # may carry credentials: kept out of reprs
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    timeout_s: float = 60.0
    max_retries: int = 4
    batch_size: int = 32
    quantize: str | None = Field(default_factory=lambda: os.environ.get("PERSONA_POLICY_QUANTIZE") or None)
    gpu_memory_utilization: float = Field(default=0.5, gt=0, le=1)
    max_lora_rank: int | None = Field(default=None, ge=1)
    exact: bool = False  # float32 on a CPU whatever the profile's dtype (adapters always; see inference_options)


def make_backend(spec: BackendSpec, home: Path) -> Backend:
    if spec.kind == "openai":
        from .openai_compat import OpenAIBackend

        return OpenAIBackend(
            spec.model, spec.base_url, spec.api_key_env, spec.concurrency, spec.timeout_s, spec.max_retries
        )
    from ..modelio import resolve_adapter, resolve_base, resolve_quantize

    adapter = resolve_adapter(spec.adapter, home)  # a missing adapter fails before any weights load
    adapter = str(adapter) if adapter else None
    base = str(resolve_base(spec.model, home))
    if spec.kind == "vllm":
        from .vllm_engine import VLLMBackend

        return VLLMBackend(
            base, adapter=adapter, gpu_memory_utilization=spec.gpu_memory_utilization, max_lora_rank=spec.max_lora_rank
        )
    stamp = _stamp(adapter)
    exact = spec.exact or adapter is not None
    return _local(base, adapter, spec.batch_size, resolve_quantize(spec.quantize), spec.model, stamp, exact)


def _stamp(adapter: str | None) -> float:
    """Retraining an adapter in place changes its mtime, so a cached copy is never stale."""
    if not adapter:
        return 0.0
    weights = Path(adapter) / "adapter_model.safetensors"
    return weights.stat().st_mtime if weights.exists() else 0.0


@functools.lru_cache(maxsize=5)  # teacher/assistant, the exact base, SFT, RL, one more
def _local(
    base: str, adapter: str | None, batch_size: int, quantize: str | None, label: str, stamp: float, exact: bool
):
    """One loaded copy per (weights, adapter) per process: teacher and assistant share it."""
    from ..modelio import inference_options
    from .local import LocalBackend

    name = "smollm2-135m-instruct" if label == "embedded" else label
    if adapter:
        name += f"+{Path(adapter).name}"
    return LocalBackend.from_pretrained(
        base, adapter, name=name, batch_size=batch_size, opts=inference_options(quantize, exact)
    )
