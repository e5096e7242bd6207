"""Compatibility re-exports: trait, coherence and embedding judges now live in :mod:`persona_pipeline.judging`.

Kept so ``transcripts`` and older callers keep their import path; new code imports
from ``persona_pipeline.judging``.
"""

from .judging.embedding import EmbeddingJudge, embedding_judge, minilm_dir
from .judging.likelihood import answer_nll, likelihood_coherence
from .judging.llm import DIGIT_SCALE, judge_answers, number_tokens, score_prompts

__all__ = [
    "DIGIT_SCALE",
    "EmbeddingJudge",
    "answer_nll",
    "embedding_judge",
    "judge_answers",
    "likelihood_coherence",
    "minilm_dir",
    "number_tokens",
    "score_prompts",
]
