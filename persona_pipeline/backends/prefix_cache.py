"""Prefix KV caching for local generation: a prompt is prefilled only past what an earlier prompt shared.

A dialogue re-sends its whole history every turn, and every prompt of one persona starts
with the same system definition (~300 tokens on the embedded model). On a CPU, generation
of short lines is prefill-bound, so re-reading that prefix is most of the cost. This keeps
the key/value states of recent prompts (the idea of vLLM's automatic prefix caching, at the
scale of one process): each row is prefilled alone on top of the longest cached prefix of
its own token ids, then all rows decode together in one batch, their caches left-padded to
one length (padding masked; positions follow the attention mask, as for left-padded prompts).

A cache is only valid for the weights and the steering that produced it: entries live in one
backend (one set of weights), and a row steered by a vector is keyed by that vector too.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import torch

Kv = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys and values [1, heads, tokens, head_dim]


@dataclass
class _Entry:
    ids: tuple[int, ...]
    kv: Kv


def shared_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """Length of the common token prefix of ``a`` and ``b``."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PrefixStore:
    """The key/value states of recent prompt prefixes, least recently used evicted past ``max_tokens``."""

    def __init__(self, max_tokens: int = 16384, min_shared: int = 8):
        self.max_tokens, self.min_shared = max_tokens, min_shared
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self.reused_tokens = self.computed_tokens = 0

    def longest(self, namespace: str, ids: tuple[int, ...]) -> tuple[int, Kv | None]:
        """(shared length, states) of the entry sharing the longest prefix with ``ids`` (0, None below min_shared)."""
        best, kv, best_key = 0, None, None
        for key, e in self._entries.items():
            if key[0] == namespace:
                n = shared_prefix(e.ids, ids)
                if n > best:
                    best, kv, best_key = n, e.kv, key
        if best < self.min_shared:
            return 0, None
        self._entries.move_to_end(best_key)
        return best, kv

    def put(self, namespace: str, ids: tuple[int, ...], kv: Kv) -> None:
        key = (namespace, ids)
        self._entries[key] = _Entry(ids, kv)
        self._entries.move_to_end(key)
        while sum(len(e.ids) for e in self._entries.values()) > self.max_tokens and len(self._entries) > 1:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


def steer_namespace(steers: list) -> str | None:
    """A key for the steering applied to one row ('' unsteered); None when a cache cannot be reused under it
    (a steer limited to prompt or response positions tells those apart by the pass, which caching changes)."""
    if not steers:
        return ""
    if any(s.positions != "all" for s in steers):
        return None
    h = hashlib.sha1()
    for s in steers:
        coef = s.coef.float().cpu().numpy().tobytes() if isinstance(s.coef, torch.Tensor) else repr(s.coef).encode()
        h.update(f"{s.layer}|{s.mode}|{s.threshold}|{s.cap_below}|".encode() + coef)
        h.update(s.vector.float().cpu().numpy().tobytes())
    return h.hexdigest()


def split_by_new_tokens(new: list[int], call_cost: int = 256) -> list[list[int]]:
    """Rows (indices into ``new``, the uncached token count per row) in at most two generate calls.

    Rows prefill together padded to the longest uncached part, so one cold row (a whole prompt)
    among warm ones (a few new tokens each) would make every row pay for it; a second call costs
    about ``call_cost`` token-forwards of extra decoding. Pick whichever is cheaper."""
    order = sorted(range(len(new)), key=lambda i: new[i])
    m = [new[i] for i in order]
    best, cut = len(m) * m[-1], len(m)
    for k in range(1, len(m)):
        cost = k * m[k - 1] + (len(m) - k) * m[-1] + call_cost
        if cost < best:
            best, cut = cost, k
    return [part for part in (order[:cut], order[cut:]) if part]


@dataclass
class Batch:
    """One generate call's inputs: per row ``[pad | cached ids | pad | new ids]``, the cache covering the first
    ``cached`` columns; the mask hides every pad, so positions (cumsum of the mask) run on across the gap."""

    input_ids: torch.Tensor
    mask: torch.Tensor
    cache: object
    cached: int

    @property
    def width(self) -> int:
        return self.input_ids.shape[1]


def assemble(ids: list[tuple[int, ...]], found: list[tuple[int, Kv | None]], pad: int, device) -> Batch:
    """The ``Batch`` for prompts ``ids`` whose first ``found[i][0]`` tokens have cached states ``found[i][1]``."""
    from transformers import DynamicCache

    cached = max(n for n, _ in found)
    new = max(len(x) - n for x, (n, _) in zip(ids, found))
    rows, masks = [], []
    for x, (n, _) in zip(ids, found):
        gap_a, gap_b = cached - n, new - (len(x) - n)
        rows.append([pad] * gap_a + list(x[:n]) + [pad] * gap_b + list(x[n:]))
        masks.append([0] * gap_a + [1] * n + [0] * gap_b + [1] * (len(x) - n))
    cache = DynamicCache()
    if cached:
        layers = len(next(kv for _, kv in found if kv))
        cache = DynamicCache(
            ddp_cache_data=[
                (
                    _stack([kv[i][0] if kv else None for _, kv in found], found, cached),
                    _stack([kv[i][1] if kv else None for _, kv in found], found, cached),
                )
                for i in range(layers)
            ]
        )
    return Batch(torch.tensor(rows, device=device), torch.tensor(masks, device=device), cache, cached)


def _stack(tensors: list[torch.Tensor | None], found: list[tuple[int, Kv | None]], length: int) -> torch.Tensor:
    """Rows' states cut to their shared length and left-padded with zeros to ``length`` (rows without any: zeros)."""
    ref = next(t for t in tensors if t is not None)
    out = ref.new_zeros((len(tensors), ref.shape[1], length, ref.shape[3]))
    for r, (t, (n, _)) in enumerate(zip(tensors, found)):
        if n:
            out[r, :, length - n :] = t[0, :, :n]
    return out


def prompt_states(batch: Batch, rows: int) -> list[Kv]:
    """After generate: each row's states for its real prompt tokens (the pads dropped), to store."""
    prompt = batch.mask[:, : batch.width]
    out = []
    for r in range(rows):
        real = prompt[r].nonzero().squeeze(-1)
        out.append([(layer.keys[r : r + 1, :, real], layer.values[r : r + 1, :, real]) for layer in batch.cache.layers])
    return out
