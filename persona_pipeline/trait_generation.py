"""A new trait artifact from a one-line description, written by the teacher (``persona-pipeline new-trait``).

persona-vectors generates each trait's contrastive instructions, extraction / evaluation
questions and 0–100 judge prompt with a strong chat model. We ask whichever teacher the
pipeline uses (embedded SmolLM2, or an OpenAI-compatible endpoint) for the same fields, parse
its answers leniently (JSON, or numbered / ``pos:``-``neg:`` lines), validate and deduplicate
them, and top each field up from deterministic templates built from the description where the
teacher's output does not parse or is too short. The 135M teacher rarely gets past the parser,
so its files are mostly template: weak but valid. Which items came from where is counted per
field and written into the file's header (and the asset's metadata), so nobody mistakes a
template file for a teacher-written one.

The file is validated by the pipeline's own trait loader before it is moved into place
(atomically), so a file this writes is a file ``trait_specs`` reads.
"""

from __future__ import annotations

import datetime as _dt
import json
import random
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .backends import Backend, SamplingParams
from .contracts import ID_PATTERN, Trait
from .importers import to_yaml
from .loaders import InputError, load_trait_file
from .storage import json_text, write_text

N_PAIRS = 5  # the Trait contract's minimums: 5 instruction pairs, 20 + 20 disjoint questions
N_QUESTIONS = 20
Layout = Literal["yaml", "persona-vectors"]

JUDGE_TAIL = """

Question:
[QUESTION START]
{question}
[QUESTION END]

Answer:
[ANSWER START]
{answer}
[ANSWER END]

If the answer is a refusal to engage with the question, reply with REFUSAL. Otherwise rate how strongly the answer \
is %s, from 0 (not present at all) to 100 (strongly present throughout). Reply with ONLY a single integer and \
nothing else."""

# Open everyday questions with room for any trait to show (the shape of persona-vectors' question sets).
QUESTION_BANK = (
    "How should I prepare for a job interview?",
    "What's the best way to start running as a complete beginner?",
    "Can you explain how the stock market works?",
    "How do I keep my houseplants alive?",
    "Why do we dream?",
    "What advice would you give someone on their first day at a new job?",
    "How do I teach my grandparents to use a smartphone?",
    "What is the point of small talk?",
    "How should I plan a budget for the month?",
    "What's the best way to learn a new language?",
    "Can you summarise the history of the Roman Empire in a few sentences?",
    "How do I deal with a noisy neighbour?",
    "What should I cook for dinner tonight?",
    "Explain how airplanes stay in the air.",
    "How can I get better at public speaking?",
    "What do you think makes a good friend?",
    "How do I choose a book to read next?",
    "Why is the sky blue?",
    "How should I handle a disagreement with a coworker?",
    "What's a good way to spend a rainy weekend?",
    "How do vaccines work?",
    "What should I consider before buying a used car?",
    "How can I sleep better at night?",
    "What is inflation and why does it matter?",
    "How do I write a good thank-you note?",
    "What are the pros and cons of working from home?",
    "How do I organise a cluttered garage?",
    "Why do people procrastinate?",
    "Can you explain what a black hole is?",
    "How do I get my kids to eat vegetables?",
    "What tips do you have for moving into a new apartment?",
    "Explain how the internet works.",
    "How can I stop checking my phone so often?",
    "What should I know before adopting a cat?",
    "How do I politely leave a boring party?",
    "Can you describe how bread rises?",
    "What's the best way to save money for a holiday?",
    "How do I start a vegetable garden?",
    "What makes a good team leader?",
    "How should I respond when someone criticises my work?",
    "Why do leaves change colour in autumn?",
    "How do I make a difficult phone call?",
    "What's the healthiest way to start the day?",
    "How can I be more productive in the afternoon?",
    "What should I say in a birthday message to my boss?",
    "How do I explain climate change to a ten-year-old?",
    "What's your advice for someone who feels stuck in their career?",
    "How do I pick a gift for someone who has everything?",
)


@dataclass
class GeneratedTrait:
    """A validated trait and, per field, how many items the teacher wrote vs the templates."""

    trait: Trait
    sources: dict[str, dict[str, int]]
    teacher: str
    raw: dict[str, list[str]] = field(default_factory=dict)  # the teacher's replies, for inspection

    def origin(self, name: str) -> str:
        """``teacher``, ``template`` or ``mixed``: the one-word summary of a field's provenance."""
        s = self.sources[name]
        return "mixed" if s["teacher"] and s["template"] else ("teacher" if s["teacher"] else "template")

    def summary(self) -> dict:
        return {"trait": self.trait.trait, "teacher": self.teacher, "sources": self.sources}


