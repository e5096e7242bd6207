"""Data group: teacher dialogues, HITL gold, survey conversations, curation, SFT pairs."""

from typing import Literal

import dagster as dg

from persona_pipeline import curate as cur
from persona_pipeline.backends import SamplingParams
from persona_pipeline.contracts import Conversation, Survey, Topic
from persona_pipeline.defs.assets._common import GPU, SINGLE_RUN, ProfileConfig, counts, md_table, persona_partitions
from persona_pipeline.defs.resources import ModelResource
from persona_pipeline.hitl import expand_paths
from persona_pipeline.layout import layout
from persona_pipeline.loaders import load_conversations, load_hitl, load_personas
from persona_pipeline.persona_simulator import definitions
from persona_pipeline.settings import data_root, profile
from persona_pipeline.survey import split_items
from persona_pipeline.survey import survey_conversations as survey_to_convs
from persona_pipeline.teacher_dialogues import DialogueSettings, WorkCache, fingerprint, plan_dialogues, simulate
from persona_pipeline.unroll import export_customjson, unroll

GROUP = "data"


class SyntheticConfig(ProfileConfig):
    """None means: take the value from the active profile (PERSONA_PIPELINE_PROFILE)."""

    PROFILE = {
        name: name
        for name in (
            "conversations_per_persona",
            "min_turns",
            "max_turns",
            "persona_max_new_tokens",
            "assistant_max_new_tokens",
            "max_line_retries",
        )
    }

    conversations_per_persona: int | None = None
    min_turns: int | None = None
    max_turns: int | None = None
    persona_max_new_tokens: int | None = None
    assistant_max_new_tokens: int | None = None
    max_line_retries: int | None = None
    temperature: float = 0.8
    teacher_spec: Literal["auto", "full", "compact"] = (
        "auto"  # auto: the whole spec for an endpoint teacher, compact for the 135M
    )
    seed: int = 0

    def resolved(self) -> tuple[int, DialogueSettings]:
        sim = DialogueSettings(
            min_turns=self.min_turns,
            max_turns=self.max_turns,
            persona_max_new_tokens=self.persona_max_new_tokens,
            assistant_max_new_tokens=self.assistant_max_new_tokens,
            temperature=self.temperature,
            max_line_retries=self.max_line_retries,
            seed=self.seed,
        )
        if sim.max_turns < sim.min_turns:
            raise ValueError(f"config max_turns={sim.max_turns} is below min_turns={sim.min_turns}")
        return self.conversations_per_persona, sim


def _records(convs: list[Conversation]) -> list[dict]:
    return [c.model_dump(mode="json") for c in convs]


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "parquet"},
    partitions_def=persona_partitions,
    backfill_policy=SINGLE_RUN,
    **GPU,
    deps=["persona_files"],
    description="Teacher-written dialogues (persona as the user, 8+ turns) per persona; all partitions advance in one batch; "
    "resumable. Reads its own persona's spec file, so editing one spec makes only that partition stale.",
)
def synthetic_conversations(
    context: dg.AssetExecutionContext,
    config: SyntheticConfig,
    topics: list[dict],
    teacher: ModelResource,
    assistant: ModelResource,
) -> dict:
    n, sim = config.resolved()
    sim.full_spec = config.teacher_spec == "full" or (config.teacher_spec == "auto" and teacher.kind != "local")
    specs = {s.id: s for s in load_personas(data_root() / "personas")}
    unknown = [k for k in context.partition_keys if k not in specs]
    if unknown:
        raise ValueError(f"partitions {unknown} have no persona spec in {data_root() / 'personas'}")
    all_topics = [Topic(**t) for t in topics]
    plans = {pid: plan_dialogues(specs[pid], all_topics, n, sim.seed) for pid in context.partition_keys}
    ids = (teacher.describe(), assistant.describe())
    cache = WorkCache(
        layout().work("synthetic_conversations"),
        {pid: fingerprint(specs[pid], [d.topic for d in plans[pid]], sim, ids) for pid in plans},
    )
    dialogues = [d for pid in context.partition_keys for d in plans[pid]]
    log = lambda step, ds: context.log.info(f"step {step}: {sum(d.done for d in ds)}/{len(ds)} dialogues finished")
    convs = simulate(dialogues, specs, teacher.backend(), assistant.backend(), sim, cache=cache, on_step=log)
    context.add_output_metadata(
        {
            "conversations": len(convs),
            "mean_turns": round(sum(len(c.turns) for c in convs) / max(1, len(convs)), 2),
            "ended_by_stop_rule": sum(c.metadata.ended_by_stop_rule for c in convs),
            "teacher": ids[0],
            "assistant": ids[1],
            "sample": md_table(
                [
                    {"persona": c.persona_id, "turn": i, "role": t.role, "content": t.content[:120]}
                    for c in convs[:1]
                    for i, t in enumerate(c.turns)
                ]
            ),
        }
    )
    return {pid: _records([c for c in convs if c.persona_id == pid]) for pid in context.partition_keys}


