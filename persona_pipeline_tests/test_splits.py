"""Leak-free SFT splits: whole HITL sessions and conversations, audited from the outside.

The pairs come from the shipped writing-room sessions and survey (real data, no model
needed); the audit must pass on the trainer's split and catch a deliberately leaky one.
"""

import dagster as dg
import pytest

from persona_pipeline.contracts import Conversation
from persona_pipeline.hitl import expand_paths, mix_to_target
from persona_pipeline.loaders import load_hitl, load_surveys
from persona_pipeline.settings import data_root
from persona_pipeline.splits import audit, base_key, group_keys, heldout_conversations, split_pairs
from persona_pipeline.survey import split_items, survey_conversations
from persona_pipeline.train_sft import SftSettings, build_mixture
from persona_pipeline.unroll import unroll


@pytest.fixture(scope="module")
def convs() -> list[Conversation]:
    """Every HITL path with repeats (as `conversations` mixes them) plus the survey's training dialogues."""
    paths = [c for r in load_hitl(data_root() / "hitl") for c in expand_paths(r)]
    hitl, _ = mix_to_target(3 * len(paths), paths, 0.5)
    survey = []
    for s in load_surveys(data_root() / "surveys"):
        survey += [c for c in survey_conversations(s, split_items(s), 4) if c.metadata.split == "train"]
    return hitl + survey


@pytest.fixture(scope="module")
def pairs(convs) -> list[dict]:
    return [p.model_dump(mode="json") for c in convs for p in unroll(c, f"definition of {c.persona_id}")]


def by_conversation_split(pairs: list[dict], every: int = 3) -> tuple[list[dict], list[dict]]:
    """The old, leaky way: each conversation id (path, repeat) decided on its own."""
    ids = sorted({p["conversation_id"] for p in pairs})
    held = set(ids[::every])
    return [p for p in pairs if p["conversation_id"] not in held], [p for p in pairs if p["conversation_id"] in held]


def test_paths_and_repeats_of_a_session_form_one_group(pairs):
    groups = group_keys(pairs)
    repeats = [cid for cid in groups if "#r" in cid]
    assert repeats, "the fixture must contain HITL repeats"
    for cid, group in groups.items():
        if "#" in cid:
            assert group == base_key(cid) == cid.split("#")[0]


def test_survey_item_and_its_follow_up_share_a_group(pairs):
    groups = group_keys(pairs)
    follow_ups = [cid for cid in groups if "-followup-" in cid]
    assert follow_ups
    for cid in follow_ups:
        item = cid.replace("-followup-", "-item-")
        if item in groups:  # both open with the same question: the same history, so one group
            assert groups[item] == groups[cid]


def test_split_keeps_every_group_on_one_side_and_passes_the_audit(pairs):
    split = split_pairs(pairs, 0.1)
    groups = group_keys(pairs)
    train_groups = {groups[p["conversation_id"]] for p in split.train}
    assert train_groups.isdisjoint(groups[p["conversation_id"]] for p in split.heldout)
    assert len(split.train) + len(split.heldout) == len(pairs)
    assert audit(split.train, split.heldout) == []
    # every persona with two or more gold sessions keeps one of them unseen (the human-eval page needs it)
    hitl_personas = {p["persona_id"] for p in pairs if p["source"] == "hitl"}
    held_hitl = {p["persona_id"] for p in split.heldout if p["source"] == "hitl"}
    assert held_hitl == hitl_personas
    assert split_pairs(list(reversed(pairs)), 0.1).heldout_groups == split.heldout_groups  # order-independent


def test_audit_catches_a_split_by_conversation_id(pairs):
    train, heldout = by_conversation_split(pairs)
    leaks = audit(train, heldout)
    kinds = {leak.kind for leak in leaks}
    assert {"session", "history"} <= kinds  # sibling paths/repeats on both sides, and shared prefixes
    assert all(leak.heldout_id in {p["id"] for p in heldout} for leak in leaks)
    assert "shares its session with training" in str(next(x for x in leaks if x.kind == "session"))
    dup = heldout[:1]
    assert [x.kind for x in audit(dup, dup)][:1] == ["id"]


def test_build_mixture_records_a_leak_free_deduplicated_split(pairs):
    train, eval_rows, mixture = build_mixture(pairs, [], SftSettings(eval_fraction=0.1, max_eval_rows=10_000))
    split = mixture["split"]
    by_id = {p["id"]: p for p in pairs}
    assert audit([by_id[i] for i in split["train_ids"]], [by_id[i] for i in split["heldout_ids"]]) == []
    assert not set(split["train_sessions"]) & set(split["heldout_sessions"])
    assert {r["id"] for r in train} == set(split["train_ids"])
    assert len(eval_rows) == len({(str(r["prompt"]), str(r["completion"])) for r in eval_rows})  # repeats once
    assert all("#r" not in r["conversation_id"] for r in eval_rows)


def test_rl_prompts_hold_out_the_same_conversations_as_sft(convs, pairs):
    sft_held = {p["conversation_id"] for p in split_pairs(pairs, 0.1).heldout}
    assert heldout_conversations(convs, 0.1) == sft_held


def test_human_eval_contexts_come_only_from_untrained_sessions(convs, pairs):
    from persona_pipeline.human_eval import heldout_contexts as _contexts

    _, _, mixture = build_mixture(pairs, [], SftSettings(eval_fraction=0.1))
    trained = set(mixture["split"]["train_sessions"])
    hitl = [c.model_dump(mode="json") for c in convs if c.metadata.source == "hitl" and "#r" not in c.id]
    ctx = _contexts(hitl, 5, trained)
    assert ctx and not {base_key(c["id"].split("@")[0]) for c in ctx} & trained
    assert {c["persona_id"] for c in ctx} == {c.persona_id for c in convs if c.metadata.source == "hitl"}


def _run_check(pairs: list[dict], split: dict) -> dg.AssetCheckEvaluation:
    """The registered check on a temp instance, with the trainer's recorded split as its input."""
    from persona_pipeline.defs.checks import sft_split_leak_free

    @dg.asset(name="sft_pairs")
    def pairs_asset() -> list[dict]:
        return pairs

    @dg.asset(name="sft_adapter", deps=["sft_pairs"])
    def adapter_manifest() -> dict:  # the split the trainer recorded; training itself is test_training's job
        return {"split": split}

    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [pairs_asset, adapter_manifest, sft_split_leak_free], instance=instance, raise_on_error=False
        )
    (evaluation,) = result.get_asset_check_evaluations()
    return evaluation


def test_leak_check_is_registered_and_passes_on_the_real_split(pairs):
    from persona_pipeline.defs.checks import sft_split_leak_free
    from persona_pipeline.defs.definitions import defs

    key = dg.AssetCheckKey(dg.AssetKey("sft_adapter"), "sft_split_leak_free")
    assert key in defs.resolve_asset_graph().asset_check_keys
    assert all(spec.blocking for spec in sft_split_leak_free.check_specs)
    _, _, mixture = build_mixture(pairs, [], SftSettings(eval_fraction=0.1))
    evaluation = _run_check(pairs, mixture["split"])
    assert evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert evaluation.metadata["heldout_pairs"].value == len(mixture["split"]["heldout_ids"]) > 0


def test_leak_check_fails_with_error_on_a_leaky_split(pairs):
    train, heldout = by_conversation_split(pairs)
    leaky = {"train_ids": [p["id"] for p in train], "heldout_ids": [p["id"] for p in heldout]}
    evaluation = _run_check(pairs, leaky)
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert evaluation.metadata["failures"].value > 0
    assert "shares its session with training" in evaluation.metadata["examples"].value
