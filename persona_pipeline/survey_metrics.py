"""Survey replication: ask a model the held-out survey items and score it against the person.

Two conditions are compared on the same items:

* ``trained`` — the persona simulator (SFT/RL adapter) asked *as the person*, through the
  exact prompt the survey training pairs were unrolled with (simulator system prompt with
  the survey definition, then ``[PERSONA: id]`` and the question as the only history turn).
  Anything else would measure the model on prompts it never saw in training.
* ``baseline`` — a prompt-only model that knows only the profile (name, description,
  demographics, bio). It answers with explicit format instructions because, unlike the
  trained model, nothing taught it the survey's answer style.

Scoring follows the survey guide's protocol: Likert exact and within-1 accuracy, stance
alignment, embedding similarity to the person's own answer + reasoning, consistency over
rephrased pairs, and the composite fidelity score with its four interpretation bands.
Unparseable answers are never dropped or defaulted: they count as misses and lower the
parse rate, so a model cannot look accurate by answering less.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import BaseModel

from .backends import Backend, SamplingParams
from .contracts import Survey, SurveyItem
from .prompts import simulator_prompt
from .survey import answer_text
from .survey_parse import _norm, _scale, parse_answer, parse_choice, parse_likert  # noqa: F401  (re-exported)

Condition = Literal["trained", "baseline"]
CONDITIONS: tuple[str, ...] = ("trained", "baseline")
Encoder = Callable[[list[str]], Any]  # texts -> (n, d) array-like of embeddings

# Composite fidelity (survey guide): 30 % similarity, 15 % consistency, 15 % stance, 40 % human.
GUIDE_WEIGHTS = {"similarity": 0.30, "consistency": 0.15, "stance": 0.15, "human": 0.40}
# Guide bands, lower bound inclusive, checked top-down.
BANDS = ((0.90, "excellent"), (0.75, "good"), (0.60, "fair"), (0.0, "poor"))
# Per-item response similarity (survey guide): semantic 0.4, stance 0.4, phrase overlap 0.2.
RESPONSE_WEIGHTS = {"semantic": 0.4, "stance": 0.4, "phrase": 0.2}
# Two open answers to a rephrased pair count as consistent at or above this MiniLM cosine:
# unrelated sentences sit near 0–0.1, the person's own reworded answers around 0.4.
OPEN_PAIR_THRESHOLD = 0.35


# --------------------------------------------------------------------------- prompts


def survey_definition(survey: Survey) -> str:
    """The definition string the survey SFT pairs were unrolled with (shared with ``simulator``)."""
    from .persona_simulator import definitions

    return definitions([], {survey.profile.id: survey.model_dump()})[survey.profile.id]


def format_hint(item: SurveyItem) -> str:
    """Answer-format instruction for one item kind (what the parser is best at reading)."""
    if item.kind == "likert":
        lo, hi = _scale(item)
        if item.scale_labels:
            legend = ", ".join(f"{lo + k} = {lab}" for k, lab in enumerate(item.scale_labels))
        else:
            legend = f"{lo} = strongly disagree, {hi} = strongly agree"
        return (
            f"Start your reply with one whole number from {lo} to {hi} ({legend}), then give one short sentence on why."
        )
    if item.kind == "choice":
        listed = "\n".join(f"- {o}" for o in item.options or [])
        return (
            "Pick exactly one of these options and repeat it word for word, "
            f"then give one short sentence on why:\n{listed}"
        )
    return "Answer in two or three sentences, speaking as yourself."


def trained_prompt(survey: Survey, item: SurveyItem, with_hint: bool = False) -> list[dict]:
    """In-distribution prompt for the persona simulator.

    Survey training pairs carry the bare question as the only history turn, so the
    hint is off by default; switching it on trades distribution match for parse rate.
    """
    question = item.question + (f"\n\n{format_hint(item)}" if with_hint else "")
    return simulator_prompt(survey.profile.id, survey_definition(survey), [{"role": "user", "content": question}])


def baseline_system(survey: Survey) -> str:
    """Demographics-only persona prompt: who the person is, nothing about their opinions."""
    p = survey.profile
    facts = "\n".join(f"- {k.replace('_', ' ')}: {v}" for k, v in p.demographics.items())
    return (
        f"You are {p.name}, {p.description}. Answer every question in the first person, "
        "as this person honestly would, and never mention being an AI or a language model.\n\n"
        f"About you:\n{p.bio}" + (f"\n\nBackground facts:\n{facts}" if facts else "")
    )


def baseline_prompt(survey: Survey, item: SurveyItem, with_hint: bool = True) -> list[dict]:
    """Prompt-only baseline: profile as system prompt, question plus format instruction."""
    if item.kind == "likert":
        body = f'How much do you agree with this statement?\n"{item.question}"'
    else:
        body = item.question
    if with_hint:
        body += f"\n\n{format_hint(item)}"
    return [{"role": "system", "content": baseline_system(survey)}, {"role": "user", "content": body}]


def _items(survey: Survey, item_ids: Sequence[str]) -> list[SurveyItem]:
    by_id = {i.id: i for i in survey.items}
    unknown = [i for i in item_ids if i not in by_id]
    if unknown:
        raise ValueError(f"survey '{survey.profile.id}' has no items {unknown}")
    return [by_id[i] for i in item_ids]


def build_prompts(
    survey: Survey, item_ids: Sequence[str], condition: Condition, with_hint: bool | None = None
) -> list[list[dict]]:
    """One chat per item for ``condition``; ``with_hint=None`` means the condition's default."""
    items = _items(survey, item_ids)
    if condition == "trained":
        return [trained_prompt(survey, it, bool(with_hint)) for it in items]
    if condition == "baseline":
        return [baseline_prompt(survey, it, True if with_hint is None else with_hint) for it in items]
    raise ValueError(f"unknown condition {condition!r}; expected one of {CONDITIONS}")


