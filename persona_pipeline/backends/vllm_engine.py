"""vLLM offline engine for bulk generation on a GPU.

vLLM's wheel is CUDA-only, so it is imported here, lazily, and only when CUDA
is present; nothing else in the package imports it.
"""

from __future__ import annotations

from .base import BackendError, Chat, SamplingParams, apply_stops


class VLLMBackend:
    def __init__(self, model: str, adapter: str | None = None, name: str | None = None, **engine_kwargs):
        from ..modelio import cuda_available

        if not cuda_available():
            raise BackendError("the vllm backend needs a CUDA GPU; use kind=local or an OpenAI-compatible endpoint")
        try:
            from vllm import LLM
        except ImportError:
            raise BackendError("the vllm backend needs `pip install vllm` on the GPU machine") from None
        self.llm = LLM(model=model, enable_lora=adapter is not None, **engine_kwargs)
        self.adapter = adapter
        self.name = name or f"vllm:{model}"

    def _lora(self):
        if not self.adapter:
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest("adapter", 1, self.adapter)

    def complete(self, chats: list[Chat], params: SamplingParams) -> list[str]:
        from vllm import SamplingParams as VSP

        sp = VSP(
            max_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=params.seed,
            stop=params.stop or None,
        )
        outs = self.llm.chat(chats, sp, lora_request=self._lora(), use_tqdm=False)
        return [apply_stops(o.outputs[0].text, params.stop).strip() for o in outs]

    def next_token_logprobs(self, chats: list[Chat], top_k: int = 20) -> list[dict[str, float]]:
        from vllm import SamplingParams as VSP

        outs = self.llm.chat(
            chats, VSP(max_tokens=1, temperature=0, logprobs=top_k), lora_request=self._lora(), use_tqdm=False
        )
        return [{lp.decoded_token.strip(): lp.logprob for lp in o.outputs[0].logprobs[0].values()} for o in outs]
