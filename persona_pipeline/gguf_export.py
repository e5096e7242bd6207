"""Steering directions as GGUF control vectors, for llama.cpp and repeng.

Layout (what llama.cpp's ``--control-vector`` and repeng's ``ControlVector.import_gguf`` read):
``general.architecture = "controlvector"``, ``controlvector.model_hint`` (the model type,
e.g. ``llama``), ``controlvector.layer_count``, and one 1-D float32 tensor ``direction.<layer>``
per layer. ``<layer>`` is the 0-based decoder layer whose output the vector is added to, which
is what our hooks mean by a layer (``hooks.py``). llama.cpp keeps no slot for layer 0, so a
direction for layer 0 is left out and reported. Our own keys (``persona_pipeline.*``) add the
source, the layer list and the per-layer norms; both readers ignore keys they do not know.

The inputs are the pipeline's own artifacts: the asset values (layers, paths) stored by the
IO manager under ``<home>/assets`` and the ``.safetensors`` they point to. Nothing here
imports torch, so exporting is cheap and safe next to a running pipeline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .layout import layout
from .storage import atomic_path

ARCH = "controlvector"


@dataclass
class Exported:
    name: str
    path: Path
    source: Path
    layers: list[int]
    norms: list[float]
    skipped_layers: list[int]

    def summary(self) -> dict:
        return {
            "name": self.name,
            "gguf": str(self.path),
            "from": str(self.source),
            "layers": self.layers,
            "norms": [round(n, 4) for n in self.norms],
            "skipped_layers": self.skipped_layers,
        }


def write_control_vector(
    path: Path, directions: dict[int, np.ndarray], model_hint: str, source: str = ""
) -> tuple[list[int], list[float], list[int]]:
    """Write ``{layer: [hidden]}`` as a control-vector GGUF, atomically. Returns (layers, norms, skipped)."""
    import gguf

    skipped = sorted(layer for layer in directions if layer <= 0)
    layers = sorted(layer for layer in directions if layer > 0)
    if not layers:
        raise ValueError(f"{path}: no direction for a layer >= 1 (llama.cpp has no slot for layer 0)")
    vectors = {layer: np.ascontiguousarray(directions[layer], dtype=np.float32).reshape(-1) for layer in layers}
    sizes = {v.shape[0] for v in vectors.values()}
    if len(sizes) != 1:
        raise ValueError(f"{path}: directions differ in size {sorted(sizes)}")
    if not all(np.isfinite(v).all() for v in vectors.values()):
        raise ValueError(f"{path}: a direction holds NaN or infinity")
    norms = [float(np.linalg.norm(vectors[layer])) for layer in layers]
    with atomic_path(Path(path)) as tmp:
        writer = gguf.GGUFWriter(str(tmp), ARCH)
        writer.add_string(f"{ARCH}.model_hint", model_hint)
        writer.add_uint32(f"{ARCH}.layer_count", len(layers))
        writer.add_string("persona_pipeline.source", source)
        writer.add_array("persona_pipeline.layers", layers)
        writer.add_array("persona_pipeline.norms", norms)
        for layer in layers:
            writer.add_tensor(f"direction.{layer}", vectors[layer])
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return layers, norms, skipped


def read_control_vector(path: Path) -> tuple[str, dict[int, np.ndarray]]:
    """(model hint, {layer: direction}) read back with gguf's own reader; refuses a non-control-vector file."""
    import gguf

    reader = gguf.GGUFReader(str(path))

    def text(key: str) -> str:
        field = reader.get_field(key)
        if field is None:
            raise ValueError(f"{path}: missing GGUF field {key}")
        return bytes(field.parts[-1]).decode("utf-8")

    if text("general.architecture") != ARCH:
        raise ValueError(f"{path}: not a control vector (general.architecture != {ARCH!r})")
    directions = {
        int(t.name.split(".", 1)[1]): np.array(t.data) for t in reader.tensors if t.name.startswith("direction.")
    }
    count = int(reader.get_field(f"{ARCH}.layer_count").parts[-1][0])
    if count != len(directions):
        raise ValueError(f"{path}: layer_count {count} but {len(directions)} direction tensors")
    return text(f"{ARCH}.model_hint"), directions


def model_hint(home: Path) -> str:
    """The base model's ``model_type`` (``llama`` for SmolLM2), which both readers use as a hint."""
    config = layout(home).base_model / "config.json"
    return json.loads(config.read_text())["model_type"] if config.exists() else "llama"


def _tensor(path: Path, key: str) -> np.ndarray:
    from safetensors.numpy import load_file

    tensors = load_file(str(path))
    if key not in tensors:
        raise ValueError(f"{path}: no tensor {key!r} (has {sorted(tensors)})")
    return tensors[key]


def _per_layer(matrix: np.ndarray, layers: list[int], path: Path) -> dict[int, np.ndarray]:
    if matrix.ndim != 2 or matrix.shape[0] != len(layers):
        raise ValueError(f"{path}: expected [{len(layers)} layers x hidden], got {list(matrix.shape)}")
    return {layer: matrix[i] for i, layer in enumerate(layers)}


def sources(home: Path) -> list[tuple[str, Path, dict[int, np.ndarray]]]:
    """(name, safetensors file, {layer: direction}) for every vector the pipeline has produced so far."""
    assets, found = layout(home).assets, []
    for value_file in sorted((assets / "persona_vectors").glob("*.json")):
        v = json.loads(value_file.read_text())
        path = Path(v["path"])
        for key, suffix in (("mean_diff_response_avg", ""), ("svd_response_avg", ".svd")):
            found.append((f"{v['trait']}{suffix}", path, _per_layer(_tensor(path, key), v["layers"], path)))
    for value_file in sorted((assets / "cmaes_steering").glob("*.json")):
        v = json.loads(value_file.read_text())
        if not v.get("searched", True):  # a persona the profile did not search has no direction
            continue
        path = Path(v["path"])
        found.append((f"persona-{v['persona_id']}", path, {int(v["layer"]): _tensor(path, "vector")}))
    space = assets / "persona_space.json"
    if space.exists():
        v = json.loads(space.read_text())
        path = Path(v["axis_path"])
        found.append(("assistant_axis", path, _per_layer(_tensor(path, "axis"), v["layers"], path)))
    return found


def export_all(home: Path) -> list[Exported]:
    """Write ``<name>.gguf`` next to each vector's ``.safetensors``."""
    hint, out = model_hint(home), []
    for name, src, directions in sources(home):
        dest = src.with_name(f"{name}.gguf")
        layers, norms, skipped = write_control_vector(dest, directions, hint, source=str(src))
        out.append(Exported(name, dest, src, layers, norms, skipped))
    return out
