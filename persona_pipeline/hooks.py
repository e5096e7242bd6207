"""Activation capture and steering as context managers over decoder-layer forward hooks.

Hooks sit on the decoder layers' outputs (the residual stream after layer L;
``output_hidden_states[L + 1]``). transformers 5 layers return a Tensor, older
ones a tuple whose first element is the hidden state — both are handled.

Steering modes: ``add`` (h + c·v), ``ablate`` (remove the component along v),
``cap`` (clamp the projection on v̂ to at least / at most a threshold, the
Assistant Axis paper's capping). Positions: ``prompt`` (the prefill pass),
``response`` (generated tokens, one per cached decoding step) or ``all``.

Per-row steering: ``vector`` may be [batch, hidden] and ``coef`` a [batch]
tensor, so one batched ``generate`` can evaluate a whole sweep (layers ×
coefs) or a CMA-ES population at once; ``Steer.rows`` slices them per chunk.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch


def decoder_layers(model) -> list[torch.nn.Module]:
    """The decoder layer list of a (PEFT-wrapped) causal LM."""
    inner = model
    for attr in ("base_model", "model"):  # PeftModel → LoraModel → *ForCausalLM
        while hasattr(inner, attr) and not hasattr(inner, "layers"):
            nxt = getattr(inner, attr)
            if nxt is inner:
                break
            inner = nxt
    if not hasattr(inner, "layers"):
        raise TypeError(f"cannot find decoder layers in {type(model).__name__}")
    return list(inner.layers)


def _hidden(output):
    return output[0] if isinstance(output, tuple) else output


def _replace(output, hidden):
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


@contextlib.contextmanager
def capture(model, layers: list[int] | None = None) -> Iterator[dict[int, list[torch.Tensor]]]:
    """Record every requested layer's output in ONE forward pass: {layer: [tensor per call]}."""
    all_layers = decoder_layers(model)
    wanted = list(range(len(all_layers))) if layers is None else layers
    store: dict[int, list[torch.Tensor]] = {i: [] for i in wanted}
    handles = [
        all_layers[i].register_forward_hook(lambda _m, _i, out, i=i: store[i].append(_hidden(out).detach()))
        for i in wanted
    ]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


Mode = Literal["add", "ablate", "cap"]
Positions = Literal["all", "prompt", "response"]


@dataclass
class Steer:
    vector: torch.Tensor  # [hidden], or [batch, hidden] for one vector per row
    layer: int
    coef: float | torch.Tensor = 0.0  # a number, or [batch] for one coefficient per row
    mode: Mode = "add"
    positions: Positions = "all"
    threshold: float | None = None  # cap: the bound on the projection onto v̂
    cap_below: bool = True  # cap: keep the projection ≥ threshold (else ≤)

    def rows(self, idx: list[int]) -> Steer:
        """This steer restricted to batch rows ``idx`` (shared vectors and coefs pass through)."""
        vector = self.vector[idx] if self.vector.dim() == 2 else self.vector
        coef = self.coef[idx] if isinstance(self.coef, torch.Tensor) and self.coef.dim() == 1 else self.coef
        return dataclasses.replace(self, vector=vector, coef=coef)

    def apply(self, h: torch.Tensor) -> torch.Tensor:
        v = self.vector.to(h.dtype).to(h.device)
        v = v.unsqueeze(1) if v.dim() == 2 else v  # [b, 1, h] or [h]
        if self.mode == "add":
            coef = (
                self.coef.to(h.dtype).to(h.device).view(-1, 1, 1) if isinstance(self.coef, torch.Tensor) else self.coef
            )
            return h + coef * v
        unit = v / v.norm(dim=-1, keepdim=True)
        proj = (h * unit).sum(-1)  # [batch, seq]
        if self.mode == "ablate":
            return h - proj.unsqueeze(-1) * unit
        if self.threshold is None:
            raise ValueError("cap steering needs a threshold")
        target = proj.clamp(min=self.threshold) if self.cap_below else proj.clamp(max=self.threshold)
        return h + (target - proj).unsqueeze(-1) * unit


def relative_coef(rel: float, layer_norm: float, vector: torch.Tensor) -> float:
    """Coefficient giving a push of ``rel`` × the layer's typical residual norm (norms grow with depth)."""
    return rel * layer_norm / float(vector.norm())


@contextlib.contextmanager
def steering(model, steers: list[Steer]):
    """Apply ``steers`` to the decoder layers while the context is open (generate or forward)."""
    layers = decoder_layers(model)

    def hook(steer: Steer):
        def fn(_m, _i, out):
            h = _hidden(out)
            prefill = h.shape[1] > 1
            if steer.positions == "prompt" and not prefill or steer.positions == "response" and prefill:
                return out
            return _replace(out, steer.apply(h))

        return fn

    handles = [layers[s.layer].register_forward_hook(hook(s)) for s in steers]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
