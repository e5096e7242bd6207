"""The general-chat share of the SFT mixture, and the number that says it worked.

``data_assets/general_chat.jsonl`` ships hand-written everyday requests with careful
reference answers (cooking, money, writing, science, travel…): a real "stay a normal
assistant" set, next to the base model's own answers to the role questions. A quarter of
it (by id hash) is never trained on: after SFT, base and adapter answer those prompts with
no persona in the prompt, and each answer is scored by MiniLM similarity to the written
reference answer — *retention*: does the adapter still answer like the assistant it was?
Paired per prompt (same prompt, base vs adapter), with n and a bootstrap CI.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from .contracts import ID_PATTERN

FILE = "general_chat.jsonl"


class ChatItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=ID_PATTERN)
    prompt: str = Field(min_length=3)
    answer: str = Field(min_length=1)


def load_general_chat(path: Path) -> list[ChatItem]:
    """Every line validated (file, line and field named on error); ids unique; a missing file is an empty set."""
    from .loaders import InputError, _validate, read_jsonl

    if not path.exists():
        return []
    items, seen = [], {}
    for n, raw in read_jsonl(path):
        item = _validate(ChatItem, raw, path, f"line {n}")
        if item.id in seen:
            raise InputError(f"{path}, line {n}: field 'id': '{item.id}' is a duplicate of line {seen[item.id]}")
        seen[item.id] = n
        items.append(item)
    return items


def heldout(item: ChatItem, fraction: float = 0.25) -> bool:
    """Held out of training for the retention number (stable: by id hash, not by position)."""
    return int(hashlib.sha256(item.id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction


def training_rows(items: list[ChatItem]) -> list[dict]:
    """The training part as SFT rows (no persona, no system prompt: a plain user request), source ``general``."""
    return [
        {
            "prompt": [{"role": "user", "content": it.prompt}],
            "completion": [{"role": "assistant", "content": it.answer}],
            "source": "general",
        }
        for it in items
        if not heldout(it)
    ]


def retention(base, adapter, items: list[ChatItem], n: int, max_new_tokens: int = 48) -> dict:
    """Held-out prompts answered greedily by ``base`` and ``adapter``; similarity to the reference, paired."""
    from .backends import SamplingParams
    from .consistency import qa_stability
    from .scaffolding import role_audit
    from .stats import compare

    test = [it for it in items if heldout(it)][:n]
    if not test:
        return {"prompts": 0}
    chats = [[{"role": "user", "content": it.prompt}] for it in test]
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0)
    refs = [it.answer for it in test]
    scores = {}
    for name, backend in (("base", base), ("adapter", adapter)):
        answers = backend.complete(chats, params)
        scores[name] = qa_stability(refs, answers)
        scores[f"{name}_scaffolding_share"] = role_audit(answers)["scaffolding_share"]
        scores[f"{name}_example"] = answers[0]
    c = compare(scores["adapter"], scores["base"], paired=True)
    return {
        "prompts": len(test),
        "base": round(sum(scores["base"]) / len(test), 4),
        "adapter": round(sum(scores["adapter"]) / len(test), 4),
        "diff": round(c.diff, 4),
        "ci": [round(c.ci_low, 4), round(c.ci_high, 4)],
        "adapter_scaffolding_share": scores["adapter_scaffolding_share"],
        "example": {"prompt": test[0].prompt, "base": scores["base_example"], "adapter": scores["adapter_example"]},
    }