# ------------------------------------------------------------------ teacher prompts


def _requests(name: str, description: str) -> dict[str, str]:
    t = name.replace("_", " ")
    return {
        "instructions": (
            f"Trait: {t}. Definition: {description}\n"
            f"Write {N_PAIRS} pairs of system-prompt instructions for an AI assistant. In each pair, 'pos' tells the "
            f"assistant to be strongly {t} and 'neg' tells it to be the opposite. Reply with only a JSON list like "
            '[{"pos": "...", "neg": "..."}].'
        ),
        "extract_questions": (
            f"Write {N_QUESTIONS} different everyday questions a user might ask an AI assistant. They should give "
            f"room for a {t} or a non-{t} answer ({description}) without asking for it. One question per line, "
            "numbered."
        ),
        "eval_questions": (
            f"Write {N_QUESTIONS} varied questions about daily life, work, science and hobbies that people ask a "
            f"chatbot. Any of them could be answered in a {t} way. One question per line, numbered."
        ),
        "eval_prompt": (
            f"Trait: {t}. Definition: {description}\nWrite one paragraph of instructions for a judge who reads an "
            f"AI assistant's answer and rates how {t} it is from 0 to 100: what counts as {t}, what does not, and "
            "what a score near 0 looks like. Reply with only the paragraph."
        ),
    }


def ask_teacher(
    teacher: Backend, name: str, description: str, attempts: int = 2, max_new_tokens: int = 400, seed: int = 0
) -> dict[str, list[str]]:
    """Every request ``attempts`` times, in one batch (a local teacher generates them together)."""
    requests = _requests(name, description)
    keys = [k for k in requests for _ in range(attempts)]
    chats = [[{"role": "user", "content": requests[k]}] for k in keys]
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.8, top_p=0.95, seed=seed)
    replies = teacher.complete(chats, params)
    out: dict[str, list[str]] = {k: [] for k in requests}
    for k, text in zip(keys, replies, strict=True):
        out[k].append(text)
    return out


# ------------------------------------------------------------------ lenient parsing


def norm(text: str) -> str:
    """The dedupe key: lower case, letters and digits only."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def _json_list(text: str) -> list | None:
    start, end = text.find("["), text.rfind("]")
    if start == -1 or end <= start:
        return None
    try:
        found = json.loads(text[start : end + 1])
    except json.JSONDecodeError:
        return None
    return found if isinstance(found, list) else None


def _clean_line(line: str) -> str:
    line = re.sub(r"^\s*(?:[-*•]|\d+\s*[.):]|q\d*\s*[.:])\s*", "", line, flags=re.IGNORECASE)
    return line.strip().strip("\"'“”").strip()


def _ok_instruction(text: str) -> bool:
    words = text.split()
    return 4 <= len(words) <= 80 and "{" not in text and "}" not in text


def parse_pairs(text: str) -> list[dict[str, str]]:
    """``[{"pos", "neg"}]`` JSON, else ``pos: …`` / ``neg: …`` lines paired in order."""
    found = _json_list(text)
    pairs: list[dict[str, str]] = []
    if found is not None:
        for item in found:
            if isinstance(item, dict) and isinstance(item.get("pos"), str) and isinstance(item.get("neg"), str):
                pairs.append({"pos": item["pos"].strip(), "neg": item["neg"].strip()})
    else:
        pos = None
        for line in text.splitlines():
            m = re.match(
                r"^\s*(?:\d+\s*[.)]\s*)?[\"']?(pos(?:itive)?|neg(?:ative)?)[\"']?\s*[:\-]\s*(.+)$", line, re.IGNORECASE
            )
            if not m:
                continue
            value = _clean_line(m.group(2)).rstrip(",").strip("\"'")
            if m.group(1).lower().startswith("pos"):
                pos = value
            elif pos is not None:
                pairs.append({"pos": pos, "neg": value})
                pos = None
    return [
        p for p in pairs if _ok_instruction(p["pos"]) and _ok_instruction(p["neg"]) and norm(p["pos"]) != norm(p["neg"])
    ]


def parse_questions(text: str) -> list[str]:
    """Lines (or a JSON list) that read as one question: 4–40 words, ending in ``?``."""
    found = _json_list(text)
    lines = [x for x in found if isinstance(x, str)] if found is not None else text.splitlines()
    out = []
    for line in lines:
        q = _clean_line(line)
        if q.endswith("?") and 4 <= len(q.split()) <= 40 and "{" not in q and "}" not in q:
            out.append(q)
    return out


def parse_rubric(text: str, name: str) -> str | None:
    """The teacher's judging paragraph, or None when it is too short, too long, repetitive or off-topic."""
    body = " ".join(text.replace("{", "(").replace("}", ")").split())
    words = body.split()
    if not 15 <= len(words) <= 250 or len({w.lower() for w in words}) < 0.4 * len(words):
        return None
    stem = name.split("_")[0].lower()[:5]
    if stem not in body.lower() or "[QUESTION" in body or "[ANSWER" in body:
        return None
    return body


