"""Coherence without a judge: how likely the *unsteered* local model finds an answer."""

from __future__ import annotations

import re
from collections.abc import Sequence

from .base import JudgeItem, Score


def answer_nll(backend, qa: list[tuple[str, str]], batch_size: int = 16) -> list[float | None]:
    """Mean negative log-likelihood per answer token, given the question, under a local model."""
    import torch

    tok, model = backend.tok, backend.model
    out: list[float | None] = []
    for start in range(0, len(qa), batch_size):
        enc = []
        for q, a in qa[start : start + batch_size]:
            prompt = tok.apply_chat_template(
                [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
            )
            p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
            enc.append((p_ids, tok(a, add_special_tokens=False)["input_ids"]))
        width = max(len(p) + len(a) for p, a in enc)
        ids = torch.tensor([p + a + [tok.pad_token_id] * (width - len(p) - len(a)) for p, a in enc])
        mask = torch.tensor([[1] * (len(p) + len(a)) + [0] * (width - len(p) - len(a)) for p, a in enc])
        keep = width - min(len(p) for p, _ in enc) + 1  # logits only from the first answer position on
        with torch.inference_mode():
            logits = model(
                input_ids=ids.to(model.device), attention_mask=mask.to(model.device), logits_to_keep=keep
            ).logits
            logp = torch.log_softmax(logits.float(), -1)
        for row, (p, a) in enumerate(enc):
            if not a:
                out.append(None)
                continue
            pos = torch.arange(len(p) - 1, len(p) + len(a) - 1) - (width - keep)
            out.append(float(-logp[row, pos, torch.tensor(a)].mean()))
    return out


def likelihood_coherence(
    backend, qa: list[tuple[str, str]], fluent_nll: float = 1.0, garbled_nll: float = 5.0
) -> list[float | None]:
    """0–100 coherence from how likely the *unsteered* model finds the answer, with loops penalised.

    Steering that breaks the model shows up as text its own base finds
    unlikely; repetition loops are likely but have few distinct words, so they
    are scaled down. A judge-free stand-in for a small local LLM judge that
    cannot grade coherence itself. Calibrated on SmolLM2-135M: its own unsteered
    answers score a mean token NLL of ≈ 0.8–1.2, over-steered gibberish 3–7.
    An empty answer scores 0 (it is not coherent), not a failure.
    """
    scores = []
    for (_, answer), nll in zip(qa, answer_nll(backend, qa)):
        if nll is None:
            scores.append(0.0)
            continue
        base = 100 * min(1.0, max(0.0, (garbled_nll - nll) / (garbled_nll - fluent_nll)))
        words = re.findall(r"\w+", answer.lower())
        distinct = len(set(words)) / len(words) if words else 0.0
        scores.append(round(base * min(1.0, distinct / 0.5) if len(words) >= 6 else base, 3))
    return scores


class LikelihoodCoherenceJudge:
    """Protocol judge over :func:`likelihood_coherence` (needs a local backend with ``tok`` and ``model``)."""

    name = "coherence_likelihood"
    signal = "base_likelihood"

    def __init__(self, backend):
        self.backend = backend

    def score(self, items: Sequence[JudgeItem]) -> list[Score]:
        qa = [(i.question, i.response) for i in items]
        return [Score(round(v / 100, 6)) for v in likelihood_coherence(self.backend, qa)] if qa else []
