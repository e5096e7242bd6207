"""Leak-free train/held-out splits for SFT pairs, and the audit that proves them.

Held-out loss, the RL before/after reward and the human-eval page are only worth
reading if no held-out prompt was trained on. Pairs are therefore split by
*group*, never by row:

- a HITL session is one group: its sibling paths ``#p0/#p1/#p2`` share a history
  prefix and its repeats ``#r1…`` are copies, so the key is the id before ``#``;
- every other conversation (synthetic, survey) is its own group;
- conversations that share an identical non-empty history (a survey item and its
  follow-up dialogue open with the same question) are merged into one group.

A group is held out when a SHA-256 of its key falls below ``fraction`` — stable
across runs, machines and data additions. Sources named in ``at_least_one``
(HITL) also keep one held-out group per persona that has two or more, because the
human-eval page needs a gold line from every persona the adapter never saw.
``audit`` re-checks any split from the outside: it reports each held-out item
that shares an id, a session or an identical history with a training item.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .contracts import Conversation
from .unroll import unroll


def base_key(conversation_id: str) -> str:
    """The conversation id without its path/repeat suffix: a HITL session for ``s#p1#r2``."""
    return conversation_id.split("#", 1)[0]


def history_key(pair: Mapping) -> str | None:
    """What the model sees before the target line, minus the system prompt; None for an empty history.

    The persona tag stays in, so the same question put to two personas is not a match; an
    empty history (the persona opens the dialogue) is the same for every dialogue of a
    persona and carries no content to leak.
    """
    if pair["turn_index"] == 0:
        return None
    return "\n".join(m["content"] for m in pair["prompt"] if m["role"] != "system")


def unit_hash(key: str) -> float:
    """A deterministic number in [0, 1] for a group key."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def group_keys(pairs: Iterable[Mapping]) -> dict[str, str]:
    """conversation id → group key (the smallest session key of its connected component)."""
    parent: dict[str, str] = {}

    def find(k: str) -> str:
        while parent.setdefault(k, k) != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    by_history: dict[str, str] = {}
    conv_ids = []
    for p in pairs:
        cid = p["conversation_id"]
        conv_ids.append(cid)
        find(base_key(cid))
        h = history_key(p)
        if h is not None:
            union(by_history.setdefault(h, base_key(cid)), base_key(cid))
    return {cid: find(base_key(cid)) for cid in conv_ids}


@dataclass
class Split:
    """Which pairs train and which are held out, and by which groups."""

    train: list[Mapping]
    heldout: list[Mapping]
    heldout_groups: set[str] = field(default_factory=set)

    def manifest(self) -> dict:
        """The JSON record the trainer keeps so checks and the human-eval page can re-read the split."""
        return {
            "train_ids": sorted({p["id"] for p in self.train}),
            "heldout_ids": sorted({p["id"] for p in self.heldout}),
            "heldout_groups": sorted(self.heldout_groups),
            "train_sessions": sorted({base_key(p["conversation_id"]) for p in self.train}),
            "heldout_sessions": sorted({base_key(p["conversation_id"]) for p in self.heldout}),
        }


def split_pairs(pairs: list[Mapping], fraction: float, at_least_one: tuple[str, ...] = ("hitl",)) -> Split:
    """Split whole groups by hash; see the module docstring for the unit and the per-persona rule."""
    if not 0 <= fraction < 1:
        raise ValueError(f"eval_fraction={fraction}: must be in [0, 1)")
    groups = group_keys(pairs)
    held = {g for g in set(groups.values()) if unit_hash(g) < fraction}
    strata: dict[tuple[str, str], set[str]] = {}
    for p in pairs:
        if p["source"] in at_least_one:
            strata.setdefault((p["source"], p["persona_id"]), set()).add(groups[p["conversation_id"]])
    for members in strata.values():
        if len(members) >= 2 and not members & held:
            held.add(min(members, key=unit_hash))
    everyone = set(groups.values())
    if not held and len(everyone) >= 2:  # tiny datasets: hold out one group rather than none
        held.add(min(everyone, key=unit_hash))
    train = [p for p in pairs if groups[p["conversation_id"]] not in held]
    heldout = [p for p in pairs if groups[p["conversation_id"]] in held]
    return Split(train, heldout, held)


def heldout_conversations(convs: list[Conversation], fraction: float) -> set[str]:
    """Ids of the conversations ``split_pairs`` holds out when SFT trains on these conversations' pairs."""
    pairs = [p.model_dump(mode="json") for c in convs for p in unroll(c, "")]
    return {p["conversation_id"] for p in split_pairs(pairs, fraction).heldout}


@dataclass(frozen=True)
class Leak:
    kind: str  # "id" | "session" | "history"
    heldout_id: str
    train_id: str

    def __str__(self) -> str:
        return f"held-out {self.heldout_id} shares its {self.kind} with training {self.train_id}"


def audit(train: Iterable[Mapping], heldout: Iterable[Mapping]) -> list[Leak]:
    """Every held-out pair that shares an id, a session or an identical non-empty history with training."""
    ids: dict[str, str] = {}
    sessions: dict[str, str] = {}
    histories: dict[str, str] = {}
    for p in train:
        ids.setdefault(p["id"], p["id"])
        sessions.setdefault(base_key(p["conversation_id"]), p["id"])
        if (h := history_key(p)) is not None:
            histories.setdefault(h, p["id"])
    leaks = []
    for p in heldout:
        found = {
            "id": ids.get(p["id"]),
            "session": sessions.get(base_key(p["conversation_id"])),
            "history": histories.get(h) if (h := history_key(p)) is not None else None,
        }
        leaks += [Leak(kind, p["id"], other) for kind, other in found.items() if other]
    return leaks


def dedupe_rows(rows: list[Mapping]) -> list[Mapping]:
    """Drop exact copies (HITL repeats ``#r1``) so each held-out line counts once in the eval loss."""
    seen: set[str] = set()
    out = []
    for r in rows:
        key = json.dumps([r["prompt"], r["completion"]], sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out