def answer_items(
    backend: Backend,
    survey: Survey,
    item_ids: Sequence[str],
    condition: Condition,
    max_new_tokens: int = 96,
    with_hint: bool | None = None,
) -> dict[str, str]:
    """Ask every item in one greedy batch; returns item id → raw answer text (in order)."""
    chats = build_prompts(survey, item_ids, condition, with_hint)
    texts = backend.complete(chats, SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, seed=0))
    if len(texts) != len(chats):
        raise RuntimeError(
            f"backend {getattr(backend, 'name', backend)!r} returned {len(texts)} answers for {len(chats)} prompts"
        )
    return dict(zip(item_ids, texts))


# --------------------------------------------------------------------------- scoring


class ItemScore(BaseModel):
    """One held-out item: the person's answer, the model's, and every per-item metric."""

    item_id: str
    category: str
    kind: str
    question: str
    expected: int | str
    expected_text: str
    answer: str
    parsed: int | str | None
    parsed_ok: bool
    exact: bool | None  # likert value / choice option identical; None for open items
    within1: bool | None  # likert only
    abs_error: int | None  # likert only, None when unparsed
    stance_match: bool | None  # same agree/neutral/disagree side (likert) or same option (choice)
    stance_score: float | None  # guide: same side 1, one side neutral 0.5, opposite 0
    similarity: float  # MiniLM cosine to the person's answer + reasoning, clipped to [0, 1]
    phrase_overlap: float  # Jaccard of content words
    response_similarity: float  # guide's 0.4 semantic + 0.4 stance + 0.2 phrase


class PairScore(BaseModel):
    """A rephrased pair: do the model's two answers agree, and did the person's?"""

    item_id: str
    rephrase_id: str
    category: str
    kind: str
    model: tuple[int | str | None, int | str | None]
    person: tuple[int | str, int | str]
    model_consistent: bool
    person_consistent: bool
    model_cosine: float | None = None  # open pairs only
    person_cosine: float | None = None


def fidelity_band(score: float | None) -> str | None:
    """Guide bands: ≥ 0.90 excellent, ≥ 0.75 good, ≥ 0.60 fair, else poor."""
    if score is None:
        return None
    return next(name for floor, name in BANDS if score >= floor)


def fidelity_score(
    similarity: float | None, consistency: float | None, stance: float | None, human: float | None = None
) -> tuple[float | None, dict[str, float]]:
    """Guide composite, renormalised over the components that exist.

    The guide weighs similarity .30, consistency .15, stance .15 and human ratings .40.
    Without human ratings (the automated pipeline) the three automated weights are
    rescaled to sum to 1 (.50/.25/.25), keeping their guide ratios; a component with no
    data (e.g. no rephrased pair among the items) is likewise left out, never scored 0.
    ``human`` is the mean 1–5 rating divided by 5, as in the guide.
    """
    parts = {"similarity": similarity, "consistency": consistency, "stance": stance, "human": human}
    present = {k: v for k, v in parts.items() if v is not None}
    total = sum(GUIDE_WEIGHTS[k] for k in present)
    if not present or total == 0:
        return None, {}
    weights = {k: GUIDE_WEIGHTS[k] / total for k in present}
    return round(sum(weights[k] * present[k] for k in present), 4), {k: round(w, 4) for k, w in weights.items()}


