"""Local transformers backend: one left-padded batched ``generate`` per chunk.

Batching is the whole point on CPU: 16 prompts in one batch run ~4x faster
than one at a time (see ``bench/generation.py``). On a CPU each row's prompt is also
prefilled only past the longest prefix an earlier prompt shared (``prefix_cache``:
dialogue turns and one persona's prompts repeat most of their tokens; ``bench/prefix_cache.py``).
"""

from __future__ import annotations

import contextlib
import math

import torch

from . import prefix_cache as pc
from .base import Chat, SamplingParams, apply_stops


class LocalBackend:
    def __init__(self, model, tokenizer, name: str = "local", batch_size: int = 32, prefix_cache: bool | None = None):
        """``prefix_cache``: reuse prompt prefixes' key/value states (None: on a CPU, where prefill dominates)."""
        self.model, self.tok, self.name, self.batch_size = model, tokenizer, name, batch_size
        self.tok.padding_side = "left"
        self._steers: list = []
        on = self.device.type == "cpu" if prefix_cache is None else prefix_cache
        self.prefix = pc.PrefixStore() if on else None

    @classmethod
    def from_pretrained(
        cls, base, adapter=None, name: str | None = None, batch_size: int = 32, opts=None, prefix_cache=None
    ):
        from ..modelio import LoadOptions, load_model

        model, tok = load_model(base, adapter, opts or LoadOptions())
        return cls(model, tok, name=name or str(base), batch_size=batch_size, prefix_cache=prefix_cache)

    @contextlib.contextmanager
    def steered(self, steers: list):
        """Generate with ``hooks.Steer`` interventions for every call inside the block."""
        previous, self._steers = self._steers, list(steers)
        try:
            yield self
        finally:
            self._steers = previous

    def steering(self, idx: list[int] | None = None):
        """The active steers for the chunk holding rows ``idx`` of the caller's batch."""
        from ..hooks import steering

        if not self._steers:
            return contextlib.nullcontext()
        return steering(self.model, [s.rows(idx) if idx is not None else s for s in self._steers])

    @property
    def device(self):
        return next(self.model.parameters()).device

    def _encode(self, chats: list[Chat]):
        texts = [self.tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
        return self.tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)

    def token_ids(self, chat: Chat) -> list[int]:
        """The prompt's token ids as generation sees them (chat template, generation prompt, no padding)."""
        return self._encode([chat])["input_ids"][0].tolist()

    def _chunks(self, chats: list[Chat]):
        # Sort by length so each chunk pads little; restore order afterwards.
        order = sorted(range(len(chats)), key=lambda i: sum(len(m["content"]) for m in chats[i]))
        for start in range(0, len(order), self.batch_size):
            yield order[start : start + self.batch_size]

    @torch.inference_mode()
    def complete(self, chats: list[Chat], params: SamplingParams) -> list[str]:
        out: list[str] = [""] * len(chats)
        new = self.generate_ids(chats, self._gen_kwargs(params), params.seed)
        for i, ids in enumerate(new):
            out[i] = apply_stops(self.tok.decode(ids, skip_special_tokens=True), params.stop).strip()
        return out

    def _gen_kwargs(self, params: SamplingParams) -> dict:
        sample = params.temperature > 0
        kw = dict(  # noqa: C408 - reads as generate()'s keyword list
            max_new_tokens=params.max_new_tokens,
            do_sample=sample,
            pad_token_id=self.tok.pad_token_id,
            eos_token_id=self.tok.eos_token_id,
        )
        if params.repetition_penalty != 1.0:
            kw["repetition_penalty"] = params.repetition_penalty
        if sample:
            kw.update(temperature=params.temperature, top_p=params.top_p)
        else:
            kw.update(temperature=None, top_p=None, top_k=None)
        return kw

    @torch.inference_mode()
    def generate_ids(self, chats: list[Chat], gen_kwargs: dict, seed: int | None = None) -> list[list[int]]:
        """The new token ids per chat, in order (padding after an end token included, as generate returns it)."""
        out: list[list[int]] = [[] for _ in chats]
        if seed is not None:
            torch.manual_seed(seed)
        for idx in self._chunks(chats):
            rows = [chats[i] for i in idx]
            spaces = self._namespaces(idx)
            if spaces is not None:
                new = self._generate_cached(idx, rows, spaces, gen_kwargs)
            else:
                enc = self._encode(rows)
                with self.steering(idx):
                    new = self.model.generate(**enc, **gen_kwargs)[:, enc["input_ids"].shape[1] :]
            for i, ids in zip(idx, new):
                out[i] = ids.tolist()
        return out

    def _namespaces(self, idx: list[int]) -> list[str] | None:
        """Per row, the prefix-cache key of its steering; None: this chunk is generated without the cache."""
        if self.prefix is None:
            return None
        spaces = [pc.steer_namespace([s.rows([i]) for s in self._steers]) for i in idx]
        return None if any(ns is None for ns in spaces) else spaces

    def _generate_cached(self, idx: list[int], rows: list[Chat], spaces: list[str], gen_kwargs: dict) -> list:
        """Generate with each row's longest cached prefix: only the uncached tokens are prefilled, all rows in one
        call (two when a few cold rows would make the warm ones pad to their length); the prompts are stored."""
        ids = [tuple(self.token_ids(c)) for c in rows]
        found = [self.prefix.longest(ns, x[:-1]) for ns, x in zip(spaces, ids)]  # ≥ 1 token left to prefill
        out: list = [None] * len(rows)
        for part in pc.split_by_new_tokens([len(x) - n for x, (n, _) in zip(ids, found)]):
            batch = pc.assemble([ids[j] for j in part], [found[j] for j in part], self.tok.pad_token_id, self.device)
            with self.steering([idx[j] for j in part]):
                gen = self.model.generate(
                    input_ids=batch.input_ids, attention_mask=batch.mask, cache=batch.cache, **gen_kwargs
                )
            for r, (j, kv) in enumerate(zip(part, pc.prompt_states(batch, len(part)))):
                self.prefix.put(spaces[j], ids[j], kv)
                self.prefix.reused_tokens += found[j][0]
                self.prefix.computed_tokens += len(ids[j]) - found[j][0]
                out[j] = gen[r, batch.width :]
        return out

    @torch.inference_mode()
    def next_token_logprobs(self, chats: list[Chat], top_k: int = 20) -> list[dict[str, float]]:
        out: list[dict[str, float]] = [{}] * len(chats)
        for idx in self._chunks(chats):
            enc = self._encode([chats[i] for i in idx])
            with self.steering(idx):
                logits = self.model(**enc, logits_to_keep=1).logits[:, -1, :].float()  # not the whole vocab × seq
            logp = torch.log_softmax(logits, dim=-1)
            vals, toks = logp.topk(top_k, dim=-1)
            for row, i in enumerate(idx):
                d: dict[str, float] = {}
                for v, t in zip(vals[row].tolist(), toks[row].tolist()):
                    key = self.tok.decode([t]).strip()
                    d[key] = float(math.log(math.exp(d[key]) + math.exp(v))) if key in d else v
                out[i] = d
        return out
