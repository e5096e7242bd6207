"""Models group: the policy base model (later issues add the adapters)."""

import os
from pathlib import Path

import dagster as dg

from ..modelio import EMBEDDED, convert_embedded, default_base_dir
from ..settings import home

GROUP = "models"


class BaseModelConfig(dg.Config):
    """``embedded`` converts the shipped SmolLM2 GGUF; otherwise an HF model id or a local folder.

    Defaults to ``PERSONA_POLICY_MODEL`` so the base and the policy resource agree.
    """

    model: str = os.environ.get("PERSONA_POLICY_MODEL", EMBEDDED)


def _describe_remote(model: str) -> dict:
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model)
    return {"path": model, "layers": cfg.num_hidden_layers, "hidden_size": cfg.hidden_size,
            "dtype": str(getattr(cfg, "torch_dtype", None) or getattr(cfg, "dtype", "auto")), "cache_hit": True}


@dg.asset(group_name=GROUP, kinds={"pytorch", "safetensors"},
          description="The policy base model as a local HF folder (embedded: SmolLM2-135M-Instruct GGUF → fp32 safetensors, once).")
def base_model(context: dg.AssetExecutionContext, config: BaseModelConfig) -> dict:
    if config.model == EMBEDDED:
        dest = default_base_dir(home())
        manifest = {**convert_embedded(dest), "path": str(dest)}
    elif Path(config.model).exists():
        manifest = {**_describe_remote(str(Path(config.model).resolve())), "path": str(Path(config.model).resolve())}
    else:
        manifest = _describe_remote(config.model)
    context.add_output_metadata({
        k: v for k, v in manifest.items() if k in ("params", "layers", "hidden_size", "dtype", "cache_hit", "source_sha256")
    } | {"location": dg.MetadataValue.path(manifest["path"])})
    return manifest