def _side(item: SurveyItem, value: int) -> int:
    lo, hi = _scale(item)
    mid = (lo + hi) / 2
    return (value > mid) - (value < mid)


def _jaccard(a: str, b: str) -> float:
    wa, wb = set(re.findall(r"\b\w{3,}\b", a.lower())), set(re.findall(r"\b\w{3,}\b", b.lower()))
    return len(wa & wb) / len(wa | wb) if wa and wb else 0.0


def _embed(encoder: Encoder, texts: list[str]) -> dict[str, Any]:
    import numpy as np

    uniq = sorted({t for t in texts if t.strip()})
    if not uniq:
        return {}
    vecs = np.asarray(encoder(uniq), dtype=np.float64)
    vecs = vecs / np.clip(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12, None)
    return dict(zip(uniq, vecs))


def _cos(emb: dict[str, Any], a: str, b: str) -> float:
    if a not in emb or b not in emb:
        return 0.0
    return float(min(1.0, max(0.0, float(emb[a] @ emb[b]))))


def _score_item(item: SurveyItem, text: str, emb: dict[str, Any]) -> ItemScore:
    expected_text = answer_text(item)
    parsed = parse_answer(item, text)
    exact = within1 = stance_match = None
    abs_error = stance_score = None
    if item.kind == "likert":
        exact = parsed == item.answer
        abs_error = None if parsed is None else abs(int(parsed) - int(item.answer))
        within1 = abs_error is not None and abs_error <= 1
        if parsed is None:
            stance_match, stance_score = False, 0.0
        else:
            a, b = _side(item, int(parsed)), _side(item, int(item.answer))
            stance_match = a == b
            stance_score = 1.0 if a == b else (0.5 if 0 in (a, b) else 0.0)
    elif item.kind == "choice":
        exact = stance_match = parsed == item.answer
        stance_score = float(stance_match)
    sim = _cos(emb, text.strip(), expected_text)
    phrase = _jaccard(text, expected_text)
    w = RESPONSE_WEIGHTS
    if stance_score is None:  # open items have no stance: semantic and phrase keep their 2:1 ratio
        resp = (w["semantic"] * sim + w["phrase"] * phrase) / (w["semantic"] + w["phrase"])
    else:
        resp = w["semantic"] * sim + w["stance"] * stance_score + w["phrase"] * phrase
    return ItemScore(
        item_id=item.id,
        category=item.category,
        kind=item.kind,
        question=item.question,
        expected=item.answer,
        expected_text=expected_text,
        answer=text,
        parsed=parsed,
        parsed_ok=parsed is not None,
        exact=exact,
        within1=within1,
        abs_error=abs_error,
        stance_match=stance_match,
        stance_score=stance_score,
        similarity=round(sim, 4),
        phrase_overlap=round(phrase, 4),
        response_similarity=round(resp, 4),
    )


def _pair_agree(item: SurveyItem, a: int | str | None, b: int | str | None) -> bool:
    if a is None or b is None:
        return False
    if item.kind == "likert":  # within one point; on 1–5 that also rules out opposite sides
        return abs(int(a) - int(b)) <= 1
    return a == b


def _score_pairs(
    survey: Survey, rows: dict[str, ItemScore], answers: dict[str, str], emb: dict[str, Any]
) -> list[PairScore]:
    by_id = {i.id: i for i in survey.items}
    pairs = []
    for it in survey.items:
        root = by_id.get(it.rephrase_of) if it.rephrase_of else None
        if root is None or it.id not in rows or root.id not in rows:
            continue
        ra, rb = rows[root.id], rows[it.id]
        if root.kind == "open":
            m_cos = (
                _cos(emb, answers[root.id].strip(), answers[it.id].strip()) if ra.parsed_ok and rb.parsed_ok else 0.0
            )
            p_cos = _cos(emb, answer_text(root), answer_text(it))
            model_ok, person_ok = m_cos >= OPEN_PAIR_THRESHOLD, p_cos >= OPEN_PAIR_THRESHOLD
        else:
            m_cos = p_cos = None
            model_ok = _pair_agree(root, ra.parsed, rb.parsed)
            person_ok = _pair_agree(root, root.answer, it.answer)
        pairs.append(
            PairScore(
                item_id=root.id,
                rephrase_id=it.id,
                category=root.category,
                kind=root.kind,
                model=(ra.parsed, rb.parsed),
                person=(root.answer, it.answer),
                model_consistent=model_ok,
                person_consistent=person_ok,
                model_cosine=None if m_cos is None else round(m_cos, 4),
                person_cosine=None if p_cos is None else round(p_cos, 4),
            )
        )
    return pairs


