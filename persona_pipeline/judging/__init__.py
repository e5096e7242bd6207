"""Judging: one protocol (:mod:`.base`), the judges behind it, and one place choosing them by purpose.

- :mod:`.base` — ``JudgeItem``, ``Score`` (0–1, reasoning, explicit failure), the ``Judge`` protocol;
- :mod:`.embedding` — the process-wide MiniLM, exemplar (trait/role) and persona voice judges;
- :mod:`.llm` — logprob and JSON LLM judges (persona reward, trait and coherence prompts);
- :mod:`.likelihood` — coherence from the local model's own likelihood;
- :mod:`.persona_id` — "which persona wrote this line?" classifiers, independent of the reward;
- :mod:`.reward` — scores on the [-1, 1] reward scale and the degeneracy penalty;
- :mod:`.choose` — which judge for ``reward``, ``search_fitness``, ``filter`` and ``evaluation``.

The JSON verdict judges (seed persona judge, persona-aware judge) live in ``eval_judges``.
"""

from .base import Judge, JudgeItem, Score

__all__ = ["Judge", "JudgeItem", "Score"]
