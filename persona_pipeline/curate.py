"""Merge every conversation source into one scored, flagged, de-duplicated set.

Order matters: gold sources (HITL, survey) go first so de-duplication keeps
them; HITL repetition to the target mix happens after de-duplication because
those repeats are deliberate. Survey test items never pass.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from .contracts import Conversation
from .hitl import mix_to_target
from .quality import dedupe, quality_score, safety_flags


@dataclass
class CurateSettings:
    min_turns: int = 8
    quality_threshold: float = 0.4
    near_duplicate_jaccard: float = 0.8
    hitl_share: float = 0.2
    drop_unsafe: bool = True


def score(conv: Conversation, min_turns: int) -> Conversation:
    need = min_turns if conv.persona_role == "user" else 2  # survey Q&A is short by design
    q, reasons = quality_score(conv, min_turns=need)
    conv.metadata.quality_score = q
    conv.metadata.safety_flags = safety_flags(conv)
    conv.metadata.filter_reason = ",".join(reasons) or None
    return conv


def curate(synthetic: list[Conversation], hitl: list[Conversation], survey: list[Conversation], cfg: CurateSettings):
    """Return (kept conversations, report dict with counts per source, persona and reason)."""
    dropped: Counter = Counter()
    survey_train = [c for c in survey if c.metadata.split == "train"]
    dropped["survey_test_held_out"] = len(survey) - len(survey_train)
    scored = [score(c, cfg.min_turns) for c in [*hitl, *survey_train, *synthetic]]
    unique, dupes = dedupe(scored, cfg.near_duplicate_jaccard)
    for reason in dupes.values():
        dropped[reason.split(":")[0]] += 1
    kept = []
    for c in unique:
        if cfg.drop_unsafe and c.metadata.safety_flags:
            dropped["unsafe"] += 1
        elif c.metadata.quality_score < cfg.quality_threshold:
            dropped[f"low_quality<{cfg.quality_threshold}"] += 1
        else:
            kept.append(c)
    syn = [c for c in kept if c.metadata.source == "synthetic"]
    hitl_kept = [c for c in kept if c.metadata.source == "hitl"]
    hitl_mixed, mix = mix_to_target(len(syn), hitl_kept, cfg.hitl_share)
    final = syn + hitl_mixed + [c for c in kept if c.metadata.source == "survey"]
    report = {
        "input": dict(Counter(c.metadata.source for c in [*synthetic, *hitl, *survey])),
        "kept": dict(Counter(c.metadata.source for c in final)),
        "per_persona": dict(Counter(c.persona_id for c in final)),
        "dropped": dict(+dropped),
        "mix": mix,
        "mean_quality": round(sum(c.metadata.quality_score for c in final) / max(1, len(final)), 3),
    }
    return final, report