def _mean(xs: list[float]) -> float | None:
    return round(sum(xs) / len(xs), 4) if xs else None


def summarize(rows: list[ItemScore], pairs: list[PairScore], human: float | None = None) -> dict:
    """Aggregate metrics for one group of items; rates use every item, unparsed ones as misses."""
    likert = [r for r in rows if r.kind == "likert"]
    choice = [r for r in rows if r.kind == "choice"]
    stance = [r for r in rows if r.stance_match is not None]
    errors = [r.abs_error for r in likert if r.abs_error is not None]
    consistency = _mean([float(p.model_consistent) for p in pairs])
    person_consistency = _mean([float(p.person_consistent) for p in pairs])
    out = {
        "n_items": len(rows),
        "n_parsed": sum(r.parsed_ok for r in rows),
        "parse_rate": _mean([float(r.parsed_ok) for r in rows]),
        "likert_n": len(likert),
        "likert_exact": _mean([float(bool(r.exact)) for r in likert]),
        "likert_within1": _mean([float(bool(r.within1)) for r in likert]),
        "likert_mae": _mean([float(e) for e in errors]),
        "choice_n": len(choice),
        "choice_accuracy": _mean([float(bool(r.exact)) for r in choice]),
        "stance_n": len(stance),
        "stance_accuracy": _mean([float(bool(r.stance_match)) for r in stance]),
        "stance_score": _mean([r.stance_score for r in stance if r.stance_score is not None]),
        "similarity": _mean([r.similarity for r in rows]),
        "phrase_overlap": _mean([r.phrase_overlap for r in rows]),
        "response_similarity": _mean([r.response_similarity for r in rows]),
        "pairs_n": len(pairs),
        "consistency": consistency,
        "person_consistency": person_consistency,
        "consistency_vs_person": (
            round(min(1.0, consistency / person_consistency), 4)
            if consistency is not None and person_consistency
            else None
        ),
    }
    fid, weights = fidelity_score(out["response_similarity"], consistency, out["stance_accuracy"], human)
    out.update(fidelity=fid, band=fidelity_band(fid), fidelity_weights=weights)
    return out


def score(
    survey: Survey, answers_by_item_id: dict[str, str], encoder: Encoder, human_score: float | None = None
) -> dict:
    """Score a model's raw answers against the person's, per item, per category and overall.

    Only the items present in ``answers_by_item_id`` are scored (normally the held-out
    split). ``encoder`` maps a list of texts to embeddings (e.g. ``minilm_encoder()``).
    Returns ``{"items": [...], "pairs": [...], "by_category": {...}, "overall": {...},
    "fidelity": float, "band": str}``; every value is JSON-serialisable.
    """
    items = _items(survey, list(answers_by_item_id))
    answers = {k: ("" if v is None else str(v)) for k, v in answers_by_item_id.items()}
    texts = [answers[i.id].strip() for i in items] + [answer_text(i) for i in items]  # pairs need only these
    emb = _embed(encoder, texts)
    rows = {it.id: _score_item(it, answers[it.id], emb) for it in items}
    pairs = _score_pairs(survey, rows, answers, emb)
    by_cat_rows: dict[str, list[ItemScore]] = defaultdict(list)
    by_cat_pairs: dict[str, list[PairScore]] = defaultdict(list)
    for r in rows.values():
        by_cat_rows[r.category].append(r)
    for p in pairs:
        by_cat_pairs[p.category].append(p)
    overall = summarize(list(rows.values()), pairs, human_score)
    return {
        "persona_id": survey.profile.id,
        "items": [r.model_dump() for r in rows.values()],
        "pairs": [p.model_dump() for p in pairs],
        "by_category": {c: summarize(by_cat_rows[c], by_cat_pairs[c]) for c in sorted(by_cat_rows)},
        "overall": overall,
        "fidelity": overall["fidelity"],
        "band": overall["band"],
    }


def minilm_encoder(model_dir: str | None = None) -> Encoder:
    """The offline MiniLM sentence encoder as an ``Encoder`` callable (normalised embeddings); by default
    the process-wide instance the judges share (``judging.embedding.minilm``)."""
    from .judging.embedding import EmbeddingJudge

    model = EmbeddingJudge(model_dir).model
    return lambda texts: model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True)
