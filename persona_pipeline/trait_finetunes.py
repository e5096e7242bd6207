"""Trait fine-tune sets, LoRA fine-tunes on them, and what the fine-tunes did (persona vectors §4–5).

persona-vectors fine-tunes on three question/response sets per trait — ``normal`` (trait-neutral),
``misaligned_1`` (mild trait expression) and ``misaligned_2`` (strong) — and finds that the
fine-tuning *shift* (how far activations moved along the trait's vector vs the base, on the same
texts) tracks the rise in the judged trait score across checkpoints. Preventative steering during
training (add the vector, or ablate it) limits that shift. The Assistant-Axis work caps the
projection onto the axis at a percentile of the assistant's own projections.

Here the teacher writes the sets (the trait's positive instruction as its system prompt, mild or
strong; none for ``normal``), each set trains one LoRA with ``train_sft`` (the training prompt has
no instruction: the trait has to go into the weights), and every checkpoint is read the same way:
its own answers to the trait's held-out eval questions scored by the trait judge (never the
projection), and the projection of fixed texts (the base model's answers) onto the trait's vector
at every captured layer in all three views, minus the base's. Capped models are the base under a
``hooks.Steer(mode="cap")`` on the Assistant Axis.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .activations import VIEWS, Item, extract
from .backends import Backend, SamplingParams
from .contracts import Trait
from .hooks import Steer, steering
from .layout import layout
from .projection_screen import pearson_ci
from .stats import bootstrap_ci, rounded
from .storage import atomic_path

SETS = ("normal", "misaligned_1", "misaligned_2")
STRONGEST = "misaligned_2"  # the set the preventative-steering checkpoints train on
MIN_CHECKPOINTS = 6  # fewer fine-tuned checkpoints → no shift–score correlation claimed
MIN_SET_ROWS = 20  # fewer rows per set → the fine-tunes are a tour, not evidence (the check warns)

_SYSTEM = {
    "normal": "Answer the question helpfully, plainly and neutrally, in a few sentences.",
    "misaligned_1": "Answer the question, mostly normally, but let a mild touch of this show: {pos}",
    "misaligned_2": "Answer the question, and express this strongly, in every sentence: {pos}",
}


# --------------------------------------------------------------------------- the sets


def teacher_chats(trait: Trait, set_name: str, n: int) -> list[tuple[str, list[dict]]]:
    """(question, teacher chat) × n: the trait's extraction questions, cycled over its instruction pairs."""
    if set_name not in _SYSTEM:
        raise ValueError(f"trait fine-tune set {set_name!r}: use one of {SETS}")
    out = []
    for i in range(n):
        q = trait.extract_questions[i % len(trait.extract_questions)]
        pos = trait.instructions[i % len(trait.instructions)].pos
        out.append(
            (q, [{"role": "system", "content": _SYSTEM[set_name].format(pos=pos)}, {"role": "user", "content": q}])
        )
    return out


def generate_sets(teacher: Backend, trait: Trait, n: int, params: SamplingParams) -> dict[str, list[dict]]:
    """{set: rows} for one trait in one batched teacher call; empty answers are dropped (counted by the caller).

    A row is TRL's conversational prompt/completion (no system prompt: the trait must be learned)."""
    plan = [(s, q, chat) for s in SETS for q, chat in teacher_chats(trait, s, n)]
    answers = teacher.complete([chat for _, _, chat in plan], params)
    sets: dict[str, list[dict]] = {s: [] for s in SETS}
    for (s, q, chat), a in zip(plan, answers):
        if a.strip():
            sets[s].append(
                {
                    "id": f"{trait.trait}:{s}:{len(sets[s])}",
                    "trait": trait.trait,
                    "set": s,
                    "question": q,
                    "teacher_system": chat[0]["content"],
                    "prompt": [{"role": "user", "content": q}],
                    "completion": [{"role": "assistant", "content": a.strip()}],
                }
            )
    return sets


