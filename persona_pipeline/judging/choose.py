"""The ONE place that decides which judge serves which purpose.

Purposes:

- ``reward``: the GRPO reward (RL is optimised against it);
- ``search_fitness``: the CMA-ES fitness (the steering search is optimised against it);
- ``filter``: trait / coherence / role judges that decide which responses build persona vectors
  and which sweep point is "best";
- ``evaluation``: the leaderboard's evaluators and the judge compared with humans.

``judge`` is the configured judge model — anything with ``kind`` (``local`` for the
embedded model, else an endpoint), ``backend()`` and ``describe()`` (the Dagster
``ModelResource``). ``auto`` picks the MiniLM judges for the small local model,
which cannot grade adherence, traits or coherence itself, and the LLM judges for
an endpoint. Evaluation never trusts a judge a method was optimised on: every
evaluator carries a ``signal``, every optimised method records the signal it was
optimised against, and :func:`circular` names the pairs that must not be read as
independent evidence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .base import Judge
from .embedding import ExemplarJudge, VoiceJudge
from .likelihood import LikelihoodCoherenceJudge
from .llm import JsonRewardJudge, LogprobPersonaJudge, LogprobPromptJudge

PURPOSES = ("reward", "search_fitness", "filter", "evaluation")
_METHODS = {
    "reward": ("embedding", "logprob", "json"),
    "search_fitness": ("embedding", "logprob", "json"),
    "evaluation": ("embedding", "logprob", "json"),
    "filter": ("embedding", "logprob"),
}


def method(purpose: str, judge, choice: str = "auto") -> str:
    """``embedding`` | ``logprob`` | ``json`` for this purpose (``auto``: MiniLM for the local judge model)."""
    if purpose not in _METHODS:
        raise ValueError(f"judge purpose {purpose!r}: use one of {PURPOSES}")
    if choice == "auto":
        return "embedding" if judge.kind == "local" else "logprob"
    if choice not in _METHODS[purpose]:
        raise ValueError(f"config judge_method={choice!r}: use auto or one of {list(_METHODS[purpose])} for {purpose}")
    return choice


def persona_judge(purpose: str, judge, persona_specs: list[dict], surveys: dict | None = None, choice: str = "auto"):
    """The persona-adherence judge for ``reward``, ``search_fitness`` or a single ``evaluation`` score."""
    if purpose == "filter":
        raise ValueError("persona adherence is not a filter; use trait_judge / coherence_judge / role_method")
    m = method(purpose, judge, choice)
    if m == "embedding":
        from ..persona_simulator import voice_judge

        return voice_judge(persona_specs, surveys)
    return LogprobPersonaJudge(judge.backend()) if m == "logprob" else JsonRewardJudge(judge.backend())


def trait_judge(judge, trait, choice: str = "auto", backend=None) -> Judge:
    """Filter judge for one trait: its positive vs negative instructions (MiniLM) or its eval prompt (LLM)."""
    if method("filter", judge, choice) == "embedding":
        return ExemplarJudge(
            f"trait_{trait.trait}", [p.pos for p in trait.instructions], [p.neg for p in trait.instructions]
        )
    return LogprobPromptJudge(backend or judge.backend(), trait.eval_prompt, f"trait_{trait.trait}")


def coherence_judge(backend, prompt: str | None = None) -> Judge:
    """The local model's own likelihood when the judge is local (it cannot grade coherence), else the
    0–100 coherence prompt (``prompt``, from ``traits/coherence.txt``)."""
    if hasattr(backend, "tok"):
        return LikelihoodCoherenceJudge(backend)
    if prompt is None:
        raise ValueError("an endpoint coherence judge needs the coherence prompt")
    return LogprobPromptJudge(backend, prompt, "coherence")


def role_method(judge, choice: str = "auto") -> str:
    """How role rollouts are graded 0–3 (``transcripts.score_roles``): MiniLM for a local judge, else logprob."""
    return method("filter", judge, choice)


def spec_texts(judge, persona_specs: list[dict]) -> dict[str, str]:
    """The spec text an LLM judge reads: the full spec for endpoint judges; the compact one (who + traits)
    for the small local judge, which attends to it better and reads it hundreds of times."""
    from ..persona_simulator import definitions

    return definitions(persona_specs, compact=judge.kind == "local")


def _on(mode: str, judge, name: str) -> bool:
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"config {name}={mode!r}: use auto, on or off")
    return mode == "on" or (mode == "auto" and judge.kind != "local")


def evaluators(
    judge,
    persona_specs: list[dict],
    gold_lines: Mapping[str, Sequence[str]],
    profiles: Mapping | None = None,
    json_judge: str = "auto",
    logprob_judge: str = "auto",
) -> dict:
    """Every leaderboard evaluator by name: the MiniLM voice score, two persona-id classifiers trained
    on ``gold_lines`` (held-out gold + spec example lines) and — ``auto`` with an endpoint judge, ``on``
    to force — the 0–10 logprob reward judge and the JSON persona / persona-aware judges. Values are
    ``eval_judges`` judge functions; :func:`signal_of` says what each reads."""
    from .. import eval_judges as ej
    from .persona_id import PersonaIdClassifier

    specs = {s["id"]: s for s in persona_specs}
    out = {
        "voice": ej.protocol_judge(VoiceJudge({pid: _voice(s) for pid, s in specs.items()}), "voice"),
        "persona_id_ngram": ej.protocol_judge(PersonaIdClassifier(gold_lines, "ngram"), "persona_id_ngram"),
        "persona_id_minilm": ej.protocol_judge(PersonaIdClassifier(gold_lines, "minilm"), "persona_id_minilm"),
    }
    if _on(logprob_judge, judge, "logprob_judge"):
        out["reward_logprob"] = ej.protocol_judge(
            LogprobPersonaJudge(judge.backend()), "reward_logprob", spec_texts(judge, persona_specs)
        )
    if _on(json_judge, judge, "json_judge"):
        out["persona_judge"] = ej.persona_judge(judge.backend(), specs)
        out["persona_aware"] = ej.persona_aware_judge(judge.backend(), profiles or {})
    return out


def optimised_signal(purpose: str, judge, persona_specs: list[dict], choice: str = "auto") -> str:
    """The signal a method optimised for ``purpose`` read (what :func:`circular` compares evaluators with)."""
    if purpose == "filter":
        if method(purpose, judge, choice) == "embedding":
            return ExemplarJudge.signal
        return f"llm_logprob:{getattr(judge.backend(), 'name', judge.describe())}"
    return persona_judge(purpose, judge, persona_specs, choice=choice).signal


def primary_evaluator(judge, persona_specs: list[dict]):
    """The one evaluator compared with human ratings: the seed's JSON judge with an endpoint, else the voice score."""
    from .. import eval_judges as ej

    specs = {s["id"]: s for s in persona_specs}
    if judge.kind == "local":
        return ej.protocol_judge(VoiceJudge({pid: _voice(s) for pid, s in specs.items()}), "voice")
    return ej.persona_judge(judge.backend(), specs)


def _voice(spec) -> list[str]:
    from ..contracts import PersonaSpec

    return (spec if isinstance(spec, PersonaSpec) else PersonaSpec(**spec)).voice()


def signal_of(fn) -> str:
    """What an evaluator's number is computed from (``signal`` attribute; LLM judges: their model)."""
    return getattr(fn, "signal", None) or f"llm:{getattr(getattr(fn, 'backend', None), 'name', 'unknown')}"


def shares_signal(a: str | None, b: str | None) -> bool:
    """Same signal, or two LLM signals read from the same judge model."""
    if not a or not b:
        return False
    if a == b:
        return True
    return a.startswith("llm") and b.startswith("llm") and a.split(":", 1)[-1] == b.split(":", 1)[-1]


def circular(optimised_on: Mapping[str, str | None], signals: Mapping[str, str]) -> dict[str, list[str]]:
    """method → the evaluators that share the signal the method was optimised against."""
    return {m: sorted(e for e, sig in signals.items() if shares_signal(opt, sig)) for m, opt in optimised_on.items()}
