"""Capability retention: does fine-tuning, RL or steering cost the model general ability?

persona_vectors and the Assistant Axis work check that an intervention leaves capabilities
intact (MMLU-style multiple choice). The benchmarks live on the hub, which is unreachable
here, so we ship a small hand-written probe (``data_assets/capability/probe.jsonl``: question,
choices, answer index, domain) and score it with EleutherAI's ``lm-eval`` harness — the tool
people already trust — through a local task (``capability_probe.yaml`` next to the items):
each choice's loglikelihood after ``Question: …\\nAnswer:``; the most likely choice is the answer.

Any model object goes in (a base model, a PEFT-wrapped adapter) and steering hooks apply
around the harness's forward passes, so base, SFT, RL and steered models are scored by one
code path on the same items. Accuracy comes per domain with a Wilson interval, and a model's
drop against the base is a paired comparison on the same items (``stats.compare``).
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .contracts import ID_PATTERN
from .loaders import InputError, read_jsonl, read_yaml, validate_record
from .stats import compare

TASK_FILE = "capability_probe.yaml"
ITEMS_FILE = "probe.jsonl"
MIN_ITEMS_PER_DOMAIN = 10  # below this a domain's accuracy is reported, with a note that it is too few to read


class ProbeItem(BaseModel):
    """One multiple-choice item of the probe."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    id: str = Field(pattern=ID_PATTERN)
    domain: str = Field(pattern=ID_PATTERN)
    question: str = Field(min_length=5)
    choices: list[str] = Field(min_length=2, max_length=6)
    answer: int = Field(ge=0)

    @model_validator(mode="after")
    def _answer_in_range(self) -> ProbeItem:
        if self.answer >= len(self.choices):
            raise ValueError(f"answer {self.answer} is not an index into the {len(self.choices)} choices")
        if len({c.lower() for c in self.choices}) != len(self.choices) or not all(self.choices):
            raise ValueError("choices must be distinct and non-empty")
        return self


def load_probe(path: Path) -> list[ProbeItem]:
    """The probe's items; a bad line is refused with the file, line and field."""
    items, seen, questions = [], {}, {}
    for n, raw in read_jsonl(path):
        item = validate_record(ProbeItem, raw, path, f"line {n}")
        if item.id in seen:
            raise InputError(f"{path}, line {n}: field 'id': '{item.id}' is a duplicate of line {seen[item.id]}")
        key = item.question.lower()
        if key in questions:
            raise InputError(f"{path}, line {n}: field 'question': duplicate of line {questions[key]}")
        seen[item.id], questions[key] = n, n
        items.append(item)
    if not items:
        raise InputError(f"{path}: no probe items")
    return items


def select_items(items: list[ProbeItem], n: int) -> list[ProbeItem]:
    """``n`` items spread evenly over the domains (round-robin in file order); 0 or more than all: all."""
    if n <= 0 or n >= len(items):
        return list(items)
    by_domain: dict[str, list[ProbeItem]] = defaultdict(list)
    for it in items:
        by_domain[it.domain].append(it)
    picked: list[ProbeItem] = []
    for i in range(max(len(v) for v in by_domain.values())):
        for group in by_domain.values():
            if len(picked) < n and i < len(group):
                picked.append(group[i])
    return picked


def task_config(folder: Path, items: list[ProbeItem], workdir: Path) -> dict:
    """The shipped lm-eval task, reading ``items`` from an absolute path (works from any directory)."""
    config = read_yaml(folder / TASK_FILE)
    data = Path(workdir) / ITEMS_FILE
    data.write_text("".join(json.dumps(it.model_dump(), ensure_ascii=False) + "\n" for it in items), encoding="utf-8")
    config["dataset_kwargs"] = {  # the datasets cache goes with the temp folder: nothing piles up per run
        **config.get("dataset_kwargs", {}),
        "data_files": {"test": str(data)},
        "cache_dir": str(Path(workdir) / "datasets-cache"),
    }
    return config


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion: sane at small n and at 0 or n successes."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class ProbeResult:
    """One model's answers: per-item correctness and accuracy overall and per domain."""

    label: str
    correct: dict[str, int]  # item id → 1 if the most likely choice is the answer
    domains: dict[str, str]  # item id → domain
    acc_norm: float
    seconds: float
    chance: float
    notes: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.correct)

    def accuracy(self, domain: str | None = None) -> dict:
        ids = [i for i in self.correct if domain is None or self.domains[i] == domain]
        k = sum(self.correct[i] for i in ids)
        lo, hi = wilson(k, len(ids))
        return {"n": len(ids), "correct": k, "accuracy": k / len(ids) if ids else math.nan, "ci_low": lo, "ci_high": hi}

    def per_domain(self) -> dict[str, dict]:
        return {d: self.accuracy(d) for d in sorted(set(self.domains.values()))}


def _lm(model, tokenizer, batch_size: int):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=512)


@contextlib.contextmanager
def _quiet_harness():
    """lm-eval's notices about an in-memory model and datasets' split-building bars are expected here:
    keep them out of the run log (errors still show)."""
    import logging

    from datasets.utils import logging as ds_logging

    logger, bars = logging.getLogger("lm_eval"), ds_logging.is_progress_bar_enabled()
    level = logger.level
    logger.setLevel(logging.ERROR)
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        logger.setLevel(level)
        if bars:
            ds_logging.enable_progress_bar()


