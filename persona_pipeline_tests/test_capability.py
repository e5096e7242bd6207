"""Capability retention: the shipped probe, lm-eval on in-memory models (PEFT, steering), the asset and its check."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from persona_pipeline import capability as cap
from persona_pipeline.loaders import InputError

FOLDER = Path(__file__).resolve().parent.parent / "data_assets" / "capability"


@pytest.fixture(scope="module")
def probe():
    return cap.load_probe(FOLDER / cap.ITEMS_FILE)


def test_shipped_probe_is_big_balanced_and_valid(probe):
    domains = Counter(it.domain for it in probe)
    assert len(probe) >= 100 and len(domains) >= 5
    assert min(domains.values()) >= 15, domains
    slots = Counter(it.answer for it in probe)
    assert max(slots.values()) - min(slots.values()) <= 3, f"answer positions are skewed: {slots}"
    assert all(len(it.choices) == 4 for it in probe)


def test_bad_probe_lines_name_file_line_and_field(tmp_path):
    good = {"id": "a-1", "domain": "maths", "question": "What is 2 + 2?", "choices": ["3", "4"], "answer": 1}
    path = tmp_path / "probe.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "id": "a-2", "answer": 2}) + "\n")
    with pytest.raises(InputError, match=r"probe.jsonl, line 2: .*not an index"):
        cap.load_probe(path)
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "id": "a-2"}) + "\n")
    with pytest.raises(InputError, match=r"line 2: field 'question': duplicate of line 1"):
        cap.load_probe(path)


def test_subset_is_spread_over_domains(probe):
    picked = cap.select_items(probe, 40)
    per = Counter(it.domain for it in picked)
    assert len(picked) == 40 and max(per.values()) - min(per.values()) <= 1
    assert cap.select_items(probe, 0) == probe and cap.select_items(probe, 10_000) == probe


def test_wilson_interval_is_sane_at_the_edges():
    lo, hi = cap.wilson(0, 10)
    assert lo == 0 and 0.2 < hi < 0.35
    lo, hi = cap.wilson(10, 10)
    assert hi == 1 and 0.65 < lo < 0.8
    assert cap.wilson(5, 10)[1] - cap.wilson(5, 10)[0] > cap.wilson(50, 100)[1] - cap.wilson(50, 100)[0]


# --- lm-eval on a model --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from persona_pipeline.modelio import load_model

    return load_model(tiny_model_dir)


@pytest.fixture(scope="module")
def tiny_lora(tiny_model_dir, tmp_path_factory):
    """A LoRA with non-zero weights on the tiny model (``init_lora_weights=False``): it changes outputs."""
    import torch
    from peft import LoraConfig, get_peft_model

    from persona_pipeline.modelio import load_model

    model, _ = load_model(tiny_model_dir)
    torch.manual_seed(1)
    cfg = LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    out = tmp_path_factory.mktemp("tiny-lora")
    get_peft_model(model, cfg).save_pretrained(out)
    return out


def test_probe_scores_every_item_and_reports_domains(tiny, probe):
    model, tok = tiny
    items = cap.select_items(probe, 12)
    r = cap.run_probe(model, tok, items, FOLDER, "tiny", batch_size=8)
    assert set(r.correct) == {it.id for it in items} and set(r.correct.values()) <= {0, 1}
    assert set(r.per_domain()) == {it.domain for it in items}
    assert r.chance == pytest.approx(0.25) and r.accuracy()["n"] == 12
    assert any("only 12 items" in n for n in cap.too_few(r.n, r.per_domain()))


def test_steering_runs_inside_the_harness(tiny, probe):
    """A huge push along one direction moves the choice loglikelihoods: the hooks are on during lm-eval's passes."""
    import torch

    model, tok = tiny
    items = cap.select_items(probe, 24)
    plain = cap.run_probe(model, tok, items, FOLDER, "plain", batch_size=8)
    steer = cap.add_steer(torch.ones(model.config.hidden_size), 0, 50.0, 1.0)
    steered = cap.run_probe(model, tok, items, FOLDER, "steered", 8, [steer])
    assert steered.correct != plain.correct or steered.acc_norm != plain.acc_norm
    again = cap.run_probe(model, tok, items, FOLDER, "plain", batch_size=8)
    assert again.correct == plain.correct, "hooks are removed after the steered run"


def test_summary_gives_paired_drops(tiny, tiny_lora, probe, tiny_model_dir):
    from persona_pipeline.modelio import load_model

    items = cap.select_items(probe, 12)
    base = cap.run_probe(*tiny, items, FOLDER, "base", batch_size=8)
    tuned = cap.run_probe(*load_model(tiny_model_dir, tiny_lora), items, FOLDER, "lora", 8)
    s = cap.summarise({"base": base, "lora": tuned})
    assert "vs_base" not in s["models"]["base"]
    d = s["models"]["lora"]["vs_base"]
    assert d["n"] == 12
    assert d["drop"] == pytest.approx(base.accuracy()["accuracy"] - tuned.accuracy()["accuracy"])
    json.dumps(s)  # what the IO manager stores


def test_asset_and_check_on_the_tiny_model(tiny_model_dir, tiny_lora, tmp_path):
    import dagster as dg
    import torch

    from persona_pipeline import vectors as vec
    from persona_pipeline.defs.assets.capability import CapabilityConfig, capability_not_lost, capability_retention

    torch.manual_seed(0)
    vec.save_tensors(tmp_path / "humorous.safetensors", {"mean_diff_response_avg": torch.randn(2, 64)})
    vectors = {
        "humorous": {"path": str(tmp_path / "humorous.safetensors"), "layers": [0, 1], "layer_norms": [3.0, 4.0]}
    }
    out = capability_retention(
        context=dg.build_asset_context(),
        config=CapabilityConfig(items=12, batch_size=8, max_drop=-1.0),  # any model "drops": the check must warn
        base_model={"path": str(tiny_model_dir)},
        sft_adapter={"path": str(tiny_lora)},
        rl_adapter={"path": str(tiny_lora)},
        persona_vectors=vectors,
        trait_finetunes={"caps": [], "trained": []},  # capped models: test_trait_finetunes
    )
    assert list(out["models"]) == ["base", "steered:humorous@L1x0.2", "sft", "rl"]
    assert out["n"] == 12 and out["notes"]
    check = capability_not_lost(out)
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    notes = check.metadata["notes"]
    assert "only 12 items" in getattr(notes, "value", notes)


def test_definitions_load_with_the_new_asset_check_and_job():
    from persona_pipeline.defs.definitions import defs

    assert defs.resolve_assets_def("capability_retention") is not None
    assert defs.resolve_job_def("new_trait") is not None
    keys = {k.asset_key.to_user_string() for k in defs.resolve_asset_graph().asset_check_keys}
    assert "capability_retention" in keys


@pytest.mark.integration
def test_embedded_model_beats_chance_and_a_wrecking_steer_costs_accuracy(embedded_dir, probe):
    import torch

    from persona_pipeline.modelio import load_model

    model, tok = load_model(embedded_dir)
    items = cap.select_items(probe, 60)
    base = cap.run_probe(model, tok, items, FOLDER, "base")
    assert base.accuracy()["ci_low"] > base.chance, base.accuracy()
    torch.manual_seed(0)
    wreck = cap.add_steer(torch.randn(model.config.hidden_size), 12, 5.0, 150.0)
    steered = cap.run_probe(model, tok, items, FOLDER, "wrecked", steers=[wreck])
    drop = cap.drop_vs_base(steered, base)
    assert drop["drop"] > 0.1 and drop["ci_low"] > 0, drop
