"""Conversations and SFT pairs as Hugging Face-ready datasets (JSONL and Parquet).

The files load with ``datasets.load_dataset("json" | "parquet", data_files=...)`` and go
straight into TRL's ``SFTTrainer``: SFT pairs are conversational prompt/completion rows
(completion-only loss), conversations are ``messages`` rows. Identifying columns (ids,
persona, source, split) ride along; the conversations' metadata is one JSON string column,
so rows whose metadata differ still share one schema. nanochat's CustomJSON export stays
in ``unroll.export_customjson``.
"""

from __future__ import annotations

import json
from pathlib import Path

from .contracts import Conversation, SftPair
from .layout import layout
from .storage import atomic_path, write_records


def sft_rows(pairs: list[SftPair]) -> list[dict]:
    return [
        {
            "id": p.id,
            "persona_id": p.persona_id,
            "source": p.source,
            "conversation_id": p.conversation_id,
            "turn_index": p.turn_index,
            "prompt": [m.model_dump() for m in p.prompt],
            "completion": [m.model_dump() for m in p.completion],
        }
        for p in pairs
    ]


def conversation_rows(convs: list[Conversation]) -> list[dict]:
    """One row per dialogue; ``persona_role`` says which side of ``messages`` the persona speaks."""
    return [
        {
            "id": c.id,
            "persona_id": c.persona_id,
            "persona_role": c.persona_role,
            "topic": c.topic,
            "scenario_type": c.metadata.scenario_type,
            "source": c.metadata.source,
            "split": c.metadata.split,
            "messages": [{"role": t.role, "content": t.content} for t in c.turns],
            "metadata": json.dumps(c.metadata.model_dump(mode="json"), ensure_ascii=False, sort_keys=True),
        }
        for c in convs
    ]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def write_dataset(rows: list[dict], folder: Path, name: str) -> dict[str, Path]:
    """``<name>.jsonl`` and ``<name>.parquet`` under ``folder``, each written atomically."""
    paths = {"jsonl": folder / f"{name}.jsonl", "parquet": folder / f"{name}.parquet"}
    write_jsonl(paths["jsonl"], rows)
    write_records(paths["parquet"], rows)
    return paths


def export_from_assets(home: Path) -> dict[str, dict[str, Path]]:
    """Export the stored ``conversations`` and ``sft_pairs`` asset values to ``<home>/exports/``."""
    from .storage import read_records

    assets, out, exports = layout(home).assets, {}, layout(home).exports
    if (assets / "conversations.parquet").exists():
        convs = [Conversation(**r) for r in read_records(assets / "conversations.parquet")]
        out["conversations"] = write_dataset(conversation_rows(convs), exports, "conversations")
    if (assets / "sft_pairs.parquet").exists():
        pairs = [SftPair(**r) for r in read_records(assets / "sft_pairs.parquet")]
        out["sft_pairs"] = write_dataset(sft_rows(pairs), exports, "sft_pairs")
    return out
