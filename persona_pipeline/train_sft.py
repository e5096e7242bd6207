"""Supervised fine-tuning of one LoRA/QLoRA adapter for every persona.

The data mixture follows the survey guide: persona data may be repeated
(``weights``), and a small retention set of the base model's own answers to
general prompts keeps the adapter a normal assistant when no persona is asked
for. Held-out pairs are whole HITL sessions and conversations (``splits``), so no
eval prompt shares a session or a history with a training prompt. TRL trains on
conversational prompt/completion rows with completion-only loss.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .splits import dedupe_rows, split_pairs
from .storage import atomic_path, write_json

TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoraSettings:
    r: int = 32
    alpha: int = 64
    dropout: float = 0.1
    target_modules: tuple[str, ...] = TARGET_MODULES

    def peft_config(self):
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            task_type="CAUSAL_LM",
        )


@dataclass
class SftSettings:
    lora: LoraSettings = field(default_factory=LoraSettings)
    learning_rate: float = 2e-4
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 4
    grad_accum: int = 1
    max_length: int = 1024
    eval_fraction: float = 0.1
    max_eval_rows: int = 48
    weights: dict[str, float] = field(default_factory=lambda: {"synthetic": 1, "hitl": 2, "survey": 2, "retention": 1})
    quantize: str | None = None  # "nf4" → QLoRA
    logging_steps: int = 2
    seed: int = 0
    steer: PreventiveSteer | None = None  # training-time (preventative) steering
    snapshot_steps: tuple[int, ...] = ()  # optimizer steps whose adapter is also kept, under snapshots/step-<N>


@dataclass
class PreventiveSteer:
    """Steer the residual stream *during training only* (persona-vectors' preventative steering).

    ``add`` pushes along the trait so the optimiser need not move the weights
    that way; ``ablate`` removes the trait direction while training. Inference
    and the before/after eval losses run unsteered.
    """

    vector: object  # torch.Tensor [hidden]
    layer: int
    coef: float = 4.0
    mode: str = "add"

    def hooks(self):
        from .hooks import Steer

        if self.mode not in ("add", "ablate"):
            raise ValueError(f"preventative steering mode {self.mode!r}: use add or ablate")
        unit = self.vector / self.vector.norm()
        return [Steer(unit, self.layer, self.coef, self.mode)]


def _row(pair: dict) -> dict:
    return {
        "id": pair["id"],
        "conversation_id": pair["conversation_id"],
        "prompt": pair["prompt"],
        "completion": pair["completion"],
        "source": pair["source"],
        "persona_id": pair["persona_id"],
    }


def build_mixture(pairs: list[dict], retention: list[dict], s: SftSettings) -> tuple[list[dict], list[dict], dict]:
    """Weighted training rows, held-out eval rows, and the achieved mixture (with the split's manifest).

    Held-out rows are whole HITL sessions / conversations (``splits.split_pairs``), so no eval
    prompt shares a session or a history with a training prompt.
    """
    if not pairs:
        raise ValueError("sft_pairs is empty: nothing to train on (check the conversations filter)")
    split = split_pairs(pairs, s.eval_fraction)
    if not split.heldout:
        raise ValueError("sft_pairs come from one conversation/session: nothing can be held out for eval loss")
    train_src = [_row(p) for p in split.train]
    eval_rows = dedupe_rows([_row(p) for p in split.heldout])
    # rows with no persona: the base model's own answers ("retention") and the shipped general chat ("general")
    rows = train_src + [{**r, "source": r.get("source", "retention"), "persona_id": "none"} for r in retention]
    rng = random.Random(s.seed)
    train: list[dict] = []
    for r in rows:
        w = s.weights.get(r["source"], 1.0)
        copies = int(w) + (1 if rng.random() < w - int(w) else 0)
        train += [r] * copies
    rng.shuffle(train)
    rng.shuffle(eval_rows)
    eval_rows = eval_rows[: s.max_eval_rows]
    counts: dict[str, int] = {}
    for r in train:
        counts[r["source"]] = counts.get(r["source"], 0) + 1
    mixture = {
        k: {"rows": v, "share": round(v / len(train), 3), "weight": s.weights.get(k, 1.0)}
        for k, v in sorted(counts.items())
    }
    return (
        train,
        eval_rows,
        {
            "train_rows": len(train),
            "eval_rows": len(eval_rows),
            "sources": mixture,
            "split": split.manifest(),
        },
    )


def _dataset(rows: list[dict]):
    from datasets import Dataset

    return Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])


def drop_overlong(rows: list[dict], tok, max_length: int) -> tuple[list[dict], int]:
    """Drop rows longer than max_length: right-truncation would cut the completion itself."""
    keep = []
    for r in rows:
        ids = tok.apply_chat_template(r["prompt"] + r["completion"], tokenize=True)
        # transformers 5 returns a BatchEncoding (a mapping, not a dict): its len() is its key count
        n = len(ids["input_ids"] if hasattr(ids, "keys") else ids)
        if n <= max_length:
            keep.append(r)
    return keep, len(rows) - len(keep)


@dataclass
class TrainResult:
    log_history: list[dict]
    base_eval_loss: float
    eval_loss: float
    train_tokens: int
    seconds: float
    tokens_per_second: float
    dropped_overlong: int
    snapshots: list[int] = field(default_factory=list)  # steps saved under snapshots/step-<N>


def snapshot_dir(adapter: Path, step: int) -> Path:
    """Where the adapter of optimizer step ``step`` is kept inside a fine-tune's folder."""
    return Path(adapter) / "snapshots" / f"step-{step}"


def _snapshot_callback(steps: tuple[int, ...], folder: Path, base: str | Path, saved: list[int]):
    """Keep the adapter at the chosen optimizer steps, like the final one (safetensors, portable config).

    They go inside the atomic output folder, so a killed run leaves no snapshot behind either."""
    from transformers import TrainerCallback

    from .modelio import make_portable

    wanted = set(steps)

    class Snapshots(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step in wanted and state.global_step not in saved:
                path = snapshot_dir(folder, state.global_step)
                model.save_pretrained(path, safe_serialization=True)
                make_portable(path, base)
                saved.append(state.global_step)

    return Snapshots()


def _training_steer(model, steer: PreventiveSteer | None):
    from .hooks import steering

    return steering(model, steer.hooks()) if steer else contextlib.nullcontext()


def _output(out: Path):
    """The adapter folder, written atomically — by the main process only under data-parallel training
    (the other ranks train into a scratch folder that is thrown away)."""
    import os

    return atomic_path(out) if int(os.environ.get("RANK", "0")) == 0 else _scratch()


@contextlib.contextmanager
def _scratch():
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="persona-sft-rank-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def settings_from_doc(doc: dict) -> SftSettings:
    """Rebuild ``SftSettings`` from ``_settings_doc`` (how the step hands them to ``accelerate launch``)."""
    doc = dict(doc)
    if doc.pop("steer", None):
        raise ValueError("preventative steering is not supported with num_processes > 1; train in-process")
    raw_lora = doc.pop("lora")
    lora = LoraSettings(**{**raw_lora, "target_modules": tuple(raw_lora["target_modules"])})
    doc["snapshot_steps"] = tuple(doc.get("snapshot_steps", ()))
    return SftSettings(lora=lora, **doc)


def _eval_loss(trainer, s: SftSettings) -> float:
    """Held-out loss; a clear error where no held-out completion token survives truncation."""
    metrics = trainer.evaluate()
    if "eval_loss" not in metrics:
        raise ValueError(
            f"SFT held-out rows have no completion token within max_length={s.max_length} (the prompt fills it); "
            "raise sft_max_length or shorten histories"
        )
    return metrics["eval_loss"]


def train_sft(
    base: str | Path, train: list[dict], eval_rows: list[dict], s: SftSettings, out: Path, card: dict
) -> TrainResult:
    """Train and save the adapter folder atomically (a killed run leaves no adapter behind).

    ``eval_rows`` empty: no held-out loss (NaN in the result) — for sets too small to hold rows out."""
    import math

    import torch
    from trl import SFTConfig, SFTTrainer

    from .modelio import LoadOptions, cuda_available, load_model, make_portable, mixed_bf16
    from .trl_scoring import score_labelled_positions_only

    score_labelled_positions_only()  # the persona line, not the whole row (1.5x a step on a CPU)
    model, tok = load_model(base, opts=LoadOptions(quantize=s.quantize), trainable=True)
    train, n_drop = drop_overlong(train, tok, s.max_length)
    heldout = bool(eval_rows)
    eval_rows, n_drop_eval = drop_overlong(eval_rows, tok, s.max_length)
    if not train or (heldout and not eval_rows):
        raise ValueError(f"no training/eval rows fit max_length={s.max_length}; raise it or shorten histories")
    cuda = cuda_available()
    with _output(out) as tmp:
        args = SFTConfig(
            output_dir=str(tmp.parent / "trainer"),
            learning_rate=s.learning_rate,
            num_train_epochs=s.epochs,
            max_steps=s.max_steps,
            per_device_train_batch_size=s.batch_size,
            per_device_eval_batch_size=s.batch_size,
            gradient_accumulation_steps=s.grad_accum,
            max_length=s.max_length,
            logging_steps=s.logging_steps,
            eval_strategy="no",
            save_strategy="no",
            report_to="none",
            seed=s.seed,
            bf16=mixed_bf16(),
            gradient_checkpointing=cuda,
            use_cpu=not cuda,
            completion_only_loss=True,
            dataloader_num_workers=0,
            include_num_input_tokens_seen="non_padding",
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=_dataset(train),
            eval_dataset=_dataset(eval_rows) if heldout else None,
            processing_class=tok,
            peft_config=s.lora.peft_config(),
        )
        saved: list[int] = []
        if s.snapshot_steps:
            trainer.add_callback(_snapshot_callback(tuple(s.snapshot_steps), tmp, base, saved))
        # LoRA B starts at zero: this is the base model's loss
        base_loss = _eval_loss(trainer, s) if heldout else math.nan
        t0 = time.perf_counter()
        with _training_steer(trainer.model, s.steer):
            trainer.train()
        seconds = time.perf_counter() - t0
        eval_loss = _eval_loss(trainer, s) if heldout else math.nan
        tokens = int(trainer.state.num_input_tokens_seen or 0)
        trainer.model.save_pretrained(tmp, safe_serialization=True)
        make_portable(tmp, base)  # adapter_config names the canonical base; the local path goes in the summary
        tok.save_pretrained(tmp)
        result = TrainResult(
            trainer.state.log_history,
            base_loss,
            eval_loss,
            tokens,
            seconds,
            tokens / seconds if seconds else 0.0,
            n_drop + n_drop_eval,
            sorted(saved),
        )
        write_json(
            tmp / "training_summary.json",
            {
                **card,
                "base_path": str(base),
                "result": {k: v for k, v in asdict(result).items() if k != "log_history"},
                "settings": _settings_doc(s),
            },
        )
        (tmp / "README.md").write_text(model_card(card, s, result))
    del trainer, model
    if cuda:
        torch.cuda.empty_cache()
    return result


def _settings_doc(s: SftSettings) -> dict:
    doc = asdict(s)
    doc["steer"] = s.steer and {"layer": s.steer.layer, "coef": s.steer.coef, "mode": s.steer.mode}
    return json.loads(json.dumps(doc, default=list))


def model_card(card: dict, s: SftSettings, r: TrainResult) -> str:
    return f"""---
library_name: peft
base_model: {card.get("base_model", "unknown")}
tags: [persona-pipeline, lora, persona-simulator]
---
# {card.get("name", "persona simulator adapter")}

One LoRA adapter for every persona: put `[PERSONA: <id>]` and the dialogue history in
the prompt (see `persona_pipeline.prompts.simulator_prompt`) and the model writes that
persona's next line.

- base model: `{card.get("base_model")}`
- data version: `{card.get("data_version")}`; personas: {", ".join(card.get("personas", []))}
- LoRA: r={s.lora.r}, alpha={s.lora.alpha}, dropout={s.lora.dropout}, modules={", ".join(s.lora.target_modules)}
- quantisation: {s.quantize or "none (full precision base)"}
- lr={s.learning_rate}, epochs={s.epochs}, max_steps={s.max_steps}, batch={s.batch_size}×{s.grad_accum}, max_length={s.max_length}
- mixture weights: {s.weights}
- snapshots at steps: {", ".join(map(str, r.snapshots)) or "none"}
- preventative steering: {f"{s.steer.mode} at layer {s.steer.layer}, coef {s.steer.coef}" if s.steer else "none"}
- held-out loss: base {r.base_eval_loss:.4f} → adapter {r.eval_loss:.4f}
- {r.train_tokens} training tokens in {r.seconds:.0f} s ({r.tokens_per_second:.0f} tok/s)

Load with `PeftModel.from_pretrained(base, this_folder)` or serve with
`vllm serve <base> --enable-lora --lora-modules persona-simulator=<this_folder>`.
"""


def write_job(
    path: Path, base: str, train: list[dict], eval_rows: list[dict], s: SftSettings, out: Path, card: dict
) -> None:
    """Everything ``persona-pipeline train-sft --job`` needs, for ``accelerate launch`` (one process per GPU)."""
    write_json(
        path,
        {
            "base": str(base),
            "train": train,
            "eval": eval_rows,
            "settings": _settings_doc(s),
            "out": str(out),
            "card": card,
        },
    )


def run_job(path: Path) -> TrainResult:
    """Train from a job file; the main process writes ``<out>.result.json`` next to the adapter."""
    import os

    job = json.loads(Path(path).read_text())
    out = Path(job["out"])
    result = train_sft(job["base"], job["train"], job["eval"], settings_from_doc(job["settings"]), out, job["card"])
    if int(os.environ.get("RANK", "0")) == 0:
        write_json(out.parent / f"{out.name}.result.json", asdict(result))
    return result


def train_sft_processes(
    base: str, train: list, eval_rows: list, s: SftSettings, out: Path, card: dict, num_processes: int = 1
) -> TrainResult:
    """In this process, or — with ``num_processes`` > 1 — data-parallel under ``accelerate launch``
    (``deploy/accelerate.yaml``, or ``PERSONA_PIPELINE_ACCELERATE_CONFIG``), one process per GPU."""
    if num_processes <= 1:
        return train_sft(base, train, eval_rows, s, out, card)
    import os
    import subprocess
    import sys

    job = out.parent / f"{out.name}.job.json"
    write_job(job, base, train, eval_rows, s, out, card)
    accelerate = Path(sys.executable).parent / "accelerate"
    config_file = os.environ.get(
        "PERSONA_PIPELINE_ACCELERATE_CONFIG", Path(__file__).resolve().parents[1] / "deploy" / "accelerate.yaml"
    )
    subprocess.run(
        [
            str(accelerate),
            "launch",
            "--config_file",
            str(config_file),
            "--num_processes",
            str(num_processes),
            "-m",
            "persona_pipeline.cli",
            "train-sft",
            "--job",
            str(job),
        ],
        check=True,
    )
    return TrainResult(**json.loads((out.parent / f"{out.name}.result.json").read_text()))


def retention_rows(base_path: str, questions: list[str], n: int) -> list[dict]:
    """The base model's own answers to general questions: the "stay a normal assistant" set."""
    from .backends import SamplingParams
    from .policy import policy_backend

    chats = [[{"role": "user", "content": q}] for q in questions[:n]]
    answers = policy_backend(base_path).complete(chats, SamplingParams(max_new_tokens=64, temperature=0))
    return [
        {"prompt": c, "completion": [{"role": "assistant", "content": a}]} for c, a in zip(chats, answers) if a.strip()
    ]


def retention_check(base: str, adapter: str, general: list, n: int, max_new_tokens: int = 48) -> dict:
    """Held-out general prompts, no persona: base vs adapter answers, similarity to the written answer."""
    from .general_chat import retention
    from .policy import policy_backend

    return retention(policy_backend(base, exact=True), policy_backend(base, adapter), general, n, max_new_tokens)


def preventive_steer(name: str | None, layer: int | None, coef: float, mode: str, n_layers: int):
    """Training-time steering from a vector name of a previous run (e.g. ``impolite``, ``persona:skeptic``,
    ``assistant_axis``) or a ``.safetensors`` path, at ``layer`` (default: the middle one); None when off."""
    if not name:
        return None
    from .settings import home
    from .vectors import resolver

    v = resolver(home(), paths=True)(name)
    if v is None:
        raise ValueError(
            f"sft_adapter config preventative_vector={name!r}: no such vector under "
            f"{home()} (materialise persona_vectors first, or give a .safetensors path)"
        )
    layer = layer if layer is not None else n_layers // 2
    return PreventiveSteer(v[layer] if v.dim() == 2 else v, layer, coef, mode)


def log_curve(history: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of one logged metric in a trainer's ``log_history``."""
    pts = [(h["step"], h[key]) for h in history if key in h and "step" in h]
    return [p[0] for p in pts], [float(p[1]) for p in pts]
