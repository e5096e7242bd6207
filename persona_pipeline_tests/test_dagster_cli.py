"""The whole data stage through the real CLI, as CI users run it, on a temp instance."""

import json

import pyarrow.parquet as pq
import pytest

from _dagster_helpers import check_results, isolated_env, materialize_cmd, persona_range, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def materialized(tmp_path_factory, embedded_dir, shared_home):
    tmp = tmp_path_factory.mktemp("cli")
    env = isolated_env(tmp, shared_home)
    run_cli(materialize_cmd("*", persona_range()), env)
    return env, tmp / "persona_home" / "assets"


def test_every_data_stage_asset_is_stored(materialized):
    _, assets = materialized
    for name in ["persona_specs", "topics", "trait_specs", "hitl_conversations", "survey_conversations",
                 "conversations", "sft_pairs"]:
        assert (assets / f"{name}.parquet").exists(), name
    for name in ["role_specs", "surveys", "base_model"]:
        assert (assets / f"{name}.json").exists(), name
    personas = sorted(p.stem for p in (assets / "synthetic_conversations").glob("*.parquet"))
    assert personas == sorted(r["id"] for r in pq.read_table(assets / "persona_specs.parquet").to_pylist())


def test_synthetic_partitions_hold_real_dialogues(materialized):
    _, assets = materialized
    for path in (assets / "synthetic_conversations").glob("*.parquet"):
        rows = pq.read_table(path).to_pylist()
        assert len(rows) == 1  # ci profile: one dialogue per persona
        row = rows[0]
        assert row["persona_id"] == path.stem and row["metadata"]["num_turns"] >= 8
        assert row["metadata"]["generation_model"] == "smollm2-135m-instruct"
        assert sum(bool(t["content"].strip()) for t in row["turns"]) >= 6


def test_conversations_merge_sources_and_pairs_match(materialized):
    _, assets = materialized
    convs = pq.read_table(assets / "conversations.parquet").to_pylist()
    sources = {c["metadata"]["source"] for c in convs}
    assert {"hitl", "survey"} <= sources
    assert all(c["metadata"]["quality_score"] is not None for c in convs)
    assert all(c["metadata"]["split"] == "train" for c in convs)
    pairs = pq.read_table(assets / "sft_pairs.parquet").to_pylist()
    persona_turns = sum(sum(t["role"] == c["persona_role"] for t in c["turns"]) for c in convs)
    assert len(pairs) == persona_turns
    assert pairs[0]["prompt"][1]["content"].startswith("[PERSONA: ")
    base = json.loads((assets / "base_model.json").read_text())
    assert base["layers"] == 30 and base["cache_hit"] is True


def test_all_data_checks_pass(materialized):
    env, _ = materialized
    results = check_results(env)
    assert set(results) >= {"min_turns", "roles_alternate", "no_empty_turn", "no_persona_break",
                            "pairs_match_persona_turns", "no_survey_test_items"}
    assert all(results.values()), results