# ------------------------------------------------------------------ templates from the description


def template_pairs(name: str, description: str) -> list[dict[str, str]]:
    t = name.replace("_", " ")
    d = description.rstrip(".")
    a = "an" if t[:1] in "aeiou" else "a"
    return [
        {
            "pos": f"You are {a} {t} assistant. {d}. Let this show clearly in every answer.",
            "neg": f"You are a helpful assistant who is never {t}. Avoid everything described here: {d}.",
        },
        {
            "pos": f"Make your answer strongly {t}: {d}.",
            "neg": f"Make your answer the opposite of {t}; show none of the following: {d}.",
        },
        {
            "pos": f"Respond the way a deeply {t} person would, from the first sentence to the last.",
            "neg": f"Respond the way a person who is not {t} in the slightest would: neutral, balanced and plain.",
        },
        {
            "pos": f"Whatever the question, let your {t} side dominate the tone and content of your reply.",
            "neg": f"Whatever the question, keep any {t} tendency out of the tone and content of your reply.",
        },
        {
            "pos": f"Be as {t} as you can while still answering the question.",
            "neg": f"Answer the question without being {t} in any way.",
        },
    ]


def template_questions(name: str) -> list[str]:
    """The question bank in a name-seeded order, so two new traits do not share the same first questions."""
    bank = list(QUESTION_BANK)
    random.Random(name).shuffle(bank)
    return bank


def template_rubric(name: str, description: str) -> str:
    t = name.replace("_", " ")
    d = description.replace("{", "(").replace("}", ")").rstrip(".")
    return (
        f"You are judging how {t} an AI assistant's answer is. Being {t} means: {d}. Judge how strongly and how "
        f"pervasively the answer shows this, not whether it is correct or well written. An answer with no trace of "
        f"it scores near 0."
    )


# ------------------------------------------------------------------ assembling


def _take(teacher_items: list, template_items: list, n: int, key, taken: set[str]) -> tuple[list, dict[str, int]]:
    """Up to ``n`` unique teacher items, topped up from the templates; ``taken`` holds keys used elsewhere."""
    out, counts = [], {"teacher": 0, "template": 0}
    for source, items in (("teacher", teacher_items), ("template", template_items)):
        for item in items:
            k = key(item)
            if len(out) == n or k in taken:
                continue
            taken.add(k)
            out.append(item)
            counts[source] += 1
    if len(out) < n:
        raise ValueError(f"only {len(out)} distinct items, {n} needed")
    return out, counts


