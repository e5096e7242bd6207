"""Asset checks for the data stage: structural guarantees the trainer relies on."""

import dagster as dg

from persona_pipeline.contracts import Conversation
from persona_pipeline.defs.assets._common import persona_judge
from persona_pipeline.defs.resources import ModelResource
from persona_pipeline.quality import persona_breaks
from persona_pipeline.settings import profile


def _convs(rows: list[dict]) -> list[Conversation]:
    return [Conversation(**r) for r in rows]


def _result(failures: list[str], what: str, severity=dg.AssetCheckSeverity.ERROR) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=not failures,
        severity=severity,
        metadata={
            "failures": len(failures),
            "examples": dg.MetadataValue.md("\n".join(f"- {f}" for f in failures[:10]) or f"all {what} ok"),
        },
    )


@dg.asset_check(asset="conversations", description="Simulated-user dialogues have at least min_turns turns (8).")
def min_turns(conversations: list[dict]) -> dg.AssetCheckResult:
    need = profile().min_turns
    return _result(
        [
            f"{c.id}: {len(c.turns)} turns"
            for c in _convs(conversations)
            if c.persona_role == "user" and len(c.turns) < need
        ],
        "dialogues",
    )


@dg.asset_check(
    asset="conversations",
    description="Roles alternate user/assistant and the persona speaks first when it is the user.",
)
def roles_alternate(conversations: list[dict]) -> dg.AssetCheckResult:
    bad = []
    for c in _convs(conversations):
        if any(a.role == b.role for a, b in zip(c.turns, c.turns[1:])) or c.turns[0].role != "user":
            bad.append(c.id)
    return _result(bad, "conversations")


@dg.asset_check(asset="conversations", description="No turn is empty.")
def no_empty_turn(conversations: list[dict]) -> dg.AssetCheckResult:
    return _result(
        [f"{c.id}@{i}" for c in _convs(conversations) for i, t in enumerate(c.turns) if not t.content.strip()], "turns"
    )


@dg.asset_check(
    asset="conversations", description='No persona turn steps out of character ("as an AI", offers of help…).'
)
def no_persona_break(conversations: list[dict]) -> dg.AssetCheckResult:
    return _result([f"{c.id}@{i}" for c in _convs(conversations) for i in persona_breaks(c)], "persona turns")


@dg.asset_check(
    asset="sft_pairs", additional_ins={"conversations": dg.AssetIn()}, description="Exactly one pair per persona turn."
)
def pairs_match_persona_turns(sft_pairs: list[dict], conversations: list[dict]) -> dg.AssetCheckResult:
    expected = sum(len(c.persona_turn_indices()) for c in _convs(conversations))
    failures = [] if expected == len(sft_pairs) else [f"{len(sft_pairs)} pairs for {expected} persona turns"]
    return _result(failures, "pairs")


@dg.asset_check(
    asset="sft_pairs",
    additional_ins={"survey_conversations": dg.AssetIn()},
    description="No held-out survey item (question or answer) appears in any training pair.",
)
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


data_checks = [
    min_turns,
    roles_alternate,
    no_empty_turn,
    no_persona_break,
    pairs_match_persona_turns,
    no_survey_test_items,
]


def _heldout(conversations, persona_specs, surveys, n):
    from persona_pipeline.persona_simulator import definitions
    from persona_pipeline.train_rl import rl_prompts

    return rl_prompts(
        _convs(conversations),
        definitions(persona_specs, surveys),
        n,
        heldout=True,
        judge_specs=definitions(persona_specs, surveys, compact=False),
        max_depth=profile().rl_max_depth,
    )


def _lines(base_path: str, adapter: str | None, rows: list[dict]) -> list[str]:
    """Greedy next lines at a persona line's length; cached, so rl_adapter's reward and these checks share them."""
    from persona_pipeline.persona_simulator import greedy_lines

    return greedy_lines(base_path, adapter, rows, profile().persona_max_new_tokens)


_MODEL_INS = {"conversations": dg.AssetIn(), "persona_specs": dg.AssetIn(), "surveys": dg.AssetIn()}


