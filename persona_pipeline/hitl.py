"""Human gold data: each alternative line becomes its own training path.

A writing-room session gives 2–3 gold lines per persona turn. Path ``j`` takes
alternative ``j`` at every persona turn (the primary line when a turn has fewer
alternatives), so one session yields up to three complete, coherent dialogues.

A session that ends by the persona's stop rule is marked by writing ``[END]`` after the
persona's last line (content and alternatives alike), or ``"ended_by_stop_rule": true`` in
the record's metadata. The marker is stripped from the line and recorded in the
conversation's metadata; ``unroll`` puts it back on the training target.
"""

from __future__ import annotations

import json

from .contracts import Conversation, ConversationMetadata, HitlRecord, Turn
from .prompts import split_end


def expand_paths(rec: HitlRecord) -> list[Conversation]:
    n_paths = 1 + max((len(t.alternatives) for t in rec.turns if t.role == "user"), default=0)
    convs = []
    for j in range(n_paths):
        turns, marked = [], False
        for t in rec.turns:
            if t.role == "user":
                lines = [t.content, *t.alternatives]
                line, marked = split_end(lines[j] if j < len(lines) else lines[0])
            else:
                line = t.content
            turns.append(Turn(role=t.role, content=line))
        marked = turns[-1].role == "user" and (marked or bool((rec.metadata or {}).get("ended_by_stop_rule")))
        convs.append(
            Conversation(
                id=f"{rec.id}#p{j}",
                persona_id=rec.persona_id,
                topic=rec.topic,
                persona_role="user",
                turns=turns,
                metadata=ConversationMetadata(
                    scenario_type=rec.scenario_type,
                    source="hitl",
                    generation_model=f"human:{rec.annotator}",
                    path=j,
                    ended_by_stop_rule=marked,
                    extra=json.dumps(rec.metadata, ensure_ascii=False, sort_keys=True) if rec.metadata else None,
                ),
            )
        )
    return convs


def mix_to_target(synthetic: int, hitl_paths: list[Conversation], hitl_share: float) -> tuple[list[Conversation], dict]:
    """Repeat HITL paths until they make up ``hitl_share`` of synthetic+HITL.

    Gold data is never discarded: when there is more HITL than the target, all
    unique paths are kept and the report shows the higher achieved share.
    Repeats get a ``#r{k}`` suffix so ids stay unique.
    """
    if not 0 <= hitl_share < 1:
        raise ValueError(f"hitl_share={hitl_share}: must be in [0, 1)")
    want = round(hitl_share * synthetic / (1 - hitl_share))
    out = list(hitl_paths)
    k = 1
    while hitl_paths and len(out) < want:
        out += [c.model_copy(update={"id": f"{c.id}#r{k}"}, deep=True) for c in hitl_paths[: want - len(out)]]
        k += 1
    total = synthetic + len(out)
    return out, {
        "target_hitl_share": hitl_share,
        "achieved_hitl_share": round(len(out) / total, 3) if total else 0.0,
        "synthetic": synthetic,
        "hitl": len(out),
        "unique_hitl_paths": len(hitl_paths),
    }
