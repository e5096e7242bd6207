"""Using a trained persona simulator: definitions, next lines, adherence.

Shared by the models-stage checks, the CLI (``chat``, ``simulate``) and the
evaluation stage, so "ask the simulator for persona X's next line" means the
same prompt everywhere: the unrolled SFT prompt.
"""

from __future__ import annotations

from .backends import Backend, SamplingParams
from .contracts import PersonaSpec, Survey
from .judges import JudgeItem, persona_scores


def definitions(persona_specs: list[dict], surveys: dict | None = None, compact: bool = True) -> dict[str, str]:
    """Persona id → definition: compact for simulator prompts, full for judges (specs and survey people)."""
    out = {s["id"]: PersonaSpec(**s).definition(compact=compact) for s in persona_specs}
    for sid, raw in (surveys or {}).items():
        p = Survey(**raw).profile
        out[sid] = f"{p.name}, {p.description}. {p.bio} {p.values}"
    return out


def next_lines(backend: Backend, rows: list[dict], params: SamplingParams) -> list[str]:
    """``rows`` carry a ready ``prompt`` (see ``train_rl.rl_prompts``); one batched call."""
    return backend.complete([r["prompt"] for r in rows], params)


def adherence(judge: Backend, rows: list[dict], lines: list[str], method: str = "logprob") -> tuple[float, list[float | None]]:
    """Mean judge persona score in [-1, 1] of ``lines`` (failed judgements excluded, and returned)."""
    import json

    items = [JudgeItem(r["spec"], json.loads(r["history"]), line) for r, line in zip(rows, lines)]
    scores = persona_scores(judge, items, method)
    valid = [s for s in scores if s is not None]
    return (sum(valid) / len(valid) if valid else float("nan")), scores