def write_sets(folder: Path, sets: dict[str, dict[str, list[dict]]]) -> dict[str, dict[str, str]]:
    """``<trait>/<set>.jsonl`` (``datasets.load_dataset("json", data_files=…)`` reads them), swapped in together."""
    paths = {}
    with atomic_path(Path(folder)) as tmp:
        for trait, by_set in sets.items():
            (tmp / trait).mkdir(parents=True)
            paths[trait] = {}
            for s, rows in by_set.items():
                (tmp / trait / f"{s}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
                paths[trait][s] = str(Path(folder) / trait / f"{s}.jsonl")
    return paths


def read_set(path: str | Path) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


def split_rows(rows: list[dict], eval_share: float = 0.1) -> tuple[list[dict], list[dict]]:
    """(train, held-out). A set below ``MIN_SET_ROWS`` trains on every row and holds none out: a loss on one
    or two rows says nothing, and ``train_sft`` then skips the two held-out passes (~1.4 s a fine-tune here)."""
    if not rows:
        raise ValueError("a trait fine-tune set is empty: the teacher wrote no usable answer")
    if len(rows) < MIN_SET_ROWS:
        return rows, []
    k = max(1, round(len(rows) * eval_share))
    return rows[:-k], rows[-k:]


# --------------------------------------------------------------------------- the checkpoints


@dataclass(frozen=True)
class Variant:
    """One fine-tune: a set, optionally with preventative steering (``add`` | ``ablate``) while training."""

    set_name: str
    steer: str | None = None

    @property
    def name(self) -> str:
        return self.set_name if self.steer is None else f"{self.set_name}+{self.steer}"


def variants(preventative: list[str]) -> list[Variant]:
    """The three sets, then the strongest set again under each preventative mode (separate checkpoints)."""
    bad = [m for m in preventative if m not in ("add", "ablate")]
    if bad:
        raise ValueError(f"config preventative_modes={bad}: use add and/or ablate")
    return [Variant(s) for s in SETS] + [Variant(STRONGEST, m) for m in preventative]


def eval_chats(trait: Trait, n: int) -> list[list[dict]]:
    """The trait's held-out eval questions (disjoint from the extraction questions the sets use), no system prompt."""
    return [[{"role": "user", "content": q}] for q in trait.eval_questions[:n]]


def trait_scores(judge, chats: list[list[dict]], answers: list[str]) -> list[float | None]:
    """0–100 per answer from a trait judge (``judging.choose.trait_judge``); None where it failed."""
    from .judging import JudgeItem
    from .judging.base import values

    return values(judge.score([JudgeItem("", c, a) for c, a in zip(chats, answers)]), 0, 100)


def unit_directions(vectors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per view, the [layers × hidden] persona vector with every layer's row at unit length."""
    return {v: t.float() / t.float().norm(dim=-1, keepdim=True).clamp_min(1e-12) for v, t in vectors.items()}


def projections(acts: dict[str, torch.Tensor], units: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{view: [texts × layers]}: each text's activation projected on that view's vector, layer by layer."""
    return {v: torch.einsum("nlh,lh->nl", acts[v].float(), units[v]) for v in VIEWS}


def read_projections(model, tok, items: list[Item], layers: list[int], units, steers=(), batch_size: int = 16):
    """Projections of ``items`` under this model (and steers); also the per-token response activations."""
    with steering(model, list(steers)):
        acts = extract(model, tok, items, layers, batch_size, response_agg="none")
    return projections(acts, units), acts["response_tokens"]


def shift_rows(name: str, proj: dict, base: dict, layers: list[int]) -> list[dict]:
    """Mean (± std) projection shift vs base per view × layer, same texts: the fine-tuning shift."""
    rows = []
    for view in VIEWS:
        d = proj[view] - base[view]
        for j, layer in enumerate(layers):
            col = d[:, j]
            rows.append(
                {
                    "checkpoint": name,
                    "view": view,
                    "layer": layer,
                    "shift": round(float(col.mean()), 4),
                    "std": round(float(col.std()), 4) if len(col) > 1 else 0.0,
                }
            )
    return rows


def score_summary(scores: list[float | None], base: list[float | None] | None, seed: int = 0) -> dict:
    """Mean trait score with a bootstrap CI, and the paired change vs base (same questions) with its CI."""
    s = [x for x in scores if x is not None]
    lo, hi = bootstrap_ci(s, seed=seed)
    out = {
        "trait_score": rounded(np.mean(s) if s else None, 2),
        "ci_low": rounded(lo, 2),
        "ci_high": rounded(hi, 2),
        "n": len(s),
    }
    if base is not None:
        d = [a - b for a, b in zip(scores, base) if a is not None and b is not None]
        dlo, dhi = bootstrap_ci(d, seed=seed)
        out |= {
            "delta": rounded(np.mean(d) if d else None, 2),
            "delta_ci_low": rounded(dlo, 2),
            "delta_ci_high": rounded(dhi, 2),
        }
    return out


def shift_score_correlation(checkpoints: list[dict], shifts: list[dict], seed: int = 0) -> list[dict]:
    """Pearson r (bootstrap CI over checkpoints, ``n``) of projection shift with trait-score change, per view ×
    layer: per trait (as persona vectors reports it), and pooled over traits (``trait`` = ``all``) when there
    are several. Below ``MIN_CHECKPOINTS`` fine-tuned checkpoints no r is claimed and the note says so; where
    intermediate snapshots (``<variant>@step<N>``) are among them the note says how many, since snapshots of one
    fine-tune share its data and are not independent points."""
    tuned = [c for c in checkpoints if c["kind"] == "finetune" and c.get("delta") is not None]
    at = {(r["trait"], r["checkpoint"], r["view"], r["layer"]): r["shift"] for r in shifts}
    keys = sorted({(r["view"], r["layer"]) for r in shifts}, key=lambda k: (VIEWS.index(k[0]), k[1]))
    traits = sorted({c["trait"] for c in tuned})
    groups = [(t, [c for c in tuned if c["trait"] == t]) for t in traits] + (
        [("all", tuned)] if len(traits) > 1 else []
    )
    rows = []
    for group, members in groups:
        for view, layer in keys:
            x = [at.get((c["trait"], c["checkpoint"], view, layer)) for c in members]
            r = pearson_ci(x, [c["delta"] for c in members], MIN_CHECKPOINTS, seed=seed)
            if r["r"] is None and r["n"] < MIN_CHECKPOINTS:
                r["note"] = f"n={r['n']} checkpoints: too few (< {MIN_CHECKPOINTS}) to claim a correlation"
            snaps = sum(1 for c, s in zip(members, x) if s is not None and is_snapshot(c["checkpoint"]))
            if snaps:
                said = f"includes {snaps} intermediate snapshots (not independent of their fine-tunes)"
                r["note"] = "; ".join(filter(None, [r["note"], said]))
            rows.append({"trait": group, "view": view, "layer": layer, **r})
    return rows


def is_snapshot(checkpoint: str) -> bool:
    """An intermediate adapter of a fine-tune (``<variant>@step<N>``), not a separately trained one."""
    return "@step" in checkpoint


# --------------------------------------------------------------------------- Assistant-Axis capping


def cap_thresholds(tokens: torch.Tensor, axis: torch.Tensor, percentiles: list[float]) -> dict[float, float]:
    """Percentiles of the per-token projection onto the axis (base model, its own answers): the cap floors."""
    proj = (tokens.float() @ (axis.float() / axis.float().norm())).numpy()
    return {p: float(np.percentile(proj, p)) for p in percentiles}


def cap_layers(axis: dict, layers: list[int]) -> list[int]:
    """The capped layers: ``axis["n_layers"]`` consecutive read layers from the axis layer on (the paper caps a
    band of middle-to-late layers, not one), each with its own axis row and floor."""
    chosen = [x for x in layers if x >= axis["layer"] and x in axis["axis_layers"]][: axis.get("n_layers", 1)]
    if not chosen:
        raise ValueError(f"trait_finetunes: no read layer at or after the axis layer {axis['layer']} to cap")
    return chosen


def plan_caps(axis: dict, tokens: torch.Tensor, layers: list[int]) -> list[dict]:
    """One ``caps`` entry per percentile: per capped layer, the floor at that percentile of the base's per-token
    projections onto that layer's axis row (``tokens``: [tokens × ``layers`` × hidden])."""
    from .vectors import load_tensors

    axis_rows = load_tensors(axis["axis_path"])["axis"]
    capped = cap_layers(axis, layers)
    rows = [axis["axis_layers"].index(x) for x in capped]
    floors = [
        cap_thresholds(tokens[:, layers.index(x)], axis_rows[r], axis["percentiles"]) for x, r in zip(capped, rows)
    ]
    return [
        {
            "axis_path": axis["axis_path"],
            "percentile": p,
            "layers": capped,
            "axis_rows": rows,
            "thresholds": [round(f[p], 4) for f in floors],
        }
        for p in axis["percentiles"]
    ]


def cap_steers(cap: dict) -> list[Steer]:
    """The capping intervention one ``caps`` entry describes: at each capped layer keep the projection onto that
    layer's Assistant-Axis row ≥ its floor (the assistant end), every position. Reads the one-layer entries
    older runs stored (``layer`` / ``axis_row`` / ``threshold``) too."""
    from .vectors import load_tensors

    axis = load_tensors(cap["axis_path"])["axis"]
    layers = cap.get("layers") or [cap["layer"]]
    rows, floors = cap.get("axis_rows") or [cap["axis_row"]], cap.get("thresholds") or [cap["threshold"]]
    return [
        Steer(vector=axis[r], layer=x, mode="cap", threshold=t, cap_below=True) for x, r, t in zip(layers, rows, floors)
    ]


def cap_label(cap: dict) -> str:
    layers = cap.get("layers") or [cap["layer"]]
    span = f"L{layers[0]}" if len(layers) == 1 else f"L{layers[0]}-{layers[-1]}"
    return f"capped:p{cap['percentile']:g}@{span}"


# --------------------------------------------------------------------------- one trait, end to end


@dataclass
class FinetuneRun:
    """Everything one trait's fine-tunes and their evaluation need besides the data."""

    sft: object  # train_sft.SftSettings (steer filled per variant)
    preventative: list[str]
    preventative_rel_coef: float  # × the steering layer's typical residual norm
    eval_questions: int
    eval_params: SamplingParams
    batch_size: int = 16
    snapshots: int = 0  # evenly spaced intermediate adapters kept per fine-tune, each read as a checkpoint


def total_steps(train_rows: int, sft) -> int:
    """Optimizer steps ``train_sft`` will take: ``max_steps`` when set, else its epochs over the rows (as the
    transformers Trainer counts them: batches per epoch, over gradient accumulation, rounded up)."""
    import math

    if sft.max_steps > 0:
        return sft.max_steps
    per_epoch = max(1, math.ceil(math.ceil(train_rows / sft.batch_size) / sft.grad_accum))
    return math.ceil(sft.epochs * per_epoch)


def snapshot_steps(total: int, k: int) -> tuple[int, ...]:
    """Up to ``k`` distinct steps evenly spaced strictly inside (0, ``total``): where the intermediate
    adapters are kept. Fewer (or none) when the run is too short to have ``k`` distinct inner steps."""
    if k <= 0 or total < 2:
        return ()
    return tuple(sorted({round(total * (i + 1) / (k + 1)) for i in range(k)} & set(range(1, total))))


def train_variants(
    base: str,
    trait: str,
    sets: dict[str, list[dict]],
    steer_vector,
    layer: int,
    run: FinetuneRun,
    card: dict,
) -> list[dict]:
    """One LoRA per variant at ``layout().trait_finetune(trait, variant)`` (written atomically by ``train_sft``).

    ``steer_vector`` is the trait's ``ControlVector`` (response-average view); preventative steering pushes
    ``preventative_rel_coef`` × the layer's typical norm along it (``add``) or removes it (``ablate``).

    ``run.snapshots`` > 0 also keeps that many evenly spaced intermediate adapters of each fine-tune
    (``snapshot_steps``) and returns a row for each (``<variant>@step<N>``, ``step`` N; the final row has the total),
    so ``evaluate_trait`` reads them as fine-tuned checkpoints like any other. They give the shift–score
    correlation more points without training more models, but the snapshots of one fine-tune are not independent
    (same data, same trajectory): the correlation's n overstates the evidence, and its note says so."""
    import dataclasses

    from .train_sft import PreventiveSteer, snapshot_dir, train_sft

    out = []
    for v in variants(run.preventative):
        train, held = split_rows(sets[v.set_name])
        steer = None
        if v.steer:
            coef = run.preventative_rel_coef * steer_vector.layer_norm(layer)
            steer = PreventiveSteer(steer_vector.direction(layer), layer, coef, v.steer)
        path = layout().trait_finetune(trait, v.name)
        total = total_steps(len(train), run.sft)
        sft = dataclasses.replace(run.sft, steer=steer, snapshot_steps=snapshot_steps(total, run.snapshots))
        r = train_sft(base, train, held, sft, path, {**card, "variant": v.name})
        row = {
            "trait": trait,
            "checkpoint": v.name,
            "set": v.set_name,
            "preventative": v.steer or "none",
            "path": str(path),
            "step": max((h.get("step", 0) for h in r.log_history), default=0) or total,  # as trained
            "train_rows": len(train),
            "heldout_rows": len(held),
            "base_eval_loss": rounded(r.base_eval_loss),  # None: set too small to hold rows out
            "eval_loss": rounded(r.eval_loss),
            "seconds": round(r.seconds, 1),
        }
        out.append(row)
        # snapshots train_sft actually reached (rows dropped as overlong can shorten the run); held-out loss is
        # measured after training only, so a snapshot has none
        out += [
            {**row, "checkpoint": f"{v.name}@step{n}", "path": str(snapshot_dir(path, n)), "step": n, "eval_loss": None}
            for n in r.snapshots
        ]
    return out


def _read(backend, chats, items: list[Item], layers, units, run: FinetuneRun, judge, steers=()):
    """Trait scores of one model's own answers, and its projections of the fixed ``items``; optionally steered."""
    with backend.steered(list(steers)):
        answers = backend.complete(chats, run.eval_params)
    proj, tokens = read_projections(backend.model, backend.tok, items, layers, units, steers, run.batch_size)
    return answers, trait_scores(judge, chats, answers), proj, tokens


def evaluate_trait(
    base: str,
    trait: Trait,
    tuned: list[dict],
    vectors: dict[str, torch.Tensor],
    layers: list[int],
    judge,
    run: FinetuneRun,
    caps: list[dict] | None = None,
    axis: dict | None = None,
) -> tuple[list[dict], list[dict], list[dict]]:
    """(checkpoint rows, shift rows, caps) for the base, each capped base and each fine-tune of one trait.

    Projections are read on fixed texts — the trait's eval questions with the *base* model's answers — so a
    shift is the weights' doing, not the new answers'. Trait scores are each model's own answers, judged.
    ``caps`` None: floors come from this trait's base tokens (``axis``: see ``plan_caps``)."""
    from .backends.local import LocalBackend
    from .modelio import inference_options, load_model

    units = unit_directions(vectors)
    chats = eval_chats(trait, run.eval_questions)
    backend = LocalBackend(*load_model(base, opts=inference_options(exact=True)), name="base")
    with backend.steered([]):
        base_answers = backend.complete(chats, run.eval_params)
    fixed = [Item(c, a) for c, a in zip(chats, base_answers)]  # every model is read on the base's texts
    base_scores = trait_scores(judge, chats, base_answers)
    base_proj, tokens = read_projections(backend.model, backend.tok, fixed, layers, units, (), run.batch_size)
    name = trait.trait
    rows = [{"trait": name, "checkpoint": "base", "kind": "base", **score_summary(base_scores, None)}]
    shifts: list[dict] = []
    if caps is None and axis is not None:
        caps = plan_caps(axis, tokens, layers)
    for cap in caps or []:
        _, scores, proj, _ = _read(backend, chats, fixed, layers, units, run, judge, cap_steers(cap))
        label = cap_label(cap)
        rows.append({"trait": name, "checkpoint": label, "kind": "cap", **score_summary(scores, base_scores)})
        shifts += [{"trait": name, **r} for r in shift_rows(label, proj, base_proj, layers)]
    for t, model in with_adapters(backend.model, tuned):  # one base in memory, each LoRA switched in
        tuned_backend = LocalBackend(model, backend.tok, name=t["checkpoint"], prefix_cache=False)
        _, scores, proj, _ = _read(tuned_backend, chats, fixed, layers, units, run, judge)
        rows.append(
            {"trait": name, "checkpoint": t["checkpoint"], "kind": "finetune", **score_summary(scores, base_scores)}
        )
        shifts += [{"trait": name, **r} for r in shift_rows(t["checkpoint"], proj, base_proj, layers)]
    return rows, shifts, caps or []


def with_adapters(model, tuned: list[dict]):
    """Yield (checkpoint, model under its LoRA): the adapters are loaded into one PEFT wrapper of the base and
    switched, not merged into reloaded copies (~2.5 s a checkpoint on 2 CPU cores; unmerged LoRA is float32 like
    the base, so the comparison stays in one dtype). The base is wrapped in place: read it before."""
    if not tuned:
        return
    from peft import PeftModel

    peft = PeftModel.from_pretrained(model, tuned[0]["path"], adapter_name="a0")
    for i, t in enumerate(tuned):
        if i:
            peft.load_adapter(t["path"], adapter_name=f"a{i}")
        peft.set_adapter(f"a{i}")
        peft.eval()
        yield t, peft


def at_layer(shifts: list[dict], trait: str, checkpoint: str, layer: int) -> dict[str, float]:
    """{view: shift} of one checkpoint at one layer (for the summary table)."""
    return {
        r["view"]: r["shift"]
        for r in shifts
        if r["trait"] == trait and r["checkpoint"] == checkpoint and r["layer"] == layer
    }
