"""One steering vector as a value: a direction per captured layer, the layer list, and each layer's
typical residual norm — the shape of repeng's ``ControlVector``.

Steering strength is relative: ``push(layer, rel)`` is ``rel × layer_norm × unit direction``, so the
same ``rel`` means the same share of the residual stream at every depth (norms grow with depth).
Every sweep, baseline and evaluation push goes through here instead of re-deriving that formula.

On disk nothing changes: the tensors stay in the stage's ``.safetensors`` file ([layers × hidden] per
view) and the layer list and norms in the asset's JSON manifest (``path``, ``layers``,
``layer_norms``); :meth:`ControlVector.load` reads that pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .hooks import relative_coef


def push(direction: torch.Tensor, rel: float, layer_norm: float) -> torch.Tensor:
    """``rel × layer_norm × direction / ‖direction‖``: a push of ``rel`` times the layer's typical norm."""
    return relative_coef(rel, layer_norm, direction) * direction


@dataclass(frozen=True)
class ControlVector:
    directions: torch.Tensor  # [len(layers), hidden]
    layers: list[int]  # model layer indices, in the order of ``directions``' rows
    layer_norms: list[float]  # typical residual norm at each of ``layers``

    def __post_init__(self):
        if not (len(self.layers) == len(self.layer_norms) == self.directions.shape[0]):
            raise ValueError(
                f"control vector: {self.directions.shape[0]} directions, {len(self.layers)} layers, "
                f"{len(self.layer_norms)} layer norms — they must match"
            )

    @classmethod
    def load(cls, manifest: dict, name: str = "mean_diff_response_avg") -> ControlVector:
        """The ``name`` view of a persona-vector manifest (``path``, ``layers``, ``layer_norms``)."""
        from .vectors import load_tensors

        tensors = load_tensors(manifest["path"])
        if name not in tensors:
            raise ValueError(f"config vector={name!r}: {manifest['path']} holds {sorted(tensors)}")
        return cls(tensors[name], list(manifest["layers"]), list(manifest["layer_norms"]))

    def _row(self, layer: int) -> int:
        if layer not in self.layers:
            raise ValueError(f"layer {layer}: this vector was captured at layers {self.layers}")
        return self.layers.index(layer)

    def direction(self, layer: int) -> torch.Tensor:
        """The raw direction at model layer ``layer`` ([hidden], not normalised)."""
        return self.directions[self._row(layer)]

    def layer_norm(self, layer: int) -> float:
        return self.layer_norms[self._row(layer)]

    def push(self, layer: int, rel: float) -> torch.Tensor:
        """The vector to add at ``layer`` for a push of ``rel`` × that layer's typical residual norm."""
        return push(self.direction(layer), rel, self.layer_norm(layer))

    def at(self, layers: list[int]) -> tuple[dict[int, torch.Tensor], dict[int, float]]:
        """({layer: direction}, {layer: layer norm}) for ``layers``: what a batched sweep steers with."""
        return {x: self.direction(x) for x in layers}, {x: self.layer_norm(x) for x in layers}
