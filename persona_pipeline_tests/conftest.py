"""Shared fixtures: a tiny random Llama for unit tests, the real embedded model for integration.

The embedded model is converted once per machine into ``.persona_home`` (the
same cache ``make demo`` uses), so only the first test run pays the ~30 s.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# exact, batch-invariant greedy output (some tests compare batched with single); the demo profile runs bf16
os.environ.setdefault("PERSONA_PIPELINE_CPU_DTYPE", "float32")


@pytest.fixture(scope="session")
def shared_home() -> Path:
    """The machine-wide artifact cache (converted base model lives here)."""
    return Path(os.environ.get("PERSONA_PIPELINE_HOME", REPO / ".persona_home")).resolve()


@pytest.fixture(scope="session")
def embedded_dir(shared_home) -> Path:
    from persona_pipeline.modelio import convert_embedded, default_base_dir

    dest = default_base_dir(shared_home)
    convert_embedded(dest)
    return dest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, embedded_dir) -> Path:
    """A 2-layer random Llama with the real tokenizer and chat template: fast and deterministic."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(embedded_dir)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(cfg)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_backend(tiny_model_dir):
    from persona_pipeline.backends.local import LocalBackend

    return LocalBackend.from_pretrained(tiny_model_dir, name="tiny", batch_size=8)


@pytest.fixture(scope="session")
def embedded_backend(embedded_dir):
    from persona_pipeline.backends.local import LocalBackend

    return LocalBackend.from_pretrained(embedded_dir, name="smollm2-135m-instruct", batch_size=16)


@pytest.fixture()
def artifacts(tmp_path, request):
    """Where a test saves screenshots; copied to $PERSONA_TEST_ARTIFACTS/<module> at the end when set."""
    import shutil

    out = tmp_path / "test-artifacts"
    out.mkdir()
    yield out
    extra = os.environ.get("PERSONA_TEST_ARTIFACTS")
    if extra:
        dest = Path(extra) / request.module.__name__.removeprefix("test_")
        dest.mkdir(parents=True, exist_ok=True)
        for f in out.iterdir():
            shutil.copy2(f, dest / f.name)


@pytest.fixture()
def data_dir() -> Path:
    return REPO / "data_assets"


@pytest.fixture(scope="session")
def materialized(tmp_path_factory, embedded_dir, shared_home):
    """Every asset materialised once through the real CLI (ci profile) on a temp instance: (env, assets dir)."""
    from _dagster_helpers import isolated_env, run_pipeline, small_data

    tmp = tmp_path_factory.mktemp("cli")
    env = {
        **isolated_env(tmp, shared_home),
        "PERSONA_PIPELINE_DATA": str(small_data(tmp)),
        "PERSONA_PIPELINE_RATINGS": str(tmp / "ratings"),
        # the demo's CPU dtype: the whole-DAG run generates ~1.7x faster; no test on it compares
        # batched with one-at-a-time greedy output (the unit tests that do stay float32)
        "PERSONA_PIPELINE_CPU_DTYPE": "bfloat16",
    }
    run_pipeline(env)
    return env, tmp / "persona_home" / "assets"