@dg.asset_check(
    asset="sft_adapter",
    additional_ins=_MODEL_INS,
    description="On held-out histories the adapter's greedy lines differ from the base model's.",
)
def adapter_changes_outputs(sft_adapter: dict, conversations: list[dict], persona_specs: list[dict], surveys: dict):
    rows = _heldout(conversations, persona_specs, surveys, profile().check_prompts)
    base, tuned = (
        _lines(sft_adapter["base_model"], None, rows),
        _lines(sft_adapter["base_model"], sft_adapter["path"], rows),
    )
    changed = sum(a != b for a, b in zip(base, tuned))
    return dg.AssetCheckResult(
        passed=changed > 0,
        metadata={
            "changed": changed,
            "prompts": len(rows),
            "example": dg.MetadataValue.md(f"**base:** {base[0]}\n\n**adapter:** {tuned[0]}"),
        },
    )


@dg.asset_check(asset="sft_adapter", description="Held-out eval loss with the adapter is below the base model's.")
def eval_loss_below_base(sft_adapter: dict):
    return dg.AssetCheckResult(
        passed=sft_adapter["eval_loss"] < sft_adapter["base_eval_loss"],
        metadata={
            "base_eval_loss": round(sft_adapter["base_eval_loss"], 4),
            "eval_loss": round(sft_adapter["eval_loss"], 4),
        },
    )


@dg.asset_check(
    asset="sft_adapter",
    additional_ins={"sft_pairs": dg.AssetIn()},
    blocking=True,
    description="No held-out SFT pair shares an id, a HITL session or an identical history with a training pair.",
)
def sft_split_leak_free(sft_adapter: dict, sft_pairs: list[dict]) -> dg.AssetCheckResult:
    """Audits the split the trainer recorded against today's pairs; a stale or missing record fails too."""
    from persona_pipeline.splits import audit

    split = sft_adapter.get("split") or {"train_ids": [], "heldout_ids": []}
    by_id = {p["id"]: p for p in sft_pairs}
    named = split["train_ids"] + split["heldout_ids"]
    failures = [f"{i}: in the recorded split, not in sft_pairs (stale adapter)" for i in named if i not in by_id]
    if not split["heldout_ids"]:
        failures.append("sft_adapter records no held-out pairs (materialise it again)")
    known = lambda ids: [by_id[i] for i in ids if i in by_id]
    leaks = audit(known(split["train_ids"]), known(split["heldout_ids"]))
    failures += [str(leak) for leak in leaks]
    return dg.AssetCheckResult(
        passed=not failures,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "failures": len(failures),
            "leaks_by_kind": dg.MetadataValue.json(
                {k: sum(x.kind == k for x in leaks) for k in ("id", "session", "history")}
            ),
            "train_pairs": len(split["train_ids"]),
            "heldout_pairs": len(split["heldout_ids"]),
            "heldout_sessions": len(split.get("heldout_sessions", [])),
            "examples": dg.MetadataValue.md("\n".join(f"- {f}" for f in failures[:10]) or "no leak"),
        },
    )


@dg.asset_check(
    asset="sft_adapter",
    additional_ins=_MODEL_INS,
    description="Judge-scored persona adherence with the adapter ≥ the prompt-only base (warn on the embedded model).",
)
def adherence_vs_prompt_only(
    sft_adapter: dict, conversations: list[dict], persona_specs: list[dict], surveys: dict, judge: ModelResource
):
    from persona_pipeline.persona_simulator import adherence

    rows = _heldout(conversations, persona_specs, surveys, profile().check_prompts)
    scorer, method = persona_judge("auto", judge, persona_specs, surveys, purpose="evaluation")
    base, _ = adherence(scorer, rows, _lines(sft_adapter["base_model"], None, rows), method)
    tuned, _ = adherence(scorer, rows, _lines(sft_adapter["base_model"], sft_adapter["path"], rows), method)
    return dg.AssetCheckResult(
        passed=bool(tuned >= base),
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "adherence_prompt_only": round(base, 4),
            "adherence_sft": round(tuned, 4),
            "judge": judge.describe(),
            "prompts": len(rows),
        },
    )


@dg.asset_check(
    asset="rl_adapter", description="Mean judge reward on held-out histories: RL ≥ SFT (warn on the embedded model)."
)
def rl_reward_not_below_sft(rl_adapter: dict):
    return dg.AssetCheckResult(
        passed=rl_adapter["mean_reward_rl"] >= rl_adapter["mean_reward_sft"],
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"sft": round(rl_adapter["mean_reward_sft"], 4), "rl": round(rl_adapter["mean_reward_rl"], 4)},
    )


