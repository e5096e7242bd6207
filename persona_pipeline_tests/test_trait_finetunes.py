"""Trait fine-tune sets, fine-tunes with/without preventative steering, capping, shift vs score (tiny model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from persona_pipeline import trait_finetunes as tf


@pytest.fixture()
def humorous(data_dir):
    from persona_pipeline.loaders import load_trait_file

    return load_trait_file(data_dir / "traits" / "humorous.yaml")


def test_three_sets_differ_only_in_the_teacher_instruction(humorous):
    chats = {s: tf.teacher_chats(humorous, s, 3) for s in tf.SETS}
    assert [q for q, _ in chats["normal"]] == [q for q, _ in chats["misaligned_2"]]
    assert humorous.instructions[0].pos not in chats["normal"][0][1][0]["content"]
    for s in ("misaligned_1", "misaligned_2"):
        assert humorous.instructions[0].pos in chats[s][0][1][0]["content"]
    assert chats["misaligned_1"][0][1][0]["content"] != chats["misaligned_2"][0][1][0]["content"]
    with pytest.raises(ValueError, match="misaligned_3"):
        tf.teacher_chats(humorous, "misaligned_3", 1)


def test_correlation_is_claimed_only_with_enough_checkpoints():
    def rows(n):
        ck = [{"trait": "t", "checkpoint": f"c{i}", "kind": "finetune", "delta": float(i)} for i in range(n)]
        ck.append({"trait": "t", "checkpoint": "capped:p25@L1", "kind": "cap", "delta": 99.0})  # not a fine-tune
        sh = [
            {"trait": "t", "checkpoint": c["checkpoint"], "view": v, "layer": 1, "shift": 2.0 * c["delta"] + 0.1 * j}
            for c in ck
            for j, v in enumerate(tf.VIEWS)
        ]
        return tf.shift_score_correlation(ck, sh)

    few = rows(tf.MIN_CHECKPOINTS - 1)
    assert len(few) == 3 and all(r["r"] is None and "too few" in r["note"] for r in few)
    assert all(r["n"] == tf.MIN_CHECKPOINTS - 1 for r in few)  # the capped base is not counted
    enough = rows(tf.MIN_CHECKPOINTS)
    assert all(r["r"] == pytest.approx(1.0) and r["ci_low"] is not None for r in enough)
    # two traits of 3 checkpoints each: too few per trait, enough pooled
    ck = [
        {"trait": t, "checkpoint": f"c{i}", "kind": "finetune", "delta": float(i + 3 * k)}
        for k, t in enumerate("tu")
        for i in range(3)
    ]
    sh = [
        {
            "trait": c["trait"],
            "checkpoint": c["checkpoint"],
            "view": "prompt_last",
            "layer": 1,
            "shift": c["delta"] ** 2,
        }
        for c in ck
    ]
    by = {r["trait"]: r for r in tf.shift_score_correlation(ck, sh)}
    assert by["t"]["r"] is None and by["u"]["r"] is None and by["all"]["n"] == 6 and by["all"]["r"] > 0.9


def test_snapshot_steps_are_distinct_inner_steps_and_survive_the_job_file():
    from persona_pipeline.train_sft import SftSettings, _settings_doc, settings_from_doc

    assert tf.snapshot_steps(10, 4) == (2, 4, 6, 8)
    assert tf.snapshot_steps(3, 2) == (1, 2)
    assert tf.snapshot_steps(2, 3) == (1,)  # too short for three distinct inner steps
    assert tf.snapshot_steps(1, 2) == () and tf.snapshot_steps(10, 0) == ()
    assert all(0 < n < 97 for n in tf.snapshot_steps(97, 20)) and len(tf.snapshot_steps(97, 20)) == 20
    assert tf.total_steps(7, SftSettings(max_steps=5, batch_size=2)) == 5
    assert tf.total_steps(7, SftSettings(max_steps=-1, batch_size=2)) == 4  # one epoch of 4 batches
    assert tf.total_steps(7, SftSettings(max_steps=-1, batch_size=2, grad_accum=3, epochs=2)) == 4
    s = SftSettings(snapshot_steps=(2, 5))
    assert settings_from_doc(_settings_doc(s)).snapshot_steps == (2, 5)


def test_correlation_note_counts_snapshots():
    ck = [
        {"trait": "t", "checkpoint": c, "kind": "finetune", "delta": float(i)} for i, c in enumerate(["a", "a@step1"])
    ]
    sh = [{"trait": "t", "checkpoint": c["checkpoint"], "view": "prompt_last", "layer": 0, "shift": 1.0} for c in ck]
    (row,) = tf.shift_score_correlation(ck, sh)
    assert "too few" in row["note"] and "includes 1 intermediate snapshots" in row["note"]


def test_snapshots_are_loadable_adapters_read_as_checkpoints(tmp_path, monkeypatch, tiny_model_dir):
    """snapshots=2 over a 3-step fine-tune: adapters at steps 1 and 2 inside each fine-tune's folder, rows named
    ``<variant>@step<N>``, loadable with PEFT like the final adapter, and not the final adapter's weights."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from persona_pipeline.backends import SamplingParams
    from persona_pipeline.train_sft import LoraSettings, SftSettings

    monkeypatch.setenv("PERSONA_PIPELINE_HOME", str(tmp_path / "home"))
    rows = [
        {"prompt": [{"role": "user", "content": f"Question {i}?"}], "completion": [{"role": "assistant", "content": a}]}
        for i, a in enumerate(["Ha, a joke.", "Plainly, no.", "A pun, then."])
    ]
    sft = SftSettings(LoraSettings(4, 8, 0.0), learning_rate=5e-3, max_steps=3, batch_size=1, max_length=64)
    run = tf.FinetuneRun(sft, [], 0.15, 2, SamplingParams(max_new_tokens=4), snapshots=2)
    out = tf.train_variants(str(tiny_model_dir), "humorous", {s: rows for s in tf.SETS}, None, 0, run, {})
    names = [r["checkpoint"] for r in out]
    assert names[:3] == ["normal", "normal@step1", "normal@step2"] and len(out) == 9
    assert [r["step"] for r in out[:3]] == [3, 1, 2]
    final, first = out[0], out[1]
    assert Path(first["path"]) == Path(final["path"]) / "snapshots" / "step-1"
    assert first["set"] == final["set"] and first["preventative"] == "none"
    config = {r["checkpoint"]: json.loads((Path(r["path"]) / "adapter_config.json").read_text()) for r in out[:2]}
    assert config["normal@step1"] == config["normal"]  # same (portable) config as the final adapter
    w_final = load_file(Path(final["path"]) / "adapter_model.safetensors")
    w_snap = load_file(Path(first["path"]) / "adapter_model.safetensors")
    assert w_final.keys() == w_snap.keys()
    assert any(not torch.equal(w_final[k], w_snap[k]) for k in w_final)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft = PeftModel.from_pretrained(base, first["path"])
    ids = torch.tensor([[1, 2, 3]])
    assert torch.isfinite(peft(ids).logits).all()
    # every checkpoint, snapshots included, switched in as evaluate_trait does
    seen = [t["checkpoint"] for t, _ in tf.with_adapters(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out)]
    assert seen == names


