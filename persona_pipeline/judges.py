"""Compatibility re-exports: the persona reward judges now live in :mod:`persona_pipeline.judging`.

Kept so ``train_rl`` keeps its import path; new code imports from
``persona_pipeline.judging``. (``trait_judge`` is gone: its judges are in
``judging.embedding``, ``judging.llm`` and ``judging.likelihood`` — no import cycle.)
"""

from .judging.base import JudgeItem
from .judging.embedding import VoiceJudge, voice_scores
from .judging.llm import LOGPROB_USER, REWARD_SYSTEM, REWARD_USER, logprob_score, parse_score, reward_chat
from .judging.reward import degeneracy_penalty, persona_scores

__all__ = [
    "LOGPROB_USER",
    "REWARD_SYSTEM",
    "REWARD_USER",
    "JudgeItem",
    "VoiceJudge",
    "degeneracy_penalty",
    "logprob_score",
    "parse_score",
    "persona_scores",
    "reward_chat",
    "voice_scores",
]
