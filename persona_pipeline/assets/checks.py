"""Asset checks for the data stage: structural guarantees the trainer relies on."""

import dagster as dg

from ..contracts import Conversation
from ..quality import persona_breaks
from ..settings import profile


def _convs(rows: list[dict]) -> list[Conversation]:
    return [Conversation(**r) for r in rows]


def _result(failures: list[str], what: str, severity=dg.AssetCheckSeverity.ERROR) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=not failures, severity=severity,
        metadata={"failures": len(failures), "examples": dg.MetadataValue.md("\n".join(f"- {f}" for f in failures[:10]) or f"all {what} ok")},
    )


@dg.asset_check(asset="conversations", description="Simulated-user dialogues have at least min_turns turns (8).")
def min_turns(conversations: list[dict]) -> dg.AssetCheckResult:
    need = profile().min_turns
    return _result([f"{c.id}: {len(c.turns)} turns" for c in _convs(conversations)
                    if c.persona_role == "user" and len(c.turns) < need], "dialogues")


@dg.asset_check(asset="conversations", description="Roles alternate user/assistant and the persona speaks first when it is the user.")
def roles_alternate(conversations: list[dict]) -> dg.AssetCheckResult:
    bad = []
    for c in _convs(conversations):
        if any(a.role == b.role for a, b in zip(c.turns, c.turns[1:])) or c.turns[0].role != "user":
            bad.append(c.id)
    return _result(bad, "conversations")


@dg.asset_check(asset="conversations", description="No turn is empty.")
def no_empty_turn(conversations: list[dict]) -> dg.AssetCheckResult:
    return _result([f"{c.id}@{i}" for c in _convs(conversations) for i, t in enumerate(c.turns) if not t.content.strip()], "turns")


@dg.asset_check(asset="conversations", description="No persona turn steps out of character (\"as an AI\", offers of help…).")
def no_persona_break(conversations: list[dict]) -> dg.AssetCheckResult:
    return _result([f"{c.id}@{i}" for c in _convs(conversations) for i in persona_breaks(c)], "persona turns")


@dg.asset_check(asset="sft_pairs", additional_ins={"conversations": dg.AssetIn()},
                description="Exactly one pair per persona turn.")
def pairs_match_persona_turns(sft_pairs: list[dict], conversations: list[dict]) -> dg.AssetCheckResult:
    expected = sum(len(c.persona_turn_indices()) for c in _convs(conversations))
    failures = [] if expected == len(sft_pairs) else [f"{len(sft_pairs)} pairs for {expected} persona turns"]
    return _result(failures, "pairs")


@dg.asset_check(asset="sft_pairs", additional_ins={"survey_conversations": dg.AssetIn()},
                description="No held-out survey item (question or answer) appears in any training pair.")
def no_survey_test_items(sft_pairs: list[dict], survey_conversations: list[dict]) -> dg.AssetCheckResult:
    held_out = [c for c in _convs(survey_conversations) if c.metadata.split == "test"]
    questions = {c.turns[0].content: c.id for c in held_out}
    answers = {c.turns[1].content: c.id for c in held_out}
    leaked = []
    for p in sft_pairs:
        text = "\n".join(m["content"] for m in p["prompt"])
        leaked += [f"{cid} question in {p['id']}" for q, cid in questions.items() if q in text]
        if p["completion"][0]["content"] in answers:
            leaked.append(f"{answers[p['completion'][0]['content']]} answer in {p['id']}")
    return _result(leaked, f"pairs ({len(held_out)} held-out items)")


data_checks = [min_turns, roles_alternate, no_empty_turn, no_persona_break, pairs_match_persona_turns, no_survey_test_items]
