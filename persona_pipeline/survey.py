"""Survey of a real person → conversations in their voice, with a held-out test split.

Follows the survey guide: Likert answers become words plus the person's own
reasoning, choices are stated and justified, open answers are kept verbatim;
follow-up questions become multi-turn dialogues grounded in related items, and
identity conversations come from the profile. The answers to follow-up questions
are written by the teacher in the person's voice (the guide's Phase 2), grounded in
the person's profile and their answers to this and related items; without a
teacher — or where its answer leaves the role — the person's own reasoning stands in. The split is stratified by
category and keeps rephrased pairs together, so no test item (or a rewording
of it) ever reaches training.
"""

from __future__ import annotations

import random
from collections import defaultdict

from .contracts import Conversation, ConversationMetadata, Survey, SurveyItem, Turn

DEFAULT_LABELS = [
    "I strongly disagree",
    "I somewhat disagree",
    "I'm neutral on that",
    "I somewhat agree",
    "I strongly agree",
]


def likert_words(item: SurveyItem) -> str:
    lo, hi = item.scale or (1, 5)
    span = hi - lo
    if item.scale_labels:
        label = item.scale_labels[item.answer - lo]
        return f"I'd say {label.lower()}"
    if span == 4:
        return DEFAULT_LABELS[item.answer - lo]
    return f"I'd rate it {item.answer} out of {hi}"


def answer_text(item: SurveyItem) -> str:
    """The person's reply to the item, in first person."""
    if item.kind == "likert":
        head = likert_words(item)
    elif item.kind == "choice":
        head = f"{item.answer}."
    else:
        head = str(item.answer)
    if item.reasoning:
        head = head.rstrip(".") + ". " + item.reasoning
    return head.strip()


def split_items(survey: Survey, test_fraction: float = 0.2, seed: int = 0) -> dict[str, str]:
    """Stratified by category; a rephrased pair always lands on the same side."""
    group_of = {i.id: (i.rephrase_of or i.id) for i in survey.items}
    by_cat: dict[str, list[str]] = defaultdict(list)
    for item in survey.items:
        root = group_of[item.id]
        if root == item.id:
            by_cat[item.category].append(root)
    rng = random.Random(f"{seed}:{survey.profile.id}")
    side: dict[str, str] = {}
    for cat in sorted(by_cat):
        roots = sorted(by_cat[cat])
        rng.shuffle(roots)
        n_test = max(1, round(len(roots) * test_fraction))
        for k, root in enumerate(roots):
            side[root] = "test" if k < n_test else "train"
    return {i.id: side.get(group_of[i.id], "train") for i in survey.items}


def _conv(
    survey: Survey, cid: str, topic: str, turns: list[tuple[str, str]], category: str, split: str
) -> Conversation:
    return Conversation(
        id=f"{survey.profile.id}-{cid}",
        persona_id=survey.profile.id,
        topic=topic,
        persona_role="assistant",
        turns=[Turn(role=r, content=c) for r, c in turns],
        metadata=ConversationMetadata(
            scenario_type=f"survey_{category}", source="survey", generation_model="survey", split=split
        ),
    )


def _related(item: SurveyItem, pool: list[SurveyItem], k: int, rng: random.Random) -> list[SurveyItem]:
    same = [
        o
        for o in pool
        if o.category == item.category and o.id != item.id and o.rephrase_of != item.id and item.rephrase_of != o.id
    ]
    rng.shuffle(same)
    return same[:k]


FOLLOW_UP_SYSTEM = """You are {name}, {description}. {bio} What you value: {values}
Your own answers to survey questions:
{answers}
Answer the next question as yourself: first person, one to three sentences, in the same voice
as your answers above and consistent with them. You are a person, not an assistant."""


