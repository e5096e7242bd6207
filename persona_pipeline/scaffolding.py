"""Does a simulator line stay a *user's* line? Scaffolding echoes and assistant-speak, found cheaply.

A simulator trained on ``[PERSONA: id]`` / ``[TOPIC: ...]`` / ``[HISTORY]`` prompts can learn
to continue the prompt instead of speaking: its "line" is then the scaffolding itself, or a
rendered history (``user: ...`` / ``assistant: ...``). One that slid back to its base model
speaks as the assistant ("How can I help you today?"). Either one passes a check that only
asks whether the adapter changed the output; these are what the role checks count.
"""

from __future__ import annotations

import re

from .quality import PERSONA_BREAK

SCAFFOLDING = re.compile(
    r"\[(PERSONA|TOPIC|HISTORY|Definition)\b|<empty>|^\s*(user|assistant|system)\s*:", re.IGNORECASE | re.MULTILINE
)


def echoes_scaffolding(line: str) -> bool:
    return bool(SCAFFOLDING.search(line))


def speaks_as_assistant(line: str) -> bool:
    return bool(PERSONA_BREAK.search(line))


def role_audit(lines: list[str]) -> dict:
    """Shares of lines that echo the prompt scaffolding or speak as the assistant, with the first offenders."""
    echo = [x for x in lines if echoes_scaffolding(x)]
    assistant = [x for x in lines if speaks_as_assistant(x)]
    n = max(1, len(lines))
    return {
        "lines": len(lines),
        "scaffolding_share": round(len(echo) / n, 3),
        "assistant_share": round(len(assistant) / n, 3),
        "examples": (echo + assistant)[:3],
    }


def distinct_share(lines: list[str]) -> float:
    """Distinct lines / lines (case and spacing folded): 1.0 = no line repeats, low = a loop."""
    folded = [" ".join(x.lower().split()) for x in lines]
    return len(set(folded)) / len(folded) if folded else 0.0