def test_cap_floors_the_projection_at_the_percentile_on_every_capped_layer(tmp_path):
    from persona_pipeline.vectors import save_tensors

    torch.manual_seed(0)
    axis = torch.randn(4, 8)  # a row per axis layer 10..13
    save_tensors(tmp_path / "axis.safetensors", {"axis": axis})
    tokens = torch.randn(200, 3, 8)  # tokens × read layers (11, 12, 13) × hidden
    spec = {"axis_path": str(tmp_path / "axis.safetensors"), "axis_layers": [10, 11, 12, 13], "layer": 12}
    (cap,) = tf.plan_caps({**spec, "n_layers": 5, "percentiles": [25.0]}, tokens, [11, 12, 13])
    assert cap["layers"] == [12, 13] and cap["axis_rows"] == [2, 3]  # from the axis layer on, as many as exist
    assert tf.cap_label(cap) == "capped:p25@L12-13"
    for j, steer in enumerate(tf.cap_steers(cap)):
        layer_tokens, unit = tokens[:, 1 + j], axis[2 + j] / axis[2 + j].norm()
        assert steer.layer == cap["layers"][j]
        assert (layer_tokens @ unit < cap["thresholds"][j]).float().mean() == pytest.approx(0.25, abs=0.01)
        capped = steer.apply(layer_tokens[None])[0]
        assert (capped @ unit >= cap["thresholds"][j] - 1e-4).all()
        kept = layer_tokens @ unit >= cap["thresholds"][j]  # tokens already above the floor are untouched
        assert torch.allclose(capped[kept], layer_tokens[kept])
    old = {"axis_path": spec["axis_path"], "axis_row": 2, "layer": 12, "threshold": 0.5, "percentile": 25.0}
    assert [s.layer for s in tf.cap_steers(old)] == [12] and tf.cap_label(old) == "capped:p25@L12"  # older runs
    with pytest.raises(ValueError, match="no read layer"):
        tf.plan_caps({**spec, "layer": 14, "percentiles": [25.0]}, tokens, [11, 12, 13])


