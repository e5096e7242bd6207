"""vLLM offline engine for bulk generation on a GPU.

vLLM's wheel is CUDA-only, so it is imported here, lazily, and only when CUDA
is present; nothing else in the package imports it.

An engine reserves a fixed share of GPU memory when it starts (vLLM's default is
90 %), so a process keeps **one engine per model**: every role and adapter that
names the model shares it, each backend passing its own LoRA per request. The
engine's LoRA slots are sized from the adapters' ranks (vLLM's default, 16, is
below our SFT and concatenated RL adapters), so the first backend to start an
engine decides its LoRA rank: a later adapter that needs more is a clear error.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .base import BackendError, Chat, SamplingParams, apply_stops

LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts


def adapter_rank(adapter: Path) -> int:
    """The largest LoRA rank in an adapter (its ``r`` and any per-module ``rank_pattern``)."""
    path = Path(adapter) / "adapter_config.json"
    if not path.exists():
        raise BackendError(f"{adapter}: no adapter_config.json — not a PEFT adapter vLLM can load")
    cfg = json.loads(path.read_text())
    try:
        return max([int(cfg["r"]), *(int(r) for r in (cfg.get("rank_pattern") or {}).values())])
    except (KeyError, TypeError, ValueError):
        raise BackendError(f"{path}: field r is missing or not an integer") from None


def lora_rank_for(rank: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds ``rank``."""
    for allowed in LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise BackendError(f"LoRA rank {rank} is above vLLM's largest max_lora_rank ({LORA_RANKS[-1]})")


@dataclass
class Engine:
    """One started ``vllm.LLM`` and the LoRA ids it has handed out (vLLM caches adapters by id)."""

    model: str
    llm: object
    max_lora_rank: int  # 0: started without LoRA
    gpu_memory_utilization: float
    lora_ids: dict[tuple[str, float], int] = field(default_factory=dict)

    def lora(self, adapter: Path | None):
        if adapter is None:
            return None
        from vllm.lora.request import LoRARequest

        from . import _stamp

        key = (str(adapter), _stamp(str(adapter)))  # retrained in place → a new id, so vLLM reloads it
        lid = self.lora_ids.setdefault(key, len(self.lora_ids) + 1)
        return LoRARequest(f"{Path(adapter).name}-{lid}", lid, str(adapter))


_ENGINES: dict[str, Engine] = {}
_LOCK = threading.Lock()


def engine(model: str, rank: int, gpu_memory_utilization: float, max_lora_rank: int | None = None) -> Engine:
    """The process's engine for ``model``, started on first use with room for LoRA rank ``rank``."""
    with _LOCK:
        eng = _ENGINES.get(model)
        if eng is None:
            eng = _ENGINES[model] = _start(model, max(rank, max_lora_rank or 0), gpu_memory_utilization)
        elif rank > eng.max_lora_rank:
            state = f"max_lora_rank={eng.max_lora_rank}" if eng.max_lora_rank else "LoRA off"
            raise BackendError(
                f"the vLLM engine for {model} was started with {state}, but an adapter of rank {rank} asks to share "
                f"it; set PERSONA_<ROLE>_MAX_LORA_RANK={lora_rank_for(rank)} on the role that starts it first"
            )
        return eng


def _start(model: str, rank: int, gpu_memory_utilization: float) -> Engine:
    from ..modelio import cuda_available

    if not cuda_available():
        raise BackendError(
            "the vllm backend needs a CUDA GPU and none is visible here; use kind=local or an OpenAI-compatible endpoint"
        )
    try:
        from vllm import LLM
    except ImportError:
        raise BackendError("the vllm backend needs `pip install vllm` on the GPU machine") from None
    kwargs: dict = {"model": model, "gpu_memory_utilization": gpu_memory_utilization, "enable_lora": rank > 0}
    if rank:
        kwargs["max_lora_rank"] = lora_rank_for(rank)
    llm = LLM(**kwargs)
    return Engine(model, llm, kwargs.get("max_lora_rank", 0), gpu_memory_utilization)


def shutdown() -> None:
    """Forget every engine (tests; a long-lived process that is done with the GPU)."""
    with _LOCK:
        _ENGINES.clear()


class VLLMBackend:
    """A role on the shared engine for ``model``, optionally with its own LoRA ``adapter``."""

    def __init__(
        self,
        model: str,
        adapter: str | Path | None = None,
        name: str | None = None,
        gpu_memory_utilization: float = 0.5,
        max_lora_rank: int | None = None,
    ):
        self.adapter = Path(adapter) if adapter else None
        rank = adapter_rank(self.adapter) if self.adapter else 0  # bad adapter → error before the GPU is touched
        self.engine = engine(model, rank, gpu_memory_utilization, max_lora_rank)
        self.name = name or f"vllm:{model}" + (f"+{self.adapter.name}" if self.adapter else "")

    @property
    def llm(self):
        return self.engine.llm

    def complete(self, chats: list[Chat], params: SamplingParams) -> list[str]:
        from vllm import SamplingParams as VSP

        sp = VSP(
            max_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=params.seed,
            stop=params.stop or None,
        )
        outs = self.llm.chat(chats, sp, lora_request=self.engine.lora(self.adapter), use_tqdm=False)
        return [apply_stops(o.outputs[0].text, params.stop).strip() for o in outs]

    def next_token_logprobs(self, chats: list[Chat], top_k: int = 20) -> list[dict[str, float]]:
        from vllm import SamplingParams as VSP

        outs = self.llm.chat(
            chats,
            VSP(max_tokens=1, temperature=0, logprobs=top_k),
            lora_request=self.engine.lora(self.adapter),
            use_tqdm=False,
        )
        return [{lp.decoded_token.strip(): lp.logprob for lp in o.outputs[0].logprobs[0].values()} for o in outs]