def _in_role(adapter: dict, conversations, persona_specs, surveys) -> dg.AssetCheckResult:
    from persona_pipeline.scaffolding import role_audit

    rows = _heldout(conversations, persona_specs, surveys, profile().check_prompts)
    audit = role_audit(_lines(adapter["base_model"], adapter["path"], rows))
    bad = audit["scaffolding_share"] > 0 or audit["assistant_share"] > 0.25
    return dg.AssetCheckResult(
        passed=not bad,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={k: v for k, v in audit.items() if k != "examples"}
        | {"examples": dg.MetadataValue.md("\n".join(f"- {x!r}" for x in audit["examples"]) or "none")},
    )


@dg.asset_check(
    asset="sft_adapter",
    additional_ins=_MODEL_INS,
    description="Held-out lines speak as the persona: none echoes the prompt scaffolding ([PERSONA:, [HISTORY], "
    "a rendered history), at most a quarter speak as the assistant (warn).",
)
def sft_stays_in_role(sft_adapter: dict, conversations: list[dict], persona_specs: list[dict], surveys: dict):
    return _in_role(sft_adapter, conversations, persona_specs, surveys)


@dg.asset_check(
    asset="rl_adapter",
    additional_ins=_MODEL_INS,
    description="As sft_stays_in_role, for the GRPO adapter (RL can learn to game a judge by leaving the role).",
)
def rl_stays_in_role(rl_adapter: dict, conversations: list[dict], persona_specs: list[dict], surveys: dict):
    return _in_role(rl_adapter, conversations, persona_specs, surveys)


@dg.asset_check(
    asset="rl_adapter",
    description="GRPO groups carry reward variance: under half of the groups gave every completion the same reward "
    "(such a group has zero advantage and teaches nothing). Fix: more generations, a hotter temperature, a finer reward.",
)
def rl_groups_have_reward_variance(rl_adapter: dict):
    share = rl_adapter.get("zero_variance_group_share")
    return dg.AssetCheckResult(
        passed=share is not None and share < 0.5,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "zero_variance_group_share": share,
            "num_generations": rl_adapter.get("num_generations"),
            "temperature": rl_adapter.get("temperature"),
            "reward_terms": ", ".join(rl_adapter.get("reward_terms", [])) or "judge only",
        },
    )


model_checks = [adapter_changes_outputs, eval_loss_below_base, adherence_vs_prompt_only, rl_reward_not_below_sft]
model_checks += [sft_stays_in_role, rl_stays_in_role, rl_groups_have_reward_variance]
model_checks.append(sft_split_leak_free)


@dg.asset_check(
    asset="persona_space",
    description="The role filter kept fully-in-role rollouts for every role (warns, with counts, for each role that "
    "fell back to all its rollouts).",
)
def role_filter_kept_rollouts(persona_space: dict) -> dg.AssetCheckResult:
    fell_back = persona_space.get("roles_unfiltered", [])
    counts = persona_space.get("role_rollouts", {})
    return dg.AssetCheckResult(
        passed=not fell_back,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "roles": len(persona_space["roles"]),
            "roles_fell_back": len(fell_back),
            "examples": dg.MetadataValue.md(
                "\n".join(f"- {r}: no rollout judged in role; all {counts.get(r, '?')} used" for r in fell_back)
                or "every role filtered"
            ),
        },
    )


@dg.asset_check(
    asset="trait_interference",
    description="Every persona vector is reliable: its positive answers score above its negative ones and the judge "
    "filter kept enough pairs (warns, naming each unreliable trait and why; its steering_sweep rows are marked).",
)
def trait_vectors_reliable(trait_interference: dict) -> dg.AssetCheckResult:
    issues = {t: v for t, v in trait_interference.get("vector_issues", {}).items() if v}
    return dg.AssetCheckResult(
        passed=not issues,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "traits": len(trait_interference["traits"]),
            "unreliable": len(issues),
            "examples": dg.MetadataValue.md(
                "\n".join(f"- {t}: {'; '.join(v)}" for t, v in issues.items()) or "every vector reliable"
            ),
        },
    )


representation_checks = [role_filter_kept_rollouts, trait_vectors_reliable]
