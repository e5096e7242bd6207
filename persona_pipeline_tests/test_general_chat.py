"""The shipped general-chat set: validated, split, mixed into SFT, and the retention number."""

import pytest

from persona_pipeline.general_chat import heldout, load_general_chat, retention, training_rows
from persona_pipeline.loaders import InputError
from persona_pipeline.settings import data_root
from persona_pipeline.train_sft import SftSettings, build_mixture
from persona_pipeline_tests.test_training import dialogues, pairs


def shipped():
    return load_general_chat(data_root() / "general_chat.jsonl")


def test_the_shipped_set_is_real_and_a_quarter_is_never_trained_on():
    items = shipped()
    assert len(items) >= 30 and len({i.prompt for i in items}) == len(items)
    rows = training_rows(items)
    held = [i for i in items if heldout(i)]
    assert 4 <= len(held) <= len(items) // 2
    trained = {r["prompt"][0]["content"] for r in rows}
    assert trained.isdisjoint(i.prompt for i in held) and len(rows) + len(held) == len(items)
    assert all(r["source"] == "general" and len(r["prompt"]) == 1 for r in rows)  # no persona, no system prompt


def test_general_chat_is_its_own_weighted_share_of_the_mixture():
    rows = training_rows(shipped())
    s = SftSettings(weights={"synthetic": 1, "hitl": 1, "general": 2}, eval_fraction=0.3)
    train, _, mixture = build_mixture(pairs(dialogues()), rows, s)
    assert mixture["sources"]["general"]["rows"] == 2 * len(rows)
    assert all(r["persona_id"] == "none" for r in train if r["source"] == "general")


def test_a_bad_line_names_file_line_and_field(tmp_path):
    path = tmp_path / "general_chat.jsonl"
    path.write_text('{"id": "a", "prompt": "Hello there", "answer": "Hi"}\n{"id": "b", "prompt": "Hello there"}\n')
    with pytest.raises(InputError, match=r"general_chat.jsonl, line 2.*answer"):
        load_general_chat(path)
    assert load_general_chat(tmp_path / "missing.jsonl") == []


def test_retention_compares_base_and_adapter_on_held_out_prompts(tiny_backend):
    out = retention(tiny_backend, tiny_backend, shipped(), n=3, max_new_tokens=6)
    assert out["prompts"] == 3 and out["diff"] == 0.0  # the same model on both sides: no difference
    assert 0 <= out["base"] <= 1 and out["example"]["prompt"]