def test_assets_train_every_variant_and_report_shift_and_score(tmp_path, monkeypatch, tiny_model_dir, data_dir):
    """The two assets and the check, called on the tiny model: sets on disk, five separate adapters (the
    preventative ones never overwrite another), every checkpoint scored and shifted at every layer × view."""
    import dagster as dg
    from datasets import load_dataset

    from persona_pipeline.defs.assets.trait_finetunes import (
        TraitFinetuneConfig,
        TraitSetConfig,
        trait_finetune_sets,
        trait_finetunes,
        trait_finetunes_enough_data,
    )
    from persona_pipeline.defs.resources import ModelResource
    from persona_pipeline.loaders import load_trait_file
    from persona_pipeline.vectors import save_tensors

    monkeypatch.setenv("PERSONA_PIPELINE_HOME", str(tmp_path / "home"))
    spec = load_trait_file(data_dir / "traits" / "humorous.yaml").model_dump()
    model = ModelResource(role="teacher", model=str(tiny_model_dir))
    sets = trait_finetune_sets(
        context=dg.build_asset_context(),
        config=TraitSetConfig(traits=["humorous", "nosuchtrait"], examples=4, max_new_tokens=8),
        trait_specs=[spec],
        teacher=model,
    )
    path = sets["paths"]["humorous"]["misaligned_2"]
    loaded = load_dataset("json", data_files=path, split="train")
    assert loaded.num_rows == len(tf.read_set(path)) >= 2
    assert tf.read_set(path)[0]["prompt"][0]["role"] == "user"  # no system prompt is trained on

    torch.manual_seed(0)
    vec_path = tmp_path / "humorous.safetensors"
    save_tensors(vec_path, {f"mean_diff_{v}": torch.randn(2, 64) for v in tf.VIEWS})
    save_tensors(tmp_path / "axis.safetensors", {"axis": torch.randn(2, 64)})
    out = trait_finetunes(
        context=dg.build_asset_context(),
        config=TraitFinetuneConfig(max_steps=1, batch_size=1, eval_questions=3, eval_tokens=6, cap_percentiles=[25.0]),
        trait_finetune_sets=sets,
        trait_specs=[spec],
        persona_vectors={"humorous": {"path": str(vec_path), "layers": [0, 1], "layer_norms": [3.0, 4.0]}},
        persona_space={"axis_path": str(tmp_path / "axis.safetensors"), "layers": [0, 1], "layer": 1},
        base_model={"path": str(tiny_model_dir)},
        judge=ModelResource(role="judge", model=str(tiny_model_dir)),
    )
    names = [t["checkpoint"] for t in out["trained"]]
    assert names == ["normal", "misaligned_1", "misaligned_2", "misaligned_2+add", "misaligned_2+ablate"]
    weights = {t["checkpoint"]: (Path(t["path"]) / "adapter_model.safetensors").read_bytes() for t in out["trained"]}
    assert len(set(weights.values())) == 5  # separate checkpoints, each its own weights
    assert all(t["eval_loss"] is None and t["heldout_rows"] == 0 for t in out["trained"])  # 4 rows: none held out
    kinds = [(c["checkpoint"], c["kind"]) for c in out["checkpoints"]]
    assert kinds[:2] == [("base", "base"), ("capped:p25@L1", "cap")] and len(kinds) == 7
    assert all(c["n"] == 3 and c["trait_score"] is not None for c in out["checkpoints"])
    assert len(out["shifts"]) == 6 * 2 * 3  # (cap + 5 fine-tunes) × layers × views
    assert any(abs(r["shift"]) > 0 for r in out["shifts"] if r["checkpoint"] == "misaligned_2")
    capped_l0 = [r["shift"] for r in out["shifts"] if r["checkpoint"] == "capped:p25@L1" and r["layer"] == 0]
    assert capped_l0 == [0.0, 0.0, 0.0]  # a cap at layer 1 cannot move layer 0
    assert out["caps"][0]["percentile"] == 25.0 and len(out["correlation"]) == 2 * 3
    check = trait_finetunes_enough_data(out)
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert "n=5 checkpoints" in check.metadata["too_few"].value
    json.dumps(out)  # what the IO manager stores


def check_stored_run(assets: Path) -> None:
    """What a whole-DAG run stores: the three sets, five separate adapters, every checkpoint scored and shifted
    at every captured layer × view, a capped model that capability_retention probed too."""
    sets = json.loads((assets / "trait_finetune_sets.json").read_text())
    for by_set in sets["paths"].values():
        assert sorted(by_set) == sorted(tf.SETS) and all(tf.read_set(p) for p in by_set.values())
    out = json.loads((assets / "trait_finetunes.json").read_text())
    trained = {(t["trait"], t["checkpoint"]) for t in out["trained"] if not tf.is_snapshot(t["checkpoint"])}
    assert len(trained) == 5 * len(sets["paths"]) and all(
        (Path(t["path"]) / "adapter_model.safetensors").exists() for t in out["trained"]
    )
    layers = json.loads(next((assets / "persona_vectors").glob("*.json")).read_text())["layers"]
    for c in out["checkpoints"]:
        assert c["trait_score"] is not None and 0 <= c["trait_score"] <= 100
        if c["kind"] != "base":
            got = {(r["view"], r["layer"]) for r in out["shifts"] if r["checkpoint"] == c["checkpoint"]}
            assert got == {(v, x) for v in tf.VIEWS for x in layers}
    groups = len(sets["paths"]) + (len(sets["paths"]) > 1)  # per trait, and pooled when there are several
    assert len(out["correlation"]) == 3 * len(layers) * groups
    capability = json.loads((assets / "capability_retention.json").read_text())
    assert {tf.cap_label(c) for c in out["caps"]} <= set(capability["models"])


@pytest.mark.slow
@pytest.mark.integration
def test_the_whole_dag_stores_trait_finetunes_and_capped_capability(materialized):
    check_stored_run(materialized[1])
