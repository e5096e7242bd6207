"""Vectors out as GGUF control vectors; conversations and SFT pairs out as Hugging Face datasets.

GGUF: the pipeline's own artifact layout (asset values under ``<home>/assets`` pointing at
``.safetensors`` written by ``vectors.save_tensors``) is exported, then read back with the
``gguf`` reader (and repeng's ``ControlVector.import_gguf`` when repeng is installed) and
compared with the safetensors values. Datasets: real HITL dialogues unrolled by the
pipeline are exported, loaded exactly as ``datasets.load_dataset("json"/"parquet")``
does, and handed unchanged to TRL's ``SFTTrainer`` for one step on the tiny model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from persona_pipeline.gguf_export import export_all, read_control_vector, write_control_vector

DATA = Path(__file__).resolve().parent.parent / "data_assets"
LAYERS, HIDDEN = list(range(6)), 16


@pytest.fixture()
def vector_home(tmp_path) -> Path:
    """A home with one persona vector, one CMA-ES direction and the Assistant Axis, laid out as the assets write them."""
    import torch

    from persona_pipeline.storage import write_json
    from persona_pipeline.vectors import save_tensors

    torch.manual_seed(0)
    home, assets = tmp_path / "home", tmp_path / "home" / "assets"
    trait = home / "persona_vectors" / "humorous.safetensors"
    save_tensors(
        trait,
        {
            "mean_diff_response_avg": torch.randn(len(LAYERS), HIDDEN),
            "svd_response_avg": torch.randn(len(LAYERS), HIDDEN),
        },
    )
    write_json(
        assets / "persona_vectors" / "humorous.json", {"trait": "humorous", "path": str(trait), "layers": LAYERS}
    )
    persona = home / "cmaes_steering" / "skeptic.safetensors"
    save_tensors(persona, {"vector": torch.randn(HIDDEN)})
    write_json(assets / "cmaes_steering" / "skeptic.json", {"persona_id": "skeptic", "path": str(persona), "layer": 3})
    axis = home / "persona_space" / "assistant_axis.safetensors"
    save_tensors(axis, {"axis": torch.randn(len(LAYERS), HIDDEN), "mu": torch.zeros(HIDDEN)})
    write_json(assets / "persona_space.json", {"axis_path": str(axis), "layers": LAYERS})
    return home


def test_gguf_control_vectors_read_back_equal_to_safetensors(vector_home):
    from safetensors.numpy import load_file

    exported = {e.name: e for e in export_all(vector_home)}
    assert set(exported) == {"humorous", "humorous.svd", "persona-skeptic", "assistant_axis"}
    for name, key, src in [
        ("humorous", "mean_diff_response_avg", "persona_vectors/humorous.safetensors"),
        ("humorous.svd", "svd_response_avg", "persona_vectors/humorous.safetensors"),
        ("assistant_axis", "axis", "persona_space/assistant_axis.safetensors"),
    ]:
        e = exported[name]
        assert e.path == vector_home / Path(src).parent / f"{name}.gguf"
        hint, directions = read_control_vector(e.path)
        want = load_file(str(vector_home / src))[key]
        assert hint == "llama" and e.skipped_layers == [0]  # llama.cpp has no slot for layer 0
        assert sorted(directions) == e.layers == LAYERS[1:]
        for layer in e.layers:
            np.testing.assert_array_equal(directions[layer], want[layer])
        np.testing.assert_allclose(e.norms, np.linalg.norm(want[1:], axis=1), rtol=1e-6)
    hint, directions = read_control_vector(exported["persona-skeptic"].path)
    want = load_file(str(vector_home / "cmaes_steering" / "skeptic.safetensors"))["vector"]
    assert list(directions) == [3]
    np.testing.assert_array_equal(directions[3], want)


def test_gguf_layout_is_the_control_vector_layout(vector_home):
    import gguf

    (e,) = [e for e in export_all(vector_home) if e.name == "humorous"]
    reader = gguf.GGUFReader(str(e.path))
    text = lambda key: bytes(reader.get_field(key).parts[-1]).decode()
    assert text("general.architecture") == "controlvector"
    assert text("controlvector.model_hint") == "llama"
    assert int(reader.get_field("controlvector.layer_count").parts[-1][0]) == 5
    assert [t.name for t in reader.tensors] == [f"direction.{i}" for i in range(1, 6)]
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 and len(t.shape) == 1 for t in reader.tensors)
    assert list(reader.get_field("persona_pipeline.layers").contents()) == [1, 2, 3, 4, 5]


def test_repeng_imports_the_gguf(vector_home):
    np_float = getattr(np, "float_", None)
    if np_float is None:  # repeng 0.4 annotates with np.float_, removed in NumPy 2; harmless alias for the import
        np.float_ = np.float64
    try:
        repeng = pytest.importorskip(
            "repeng", reason="repeng is optional (its wheel pins numpy<2); gguf reader covers it"
        )
    finally:
        if np_float is None:
            del np.float_
    (e,) = [e for e in export_all(vector_home) if e.name == "assistant_axis"]
    vector = repeng.ControlVector.import_gguf(str(e.path))
    _, ours = read_control_vector(e.path)
    assert vector.model_type == "llama" and sorted(vector.directions) == sorted(ours)
    for layer, direction in ours.items():
        np.testing.assert_array_equal(vector.directions[layer], direction)


def test_gguf_refuses_bad_directions(tmp_path):
    with pytest.raises(ValueError, match="no direction for a layer >= 1"):
        write_control_vector(tmp_path / "a.gguf", {0: np.ones(4)}, "llama")
    with pytest.raises(ValueError, match="NaN or infinity"):
        write_control_vector(tmp_path / "b.gguf", {1: np.array([1.0, np.nan])}, "llama")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_export_vectors_cli(vector_home, monkeypatch, capsys):
    from persona_pipeline.cli import main

    monkeypatch.setenv("PERSONA_PIPELINE_HOME", str(vector_home))
    assert main(["export-vectors"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {o["name"] for o in out} == {"humorous", "humorous.svd", "persona-skeptic", "assistant_axis"}
    assert all(Path(o["gguf"]).exists() and len(o["norms"]) == len(o["layers"]) for o in out)


# ------------------------------------------------------------------ datasets out


@pytest.fixture()
def exported_datasets(tmp_path) -> dict:
    """Real HITL gold dialogues → conversations → SFT pairs, exported as the pipeline exports them."""
    from persona_pipeline import loaders
    from persona_pipeline.dataset_export import conversation_rows, sft_rows, write_dataset
    from persona_pipeline.hitl import expand_paths
    from persona_pipeline.persona_simulator import definitions
    from persona_pipeline.unroll import unroll

    specs = loaders.load_personas(DATA / "personas")
    defs = definitions([s.model_dump() for s in specs], {})
    convs = [c for r in loaders.load_hitl(DATA / "hitl")[:3] for c in expand_paths(r)]
    convs += loaders.load_conversations(DATA / "conversations")
    pairs = [p for c in convs for p in unroll(c, defs[c.persona_id])]
    return {
        "conversations": write_dataset(conversation_rows(convs), tmp_path, "conversations"),
        "sft_pairs": write_dataset(sft_rows(pairs), tmp_path, "sft_pairs"),
        "n": {"conversations": len(convs), "sft_pairs": len(pairs)},
    }


@pytest.mark.parametrize("fmt", ["json", "parquet"])
def test_load_dataset_reads_both_formats(exported_datasets, fmt):
    from datasets import load_dataset

    key = "jsonl" if fmt == "json" else "parquet"
    pairs = load_dataset(fmt, data_files=str(exported_datasets["sft_pairs"][key]), split="train")
    convs = load_dataset(fmt, data_files=str(exported_datasets["conversations"][key]), split="train")
    assert len(pairs) == exported_datasets["n"]["sft_pairs"] and len(convs) == exported_datasets["n"]["conversations"]
    row = pairs[0]
    assert row["prompt"][0]["role"] == "system" and "[PERSONA: " in row["prompt"][-1]["content"]
    assert row["completion"][0]["role"] == "assistant" and row["completion"][0]["content"]
    conv = convs[-1]
    assert conv["source"] == "synthetic" and json.loads(conv["metadata"])["extra"]  # the doc layout's metadata kept
    assert {m["role"] for m in conv["messages"]} == {"user", "assistant"}


@pytest.mark.parametrize("name", ["sft_pairs", "conversations"])
def test_sft_trainer_takes_the_files_unchanged(exported_datasets, tiny_model_dir, tmp_path, name):
    from datasets import load_dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    dataset = load_dataset("json", data_files=str(exported_datasets[name]["jsonl"]), split="train")
    args = SFTConfig(
        output_dir=str(tmp_path / "trainer"),
        max_steps=1,
        per_device_train_batch_size=2,
        max_length=512,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        dataloader_num_workers=0,
    )
    trainer = SFTTrainer(
        model=str(tiny_model_dir),
        args=args,
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
    )
    result = trainer.train()
    assert result.global_step == 1 and np.isfinite(result.training_loss)