def follow_up_chat(
    survey: Survey, grounding: list[SurveyItem], question: str, asked: list[tuple[str, str]]
) -> list[dict]:
    """The teacher's chat for one follow-up answer: the person's profile and answers, the dialogue so far."""
    p = survey.profile
    answers = "\n".join(f"- Q: {it.question} A: {answer_text(it)}" for it in grounding)
    system = FOLLOW_UP_SYSTEM.format(
        name=p.name, description=p.description, bio=p.bio, values=p.values, answers=answers
    )
    return [
        {"role": "system", "content": system},
        *({"role": r, "content": c} for r, c in asked),
        {"role": "user", "content": question},
    ]


def generate_follow_ups(survey: Survey, plans: list[tuple[SurveyItem, list[SurveyItem]]], teacher, params) -> dict:
    """(item id, question) → the teacher's answer in the person's voice; one batched call for all of them.

    Answers that are empty or step out of the role are left out (the caller falls back to the
    person's own reasoning), so a weak teacher cannot put assistant-speak in the person's mouth.
    """
    from .quality import PERSONA_BREAK

    keys, chats = [], []
    for it, related in plans:
        opening = [("user", it.question), ("assistant", answer_text(it))]
        for q in it.follow_ups:
            keys.append((it.id, q))
            chats.append(follow_up_chat(survey, [it, *related], q, opening))
    lines = teacher.complete(chats, params) if chats else []
    return {k: x.strip() for k, x in zip(keys, lines) if x.strip() and not PERSONA_BREAK.search(x)}


def survey_conversations(
    survey: Survey,
    split: dict[str, str],
    follow_up_items: int = 20,
    seed: int = 0,
    teacher=None,
    params=None,
) -> list[Conversation]:
    """Single-item, follow-up and identity conversations; test items only become test conversations.

    ``teacher`` (a Backend) writes the follow-up answers (``generate_follow_ups``); grounding uses
    training items only, so no test answer leaks into a training conversation.
    """
    rng = random.Random(f"{seed}:{survey.profile.id}:fu")
    convs = [
        _conv(
            survey,
            f"item-{it.id}",
            it.question,
            [("user", it.question), ("assistant", answer_text(it))],
            it.category,
            split[it.id],
        )
        for it in survey.items
    ]
    train_pool = [it for it in survey.items if split[it.id] == "train"]
    with_fu = [it for it in train_pool if it.follow_ups] + [it for it in train_pool if not it.follow_ups]
    plans = [(it, _related(it, train_pool, 2 if it.follow_ups else 3, rng)) for it in with_fu[:follow_up_items]]
    written = generate_follow_ups(survey, plans, teacher, params) if teacher is not None else {}
    for it, related in plans:
        turns = [("user", it.question), ("assistant", answer_text(it))]
        for q in it.follow_ups:
            turns += [("user", q), ("assistant", written.get((it.id, q)) or it.reasoning or str(it.answer))]
        for rel in related:
            turns += [("user", f"Related to that: {rel.question}"), ("assistant", answer_text(rel))]
        if len(turns) >= 4:
            conv = _conv(survey, f"followup-{it.id}", it.question, turns, it.category, "train")
            if any((it.id, q) in written for q in it.follow_ups):
                conv.metadata.generation_model = f"survey+{teacher.name}"
            convs.append(conv)
    convs += identity_conversations(survey)
    return convs


def identity_conversations(survey: Survey) -> list[Conversation]:
    p = survey.profile
    qa = [
        ("Who are you?", f"I'm {p.name}, {p.description}."),
        ("Tell me about yourself.", p.bio),
        ("What are your core values?", p.values),
    ]
    if p.demographics:
        facts = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in p.demographics.items())
        qa.append(("A bit of background, please?", f"Sure. {facts}."))
    turns = [t for q, a in qa for t in (("user", q), ("assistant", a))]
    return [_conv(survey, "identity", "identity", turns, "identity", "train")]


def test_items(survey: Survey, split: dict[str, str]) -> list[SurveyItem]:
    return [it for it in survey.items if split[it.id] == "test"]
