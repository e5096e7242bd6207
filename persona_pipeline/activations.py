"""Per-layer activations of (prompt, response) pairs, all layers in one forward pass per batch.

For every item we keep three views of the residual stream after each decoder
layer, as in the persona-vectors work: the mean over response tokens, the mean
over prompt tokens, and the last prompt token. Right padding keeps the
prompt/response boundary at the same index as in the unpadded text.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .hooks import capture, decoder_layers

VIEWS = ("response_avg", "prompt_avg", "prompt_last")


@dataclass
class Item:
    chat: list[dict]  # system/user messages: the prompt
    response: str


def _encode(tok, item: Item) -> tuple[list[int], int]:
    prompt = tok.apply_chat_template(item.chat, tokenize=False, add_generation_prompt=True)
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    r_ids = tok(item.response, add_special_tokens=False)["input_ids"]
    return p_ids + r_ids, len(p_ids)


def middle_layers(n_layers: int, k: int = 1) -> list[int]:
    mid = n_layers // 2
    return list(range(max(0, mid - k // 2), min(n_layers, mid - k // 2 + k)))


def _forward(model, tok, encoded: list[tuple[list[int], int]], layers: list[int]) -> torch.Tensor:
    """One right-padded forward pass capturing ``layers``: [batch, seq, layers, hidden] (float32, CPU)."""
    device = next(model.parameters()).device
    width = max(len(ids) for ids, _ in encoded)
    pad = tok.pad_token_id
    input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in encoded], device=device)
    mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in encoded], device=device)
    with read_layers(model, layers) as store:
        model(input_ids=input_ids, attention_mask=mask, logits_to_keep=1)  # the residual stream is all we read
    return torch.stack([store[layer][0] for layer in layers], dim=2).float().cpu()


@contextlib.contextmanager
def read_layers(model, layers: list[int]):
    """Capture ``layers`` (yields the hooks' store) and end a forward pass run inside the block once the
    last of them has run: the pass stops there, quietly, and the layers above cost nothing."""
    with capture(model, layers) as store, _stop_after(model, max(layers)):
        try:
            yield store
        except _Captured:
            pass


class _Captured(Exception):
    """Raised by the hook on the last wanted layer: the layers above it would be computed for nothing."""


@contextlib.contextmanager
def _stop_after(model, layer: int):
    """End the forward pass once ``layer`` has run (a mid-layer read costs about half a full pass)."""
    blocks = decoder_layers(model)
    if layer >= len(blocks) - 1:
        yield
        return

    def stop(_m, _i, _o):
        raise _Captured

    handle = blocks[layer].register_forward_hook(stop)
    try:
        yield
    finally:
        handle.remove()


@torch.inference_mode()
def extract(
    model, tok, items: list[Item], layers: list[int] | None = None, batch_size: int = 16, response_agg: str = "mean"
) -> dict[str, torch.Tensor]:
    """{view: float32 tensor [items, layers, hidden]}; ``response_agg`` is mean | last | none.

    ``none`` keeps every response token and returns ``response_tokens``
    [total response tokens, layers, hidden] plus ``response_owner`` [tokens].
    """
    if response_agg not in ("mean", "last", "none"):
        raise ValueError(f"response_agg={response_agg!r}: use mean, last or none")
    layers = list(range(len(decoder_layers(model)))) if layers is None else layers
    encoded = [_encode(tok, it) for it in items]
    order = sorted(range(len(items)), key=lambda i: len(encoded[i][0]))  # similar lengths share a batch: less padding
    views: dict[str, dict[int, torch.Tensor]] = {v: {} for v in VIEWS}
    tokens, owners = [], []
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        hidden = _forward(model, tok, [encoded[i] for i in batch], layers)
        for row, i in enumerate(batch):
            (ids, p_len), h = encoded[i], hidden[row]
            views["prompt_avg"][i] = h[:p_len].mean(0)
            views["prompt_last"][i] = h[p_len - 1]
            resp = h[p_len : len(ids)] if len(ids) > p_len else h[p_len - 1 : p_len]
            views["response_avg"][i] = resp.mean(0) if response_agg != "last" else resp[-1]
            if response_agg == "none":
                tokens.append(resp)
                owners += [i] * len(resp)
    out = {v: torch.stack([t[i] for i in range(len(items))]) for v, t in views.items()}
    if response_agg == "none":
        out["response_tokens"] = torch.cat(tokens)
        out["response_owner"] = torch.tensor(owners)
    return out


def layer_norms(acts: torch.Tensor) -> list[float]:
    """Typical residual norm per layer ([n, layers, hidden] → [layers]): the scale for relative steering coefs."""
    return [round(float(x), 4) for x in acts.float().norm(dim=-1).mean(0)]


def save(folder, tensors: dict[str, torch.Tensor], index: list[dict]) -> None:
    """``activations.safetensors`` + ``index.parquet`` (one row per item), swapped in together as one folder.

    A failed or killed write leaves the previous pair, never new tensors beside an old index.
    """
    from pathlib import Path

    import pyarrow.parquet as pq
    from safetensors.torch import save_file

    from .storage import atomic_path, records_table

    with atomic_path(Path(folder)) as tmp:
        tmp.mkdir()
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "activations.safetensors"))
        pq.write_table(records_table(index), tmp / "index.parquet")


def load(folder) -> tuple[dict[str, torch.Tensor], list[dict]]:
    from pathlib import Path

    from safetensors.torch import load_file

    from .storage import read_records

    folder = Path(folder)
    return load_file(str(folder / "activations.safetensors")), read_records(folder / "index.parquet")


def spread_layers(n_layers: int, k: int) -> list[int]:
    """``k`` layers evenly spaced over the middle half of the network (where persona directions live)."""
    lo, hi = n_layers // 4, (3 * n_layers) // 4
    if k <= 1:
        return [n_layers // 2]
    return sorted({round(lo + i * (hi - lo) / (k - 1)) for i in range(k)})


def parse_layers(spec: str, n: int) -> list[int]:
    """``all`` | ``middle`` | comma-separated indices → layer indices of an ``n``-layer model."""
    if spec == "all":
        return list(range(n))
    if spec == "middle":
        return [n // 2]
    try:
        layers = [int(x) for x in spec.split(",")]
    except ValueError:
        raise ValueError(f"config layers={spec!r}: use all, middle or comma-separated integers") from None
    if any(not 0 <= x < n for x in layers):
        raise ValueError(f"config layers={spec!r}: the model has layers 0..{n - 1}")
    return layers


def _chat_item(r: dict) -> Item:
    return Item(
        [{"role": "system", "content": r["system_prompt"]}, {"role": "user", "content": r["question"]}], r["response"]
    )


def activation_items(role_rows: list[dict], trait_rows: list[dict]) -> tuple[list[Item], list[dict]]:
    """The same texts for every checkpoint: role rollouts then trait answers, with a joinable index."""
    items = [_chat_item(r) for r in [*role_rows, *trait_rows]]
    index = [
        {
            "source": "role",
            "name": r["role"],
            "polarity": "",
            "prompt_idx": r["system_prompt_idx"],
            "question_idx": r["question_idx"],
            "sample_idx": r["rollout_idx"],
            "score": r.get("score"),
        }
        for r in role_rows
    ] + [
        {
            "source": "trait",
            "name": r["trait"],
            "polarity": r["polarity"],
            "prompt_idx": r["instruction_idx"],
            "question_idx": r["question_idx"],
            "sample_idx": r["sample_idx"],
            "score": r.get("trait_score"),
        }
        for r in trait_rows
    ]
    return items, index


def checkpoint(manifests: dict, key: str) -> tuple[dict[str, torch.Tensor], list[dict], dict]:
    """(tensors, index, manifest) of one captured checkpoint; a clear error if it was never captured."""
    if key not in manifests:
        raise ValueError(f"activations[{key}] is not materialised; materialise that checkpoint first")
    tensors, index = load(manifests[key]["path"])
    return tensors, index, manifests[key]


def layer_position(layers: list[int], layer: int | None) -> tuple[int, int]:
    """(layer index in the model, position in the stored tensor); default: the middle captured layer."""
    layer = layers[len(layers) // 2] if layer is None else layer
    if layer not in layers:
        raise ValueError(f"config layer={layer}: activations hold layers {layers}")
    return layer, layers.index(layer)