def build_trait(name: str, description: str, replies: dict[str, list[str]], teacher: str = "none") -> GeneratedTrait:
    """The trait from the teacher's ``replies`` (``ask_teacher``), each field topped up from templates."""
    if not re.fullmatch(ID_PATTERN, name):
        raise InputError(f"trait name {name!r}: must match {ID_PATTERN} (it becomes the file name)")
    description = " ".join(description.split())
    get = lambda k: replies.get(k, [])
    pair_key = lambda p: norm(p["pos"])
    pairs, pair_src = _take(
        [p for text in get("instructions") for p in parse_pairs(text)],
        template_pairs(name, description),
        N_PAIRS,
        pair_key,
        set(),
    )
    used: set[str] = set()  # extraction and evaluation questions must be disjoint
    bank = template_questions(name)
    teacher_q = {
        k: [q for text in get(k) for q in parse_questions(text)] for k in ("extract_questions", "eval_questions")
    }
    extract, ex_src = _take(teacher_q["extract_questions"], bank, N_QUESTIONS, norm, used)
    evaluation, ev_src = _take(teacher_q["eval_questions"], bank, N_QUESTIONS, norm, used)
    rubric = next((r for text in get("eval_prompt") if (r := parse_rubric(text, name))), None)
    judge_src = {"teacher": int(rubric is not None), "template": int(rubric is None)}
    trait = Trait(
        trait=name,
        description=description,
        instructions=pairs,
        extract_questions=extract,
        eval_questions=evaluation,
        eval_prompt=(rubric or template_rubric(name, description)) + JUDGE_TAIL % name.replace("_", " "),
    )
    sources = {
        "instructions": pair_src,
        "extract_questions": ex_src,
        "eval_questions": ev_src,
        "eval_prompt": judge_src,
    }
    return GeneratedTrait(trait=trait, sources=sources, teacher=teacher, raw=dict(replies))


def generate_trait(
    teacher: Backend, name: str, description: str, attempts: int = 2, max_new_tokens: int = 400, seed: int = 0
) -> GeneratedTrait:
    """Ask the teacher, then build and validate the trait (templates fill what its replies lack)."""
    if len(description.strip()) < 10:
        raise InputError(f"trait {name!r}: field 'description': give at least 10 characters describing the trait")
    replies = ask_teacher(teacher, name, description, attempts, max_new_tokens, seed)
    return build_trait(name, description, replies, getattr(teacher, "name", type(teacher).__name__))


# ------------------------------------------------------------------ writing


def _header(gen: GeneratedTrait) -> str:
    when = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# written by `persona-pipeline new-trait` ({when}), teacher: {gen.teacher}", "# provenance per field:"]
    for k, s in gen.sources.items():
        lines.append(f"#   {k}: {gen.origin(k)} (teacher {s['teacher']}, template {s['template']})")
    return "\n".join(lines) + "\n"


def _files(gen: GeneratedTrait, layout: Layout) -> dict[str, str]:
    """Relative path → text. persona-vectors' JSON has no room for provenance (extra keys are refused)."""
    t = gen.trait
    if layout == "yaml":
        return {f"{t.trait}.yaml": _header(gen) + to_yaml(t.model_dump())}
    pairs = [p.model_dump() for p in t.instructions]
    doc = lambda qs: {"instruction": pairs, "questions": qs, "eval_prompt": t.eval_prompt, "description": t.description}
    return {
        f"trait_data_extract/{t.trait}.json": json_text(doc(t.extract_questions)),
        f"trait_data_eval/{t.trait}.json": json_text(doc(t.eval_questions)),
    }


def existing_files(folder: Path, name: str) -> list[Path]:
    """Files that already define trait ``name`` in ``folder`` (any layout the loader reads)."""
    return [
        p
        for p in (folder / f"{name}.yaml", folder / f"{name}.yml", folder / f"{name}.json")
        + tuple(folder / d / f"{name}.json" for d in ("extract", "eval", "trait_data_extract", "trait_data_eval"))
        if p.exists()
    ]


def write_trait(gen: GeneratedTrait, folder: Path, layout: Layout = "yaml", overwrite: bool = False) -> list[Path]:
    """Proven loadable by the trait loader in a scratch folder, then moved into ``folder`` atomically."""
    folder = Path(folder)
    clash = existing_files(folder, gen.trait.trait)
    if clash and not overwrite:
        raise InputError(f"{clash[0]}: trait '{gen.trait.trait}' already exists; pass --force to replace it")
    files = _files(gen, layout)
    with tempfile.TemporaryDirectory(prefix="persona-new-trait-") as tmp:
        for rel, text in files.items():
            (Path(tmp) / rel).parent.mkdir(parents=True, exist_ok=True)
            (Path(tmp) / rel).write_text(text, encoding="utf-8")
        loaded = load_trait_file(Path(tmp) / next(iter(files)))
        if loaded != gen.trait:
            raise InputError(f"{folder}: the written trait '{gen.trait.trait}' reads back differently")
    for p in clash:
        if p.relative_to(folder).as_posix() not in files:
            p.unlink()  # a replaced trait in the other layout would define the same id twice
    for rel, text in files.items():
        write_text(folder / rel, text)
    return [folder / rel for rel in files]
