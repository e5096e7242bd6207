"""Evaluation group, human half: the blind rating page, the ratings it collects, and how
well the judge agrees with people (an asset check with a configurable threshold)."""

import json
import math

import dagster as dg

from persona_pipeline import human_eval as he
from persona_pipeline import human_ratings as hr
from persona_pipeline import stats
from persona_pipeline.defs.assets._common import GPU, STEERING_INS, ProfileConfig, md_table
from persona_pipeline.defs.assets.evaluation import GROUP
from persona_pipeline.defs.resources import ModelResource
from persona_pipeline.eval_dialogues import next_lines
from persona_pipeline.eval_methods import METHODS, contestants
from persona_pipeline.layout import layout
from persona_pipeline.policy import checkpoint_backends
from persona_pipeline.settings import ratings_dir
from persona_pipeline.splits import base_key


class HumanEvalConfig(ProfileConfig):
    PROFILE = {"items_per_persona": "human_eval_items", "max_new_tokens": "eval_persona_tokens"}

    items_per_persona: int | None = None
    methods: list[str] = list(METHODS)
    max_new_tokens: int | None = None  # None → profile (eval_persona_tokens)
    seed: int = 0


@dg.asset(
    group_name=GROUP,
    kinds={"html"},
    **GPU,
    ins=STEERING_INS,
    description="A blind rating page: HITL history + the human's own line + every method's line under shuffled "
    "labels, 1–5 each. `persona-pipeline rate` serves it and saves submissions for `human_ratings`.",
)
def human_eval_page(
    context: dg.AssetExecutionContext,
    config: HumanEvalConfig,
    hitl_conversations: list[dict],
    persona_specs: list[dict],
    base_model: dict,
    sft_adapter: dict,
    rl_adapter: dict,
    steering_sweep: list[dict],
    persona_vectors: dict,
    cmaes_steering: dict,
    judge: ModelResource,
) -> dict:
    trained = set(sft_adapter["split"]["train_sessions"])
    ctx = he.heldout_contexts(hitl_conversations, config.items_per_persona, trained)
    racers = contestants(persona_specs, cmaes_steering, steering_sweep, persona_vectors, config.methods)
    backends = checkpoint_backends(base_model, sft_adapter, rl_adapter)
    lines = next_lines(racers, ctx, backends, config.max_new_tokens, config.seed)
    items = [
        he.EvalItem(
            id=c["id"],
            persona_id=c["persona_id"],
            history=c["history"],
            reference=c["reference"],
            candidates=lines[c["id"]],
        )
        for c in ctx
        if lines.get(c["id"])
    ]
    page_dir = layout().human_eval
    key = he.write_page(page_dir, items, config.seed)
    judged = he.judge_candidates(items, persona_specs, judge)
    context.add_output_metadata(
        {
            "items": len(items),
            "heldout_hitl_sessions": len({base_key(c["id"]) for c in ctx}),
            "page": dg.MetadataValue.path(str(page_dir / "index.html")),
            "serve": dg.MetadataValue.md(
                f"`persona-pipeline rate` → http://127.0.0.1:8765/ — ratings land in `{ratings_dir()}`"
            ),
            "page_id": key["page_id"],
            "methods": ", ".join(key["methods"]),
        }
    )
    return {
        "page_dir": str(page_dir),
        "page_id": key["page_id"],
        "judge": judged,
        "items": [it.model_dump() for it in items],
    }


class HumanRatingsConfig(dg.Config):
    min_agreement: float = 0.3  # Spearman ρ between judge adherence and mean human rating
    min_ratings: int = 5  # below this the agreement check is not judged (warns "too few ratings")


@dg.asset(
    group_name=GROUP,
    kinds={"json"},
    description="Human ratings ingested from the rating files (served page or downloaded JSON), joined to methods; "
    "a sensor materialises this when new files arrive.",
)
def human_ratings(context: dg.AssetExecutionContext, config: HumanRatingsConfig, human_eval_page: dict) -> dict:
    rows = hr.load_ratings(ratings_dir(), key=human_eval_page["page_dir"])
    summary = hr.summarise(rows)
    pairs = [(human_eval_page["judge"].get(f"{r['item_id']}|{r['method']}"), r["rating"]) for r in rows]
    agree = stats.judge_human_agreement([j for j, _ in pairs], [h for _, h in pairs]) if rows else {"n": 0}
    context.add_output_metadata(
        {
            "ratings": len(rows),
            "raters": len({r["rater"] for r in rows}),
            "folder": dg.MetadataValue.path(str(ratings_dir())),
            "by_method": md_table(summary["by_method"]),
            "judge_human_agreement": json.dumps(agree, default=str),
        }
    )
    return {
        "rows": rows,
        "summary": summary,
        "agreement": agree,
        "min_agreement": config.min_agreement,
        "min_ratings": config.min_ratings,
    }


@dg.asset_check(
    asset="human_ratings",
    description="The LLM judge ranks lines like people do: Spearman ρ(judge, human) ≥ "
    "human_ratings' min_agreement once enough ratings exist.",
)
def judge_agrees_with_humans(human_ratings: dict) -> dg.AssetCheckResult:
    agree, n = human_ratings["agreement"], human_ratings["agreement"].get("n", 0)
    if n < human_ratings["min_ratings"]:  # too little data is never a pass
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "status": "skipped: too few ratings",
                "n": n,
                "note": f"{n} rated line(s) joined to judge scores; agreement needs ≥ {human_ratings['min_ratings']}",
            },
        )
    rho = agree.get("spearman")
    ok = rho is not None and not math.isnan(rho) and rho >= human_ratings["min_agreement"]
    return dg.AssetCheckResult(
        passed=bool(ok),
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "n": n,
            "spearman": rho,
            "agreement_rate": agree.get("agreement_rate"),
            "threshold": human_ratings["min_agreement"],
        },
    )