@dg.asset(
    group_name=GROUP,
    kinds={"jsonl", "parquet"},
    description="Human gold dialogues from data_assets/hitl/; each alternative line becomes its own training path.",
)
def hitl_conversations(context: dg.AssetExecutionContext, persona_specs: list[dict]) -> list[dict]:
    records = load_hitl(data_root() / "hitl", {s["id"] for s in persona_specs}, context.log.warning)
    convs = [c for r in records for c in expand_paths(r)]
    context.add_output_metadata(
        {"sessions": len(records), "paths": len(convs), "per_persona": counts(c.persona_id for c in convs)}
    )
    return _records(convs)


class SurveyConfig(ProfileConfig):
    PROFILE = {"follow_up_items": "survey_follow_up_items"}

    test_fraction: float = 0.2
    follow_up_items: int | None = None
    generate_follow_ups: bool = True  # the teacher answers follow-ups in the person's voice (else their reasoning)
    seed: int = 0


@dg.asset(
    group_name=GROUP,
    kinds={"parquet"},
    description="Survey items → conversations in the person's voice (+ follow-ups, identity), stratified 80/20 split.",
)
def survey_conversations(
    context: dg.AssetExecutionContext, config: SurveyConfig, surveys: dict, teacher: ModelResource
) -> list[dict]:
    if not 0 < config.test_fraction < 1:
        raise ValueError(f"config test_fraction={config.test_fraction}: must be between 0 and 1")
    fu = config.follow_up_items
    writer = teacher.backend() if config.generate_follow_ups and surveys else None
    params = SamplingParams(max_new_tokens=profile().survey_answer_tokens * 2, temperature=0.7, seed=config.seed)
    convs = []
    for raw in surveys.values():
        s = Survey(**raw)
        convs += survey_to_convs(s, split_items(s, config.test_fraction, config.seed), fu, config.seed, writer, params)
    context.add_output_metadata(
        {
            "conversations": len(convs),
            "train": sum(c.metadata.split == "train" for c in convs),
            "test": sum(c.metadata.split == "test" for c in convs),
            "multi_turn": sum(len(c.turns) > 2 for c in convs),
            "teacher_follow_ups": sum(c.metadata.generation_model != "survey" for c in convs),
        }
    )
    return _records(convs)


class CurateConfig(dg.Config):
    quality_threshold: float = 0.4
    near_duplicate_jaccard: float = 0.8
    hitl_share: float = 0.2
    drop_unsafe: bool = True


@dg.asset(
    group_name=GROUP,
    kinds={"parquet"},
    description="All sources merged (plus your own dialogues from data_assets/conversations/*.jsonl): quality_score, "
    "safety_flags, exact/near de-duplication, threshold filter, HITL mix.",
)
def conversations(
    context: dg.AssetExecutionContext,
    config: CurateConfig,
    synthetic_conversations: list[dict],
    hitl_conversations: list[dict],
    survey_conversations: list[dict],
    persona_specs: list[dict],
) -> list[dict]:
    load = lambda rows: [Conversation(**r) for r in rows]
    cfg = cur.CurateSettings(min_turns=profile().min_turns, **config.model_dump())
    extra = load_conversations(data_root() / "conversations", {s["id"] for s in persona_specs}, context.log.warning)
    synthetic = load(synthetic_conversations) + [c for c in extra if c.metadata.source != "hitl"]
    gold = load(hitl_conversations) + [c for c in extra if c.metadata.source == "hitl"]
    kept, report = cur.curate(synthetic, gold, load(survey_conversations), cfg)
    context.add_output_metadata(
        {
            "conversations": len(kept),
            "mean_quality": report["mean_quality"],
            "achieved_hitl_share": report["mix"]["achieved_hitl_share"],
            "per_source": md_table(
                [{"source": k, "input": report["input"].get(k, 0), "kept": v} for k, v in report["kept"].items()]
            ),
            "per_persona": md_table(
                [{"persona": k, "conversations": v} for k, v in sorted(report["per_persona"].items())]
            ),
            "dropped": md_table([{"reason": k, "count": v} for k, v in report["dropped"].items()]),
        }
    )
    return _records(kept)


class PairsConfig(dg.Config):
    export_customjson: bool = True


@dg.asset(
    group_name=GROUP,
    kinds={"parquet"},
    description="Unrolled prompt/completion pairs: [PERSONA: id] + history → the persona's next line (TRL conversational format).",
)
def sft_pairs(
    context: dg.AssetExecutionContext,
    config: PairsConfig,
    conversations: list[dict],
    persona_specs: list[dict],
    surveys: dict,
) -> list[dict]:
    defs = definitions(persona_specs, surveys)
    pairs = [pair for row in conversations for pair in unroll(Conversation(**row), defs[row["persona_id"]])]
    meta = {
        "pairs": len(pairs),
        "per_source": counts(p.source for p in pairs),
        "per_persona": counts(p.persona_id for p in pairs),
    }
    if config.export_customjson:
        path = layout().exports / "sft_pairs.customjson.jsonl"
        export_customjson(pairs, path)
        meta["customjson"] = dg.MetadataValue.path(str(path))
    context.add_output_metadata(meta)
    return [p.model_dump(mode="json") for p in pairs]