def run_probe(
    model, tokenizer, items: list[ProbeItem], folder: Path, label: str = "model", batch_size: int = 16, steers=None
) -> ProbeResult:
    """Score ``items`` with lm-eval's ``simple_evaluate`` on an in-memory model (PEFT-wrapped or not).

    ``steers`` (``hooks.Steer``) stay on for every forward pass the harness makes.
    """
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from .hooks import steering

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="persona-capability-") as tmp:
        config = task_config(folder, items, Path(tmp))
        hooks = steering(model, steers) if steers else contextlib.nullcontext()
        with hooks, _quiet_harness():
            out = simple_evaluate(
                model=_lm(model, tokenizer, batch_size),
                tasks=[config],
                task_manager=TaskManager(include_defaults=False),
                log_samples=True,
                bootstrap_iters=0,
            )
    samples = out["samples"][config["task"]]
    by_id = {it.id: it for it in items}
    correct = {s["doc"]["id"]: int(s["acc"]) for s in samples}
    domains = {i: by_id[i].domain for i in correct}
    if len(correct) != len(items):
        raise RuntimeError(f"lm-eval scored {len(correct)} of {len(items)} probe items")
    metrics = out["results"][config["task"]]
    chance = sum(1 / len(it.choices) for it in items) / len(items)
    return ProbeResult(label, correct, domains, float(metrics["acc_norm,none"]), time.perf_counter() - start, chance)


def drop_vs_base(result: ProbeResult, base: ProbeResult) -> dict:
    """``base − model`` accuracy on the same items (positive: capability lost), paired, with a bootstrap CI."""
    ids = [i for i in base.correct if i in result.correct]
    c = compare([base.correct[i] for i in ids], [result.correct[i] for i in ids], paired=True)
    return {"n": len(ids), "drop": c.diff, "ci_low": c.ci_low, "ci_high": c.ci_high, "p_value": c.p_value}


def too_few(n: int, per_domain: dict[str, dict]) -> list[str]:
    """What a reader should know before trusting the numbers."""
    notes = []
    if n < 100:
        notes.append(f"only {n} items (the shipped probe has more; raise Profile.capability_items): CIs are wide")
    small = sorted(d for d, a in per_domain.items() if a["n"] < MIN_ITEMS_PER_DOMAIN)
    if small:
        notes.append(f"fewer than {MIN_ITEMS_PER_DOMAIN} items in {', '.join(small)}: per-domain figures are anecdotes")
    return notes


def add_steer(direction, layer: int, rel_coef: float, layer_norm: float):
    """An add-steer along the unit ``direction``, pushing ``rel_coef`` × the layer's typical residual norm
    (what ``steering_sweep`` calls a relative coefficient), at every position."""
    from .control_vector import push
    from .hooks import Steer

    return Steer(vector=push(direction, rel_coef, layer_norm), layer=layer, coef=1.0, positions="all")


def vector_steer(vectors: dict, name: str, rel_coef: float, layer: int | None = None):
    """(steer, layer) for one ``persona_vectors`` entry: its ``name`` direction at ``layer`` (None: the middle
    captured layer), pushed by ``rel_coef`` × that layer's typical residual norm as ``steering_sweep`` does."""
    from .control_vector import ControlVector
    from .hooks import Steer

    cv = ControlVector.load(vectors, name)
    layer = layer if layer is not None else cv.layers[len(cv.layers) // 2]
    return Steer(vector=cv.push(layer, rel_coef), layer=layer, coef=1.0, positions="all"), layer


def summarise(results: dict[str, ProbeResult], base: str = "base") -> dict:
    """Every model's accuracy (overall, per domain) and its paired drop vs ``base``; JSON-ready."""
    ref = results[base]
    models = {}
    for label, r in results.items():
        models[label] = {
            "overall": r.accuracy(),
            "acc_norm": r.acc_norm,
            "domains": r.per_domain(),
            "seconds": r.seconds,
            "correct": r.correct,
        }
        if label != base:
            models[label]["vs_base"] = drop_vs_base(r, ref)
    return {"n": ref.n, "chance": ref.chance, "notes": too_few(ref.n, ref.per_domain()), "models": models}


def table_row(label: str, m: dict) -> dict:
    """One model's line of the accuracy table (a ``summarise`` entry)."""
    drop = m.get("vs_base", {})
    return {
        "model": label,
        **m["overall"],
        "acc_norm": m["acc_norm"],
        "drop_vs_base": drop.get("drop"),
        "drop_ci_low": drop.get("ci_low"),
        "drop_ci_high": drop.get("ci_high"),
        "drop_p": drop.get("p_value"),
    }


def rounded_rows(rows: list[dict], nd: int = 3) -> list[dict]:
    """Table rows for metadata: floats rounded, per-item maps left out."""
    return [
        {k: round(v, nd) if isinstance(v, float) else v for k, v in r.items() if not isinstance(v, dict)} for r in rows
    ]


def harness_version() -> str:
    from importlib.metadata import version

    return version("lm-eval")
