"""Role-play transcripts and contrastive trait responses, generated in batches and resumable.

Role transcripts follow the Assistant Axis protocol: every (system prompt ×
question × rollout) of a role, kept with its indices so activations can be
joined back, and a 0–3 role-adherence score so later stages can keep only
fully-expressed rollouts. Trait responses follow the persona-vectors protocol:
each extraction question answered under a positive and a negative instruction
("You are a(n) {trait} assistant." / "You are a helpful assistant."), scored
0–100 for trait expression and for coherence.

Generation is chunked; each finished chunk is appended to a work file keyed by
a fingerprint of everything that shapes the output, so a killed run resumes
where it stopped and a rerun with the same inputs generates nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from .backends import Backend, SamplingParams
from .contracts import RoleSpec, Trait


def row_key(row: dict, fields: tuple[str, ...]) -> str:
    return "/".join(str(row[f]) for f in fields)


class ResumableRows:
    """Append-only JSONL of finished rows under ``root/<fingerprint>.jsonl``.

    A truncated last line (SIGKILL mid-write) is ignored, so the row is simply
    generated again; rows are keyed, so nothing is duplicated.
    """

    def __init__(self, root: Path, fingerprint: str, key_fields: tuple[str, ...]):
        self.path, self.key_fields = root / f"{fingerprint}.jsonl", key_fields

    def done(self) -> dict[str, dict]:
        found: dict[str, dict] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                found[row_key(row, self.key_fields)] = row
        return found

    def append(self, rows: list[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torn = self.path.exists() and self.path.stat().st_size and not self.path.read_bytes().endswith(b"\n")
        with self.path.open("a") as f:
            f.write(("\n" if torn else "") + "".join(json.dumps(r) + "\n" for r in rows))
            f.flush()


def fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def generate_rows(
    backend: Backend,
    rows: list[dict],
    params: SamplingParams,
    work: ResumableRows | None = None,
    chunk: int = 64,
    on_chunk: Callable[[int, int], None] | None = None,
) -> list[dict]:
    """Fill ``response`` for every row (its ``chat`` is the prompt), skipping rows finished earlier."""
    done = work.done() if work else {}
    todo = [r for r in rows if work is None or row_key(r, work.key_fields) not in done]
    for start in range(0, len(todo), chunk):
        part = todo[start : start + chunk]
        seed = None if params.seed is None else params.seed + start
        texts = backend.complete([r["chat"] for r in part], params.model_copy(update={"seed": seed}))
        finished = [{**r, "response": t} for r, t in zip(part, texts)]
        if work:
            work.append(finished)
        done.update({row_key(r, work.key_fields) if work else str(start + i): r for i, r in enumerate(finished)})
        if on_chunk:
            on_chunk(min(start + chunk, len(todo)), len(todo))
    if work is None:
        return list(done.values())
    return [done[row_key(r, work.key_fields)] for r in rows]


ROLE_KEY = ("role", "system_prompt_idx", "question_idx", "rollout_idx")
TRAIT_KEY = ("trait", "polarity", "instruction_idx", "question_idx", "sample_idx")


def role_rows(role: RoleSpec, questions: list[str], n_prompts: int, n_questions: int, rollouts: int) -> list[dict]:
    """Every (system prompt × question × rollout) of one role, with indices for joining activations."""
    return [
        {
            "role": role.role,
            "system_prompt_idx": p,
            "question_idx": q,
            "rollout_idx": r,
            "system_prompt": sp,
            "question": qu,
            "chat": [{"role": "system", "content": sp}, {"role": "user", "content": qu}],
        }
        for p, sp in enumerate(role.system_prompts[:n_prompts])
        for q, qu in enumerate(questions[:n_questions])
        for r in range(rollouts)
    ]


def trait_system_prompt(trait: str, instruction: str, positive: bool) -> str:
    who = trait if positive else "helpful"
    article = "an" if who[0] in "aeiou" else "a"
    return f"You are {article} {who} assistant. {instruction}"


def trait_rows(trait: Trait, n_pairs: int, n_questions: int, samples: int, questions: str = "extract") -> list[dict]:
    """Positive and negative prompts for every (instruction pair × question × sample)."""
    qs = trait.extract_questions if questions == "extract" else trait.eval_questions
    rows = []
    for i, pair in enumerate(trait.instructions[:n_pairs]):
        for q, question in enumerate(qs[:n_questions]):
            for s in range(samples):
                for polarity, text in (("pos", pair.pos), ("neg", pair.neg)):
                    system = trait_system_prompt(trait.trait, text, polarity == "pos")
                    rows.append(
                        {
                            "trait": trait.trait,
                            "polarity": polarity,
                            "instruction_idx": i,
                            "question_idx": q,
                            "sample_idx": s,
                            "system_prompt": system,
                            "question": question,
                            "chat": [{"role": "system", "content": system}, {"role": "user", "content": question}],
                        }
                    )
    return rows


def mean_score(xs) -> float | None:
    """Mean of the scores a judge gave (None where it failed), rounded for tables; None if it gave none."""
    vals = [x for x in xs if x is not None]
    return round(sum(vals) / len(vals), 3) if vals else None


def score_answers(rows: list[dict], trait: Trait, judge, choice: str, backend) -> str:
    """Add ``trait_score`` and ``coherence`` (0–100, None where the judge failed) in place; returns
    the trait judge's method. Both are ``filter`` judges chosen by ``judging.choose``: for the
    small local judge the trait score is MiniLM similarity to the trait's instructions and
    coherence the local model's own likelihood of the answer; with an endpoint, the LLM prompts.
    """
    from .judging import JudgeItem, choose
    from .judging.base import values
    from .loaders import load_coherence_prompt
    from .settings import data_root

    items = [JudgeItem("", [{"role": "user", "content": r["question"]}], r["response"]) for r in rows]
    trait_judge = choose.trait_judge(judge, trait, choice, backend)
    prompt = None if hasattr(backend, "tok") else load_coherence_prompt(data_root() / "traits")
    coherence = choose.coherence_judge(backend, prompt)
    for r, t, c in zip(rows, values(trait_judge.score(items), 0, 100), values(coherence.score(items), 0, 100)):
        r["trait_score"], r["coherence"] = t, c
    return choose.method("filter", judge, choice)


def trait_separation(rows: list[dict]) -> dict:
    """Mean trait score of positive vs negative answers; ``separates`` only when positive scores higher and, once
    there are enough questions to say (``study.MIN_QUESTIONS``), the paired difference's 95 % CI (resampling
    questions) is clear of 0 — a higher mean alone is a coin flip when the judge cannot tell them apart."""
    from .stats import rounded
    from .study import MIN_QUESTIONS, separation

    pos = mean_score([r["trait_score"] for r in rows if r["polarity"] == "pos"])
    neg = mean_score([r["trait_score"] for r in rows if r["polarity"] == "neg"])
    paired = separation(rows)
    sized = paired["questions"] >= MIN_QUESTIONS
    return {
        "pos_trait": pos,
        "neg_trait": neg,
        "coherence": mean_score([r["coherence"] for r in rows]),
        "diff_ci": [rounded(paired["ci_low"], 2), rounded(paired["ci_high"], 2)],
        "paired_questions": paired["questions"],
        "separates": pos is not None and neg is not None and pos > neg and (not sized or paired["ci_low"] > 0),
    }
