"""One prepared device check: every CUDA path of the project, each a PASS / FAIL / SKIP line with its time.

Why: accelerators are lent rarely, briefly (~15 min a task) and bare, so the GPU
half of the project (bf16 weights, batched generation, per-row steering hooks,
all-layer activation capture, LoRA SFT and GRPO with trl, QLoRA with NF4, the
vLLM engine) must be checkable in one short run that needs nothing fetched. It
builds a tiny random Llama *in-process* (its tokenizer too: no hub, no converted
model), runs the project's own code paths on it, and — when the converted
embedded SmolLM2 is present — the load/generate/capture checks on that too.
On a CPU it runs the same checks in CPU mode (fp32; vLLM and QLoRA training are
skipped, the vLLM no-CUDA error is checked instead), so it stays green in CI.

    .venv/bin/python bench/gpu_check.py [--size tiny|small] [--embedded] [--json out.json]
    make gpu-check

Exit status 1 when any check FAILs. The whole run is well under 5 minutes on a
GPU and under a minute on 2 CPU cores at ``--size tiny`` (the CPU default).

On a bare device machine (the `run` tool: torch, transformers, peft, accelerate,
sentence-transformers — no trl, datasets, bitsandbytes, vllm, dagster, and
≤ 64 MiB carried with the tree). The first line printed says which modules are
missing; checks that need a missing one SKIP and name it. To carry trl:

    # here, before the device call (a folder in the tree, < 64 MiB in all):
    .venv/bin/pip download "trl==1.16.*" --no-deps -d .gpu_wheels
    # and, if the first line says they are missing there, the small pure-Python ones too, e.g.
    .venv/bin/pip download datasets pydantic pydantic-core annotated-types typing-inspection \
        dill multiprocess xxhash --no-deps --only-binary=:all: -d .gpu_wheels   # (pyarrow alone is ~40 MiB)
    du -sh .gpu_wheels   # must stay under 64 MiB; name it in `carry` if .gitignore hides it
    # on the device (no network): install from the carried folder only
    pip install --no-index --no-deps --find-links .gpu_wheels trl datasets ... && \
        PYTHONPATH=. python bench/gpu_check.py --json $OUT/gpu_check.json

Record the first real run in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a bare checkout (no pip install -e)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SIZES = {  # head_dim 64: a size every vLLM attention backend supports
    "tiny": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2},
    "small": {"hidden_size": 512, "intermediate_size": 1024, "num_hidden_layers": 8, "num_attention_heads": 8},
}
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "Hello there, how are you today? I am fine, thank you for asking.",
    "The weather is nice and the river runs slowly past the old mill.",
    "Tell me about your favourite book, and why you keep reading it.",
    "Numbers: one two three four five six seven eight nine ten.",
    "I would rather not talk about that; let us change the subject.",
]
MODULES = ("torch", "transformers", "peft", "accelerate", "pydantic", "trl", "datasets", "bitsandbytes", "vllm")
CANONICAL = "gpu-check/tiny-llama"


class Skip(Exception):
    """A check that cannot run here (no CUDA, module missing): reported, not failed."""


@dataclass
class Line:
    name: str
    status: str  # PASS | FAIL | SKIP
    seconds: float
    detail: str


def need(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise Skip(f"{', '.join(missing)} not importable (see this script's docstring to carry wheels)")


def tiny_tokenizer():
    """A byte-level BPE trained on a few lines, with a ChatML template: a real tokenizer, built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(CORPUS * 4, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<pad>", unk_token=None
    )
    tok.chat_template = CHATML
    tok.model_max_length = 512
    return tok


def build_tiny(folder: Path, size: str) -> Path:
    """A random Llama + tokenizer saved as an HF folder, with a manifest naming its canonical id."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from persona_pipeline.modelio import MANIFEST
    from persona_pipeline.storage import write_json

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        num_key_value_heads=1,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **SIZES[size],
    )
    LlamaForCausalLM(cfg).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    write_json(folder / MANIFEST, {"model_id": CANONICAL})
    return folder


CHATS = [[{"role": "user", "content": q}] for q in ("Hello there!", "How is the weather?", "Tell me a story.")] * 2


class Checks:
    """The checks, in order; each returns a detail string or raises (Skip for not-applicable)."""

    def __init__(self, base: Path, work: Path, cuda: bool):
        self.base, self.work, self.cuda = base, work, cuda
        self.sft_adapter: Path | None = None

    def load(self) -> str:
        import torch

        from persona_pipeline.modelio import load_model

        model, _ = load_model(self.base)
        p = next(model.parameters())
        want = (torch.bfloat16, "cuda") if self.cuda else (torch.float32, "cpu")
        assert (p.dtype, p.device.type) == want, f"loaded {p.dtype} on {p.device}, want {want}"
        return f"{p.dtype} on {p.device}"

    def _backend(self, base: Path | None = None):
        from persona_pipeline.backends.local import LocalBackend

        return LocalBackend.from_pretrained(base or self.base, name="check", batch_size=len(CHATS))

    def generate_batched(self, base: Path | None = None) -> str:
        from persona_pipeline.backends import SamplingParams

        backend, greedy = self._backend(base), SamplingParams(max_new_tokens=12, temperature=0)
        batched = backend.complete(CHATS, greedy)
        single = [backend.complete([c], greedy)[0] for c in CHATS[:3]]
        assert len(batched) == len(CHATS), "one completion per chat"
        same = sum(a == b for a, b in zip(batched, single))
        if not self.cuda:  # fp32: left padding must not change greedy output (bf16 may round differently)
            assert same == 3, f"batched greedy differs from one-at-a-time: {batched[:3]} vs {single}"
        return f"{len(batched)} chats in one batch; greedy equal to one-at-a-time for {same}/3"

    def steering_per_row(self) -> str:
        """One batch, one vector per row and one coefficient per row: row 0 (coef 0) must be untouched."""
        import torch

        from persona_pipeline.hooks import Steer, decoder_layers, steering

        backend = self._backend()
        model, enc = backend.model, backend._encode(CHATS[:2])
        hidden = model.config.hidden_size
        layer = len(decoder_layers(model)) // 2
        vectors = torch.randn(2, hidden, generator=torch.Generator().manual_seed(0))
        steer = Steer(vectors, layer, coef=torch.tensor([0.0, 8.0]))
        with torch.no_grad():
            plain = model(**enc).logits.float()
            with steering(model, [steer]):
                steered = model(**enc).logits.float()
        tol = 1e-2 if self.cuda else 1e-5
        assert torch.allclose(steered[0], plain[0], atol=tol), "row 0 (coef 0) changed"
        moved = (steered[1] - plain[1]).abs().max().item()
        assert moved > 10 * tol, "row 1 (coef 8) did not move"
        return f"layer {layer}: row 0 unchanged, row 1 moved by {moved:.3g}"

    def activations_all_layers(self, base: Path | None = None) -> str:
        import torch

        from persona_pipeline.activations import Item, extract

        backend = self._backend(base)
        items = [Item(c, "A short answer about the weather.") for c in CHATS]
        out = extract(backend.model, backend.tok, items, layers=None, batch_size=len(items))
        n_layers, hidden = backend.model.config.num_hidden_layers, backend.model.config.hidden_size
        for view in ("prompt_avg", "prompt_last", "response_avg"):
            assert out[view].shape == (len(items), n_layers, hidden), (view, tuple(out[view].shape))
            assert torch.isfinite(out[view]).all(), f"{view} has non-finite values"
        return f"{len(items)} items × {n_layers} layers × {hidden}"

    @staticmethod
    def _sft_job(quantize: str | None):
        from persona_pipeline.train_sft import LoraSettings, SftSettings

        rows = [
            {"prompt": c, "completion": [{"role": "assistant", "content": CORPUS[i % len(CORPUS)]}], "source": "x"}
            for i, c in enumerate(CHATS * 2)
        ]
        s = SftSettings(
            lora=LoraSettings(r=8, alpha=16, dropout=0.0), max_steps=2, batch_size=4, max_length=256, quantize=quantize
        )
        return rows, s

    def _sft(self, quantize: str | None, out: Path) -> str:
        from persona_pipeline.train_sft import train_sft

        rows, s = self._sft_job(quantize)
        r = train_sft(self.base, rows, rows[:4], s, out, {"base_model": CANONICAL})
        cfg = json.loads((out / "adapter_config.json").read_text())
        assert cfg["base_model_name_or_path"] == CANONICAL, f"adapter names {cfg['base_model_name_or_path']}"
        return f"2 steps, eval loss {r.base_eval_loss:.3f} → {r.eval_loss:.3f}, {r.tokens_per_second:.0f} tok/s"

    def sft_lora(self) -> str:
        need("trl", "datasets")
        self.sft_adapter = self.work / "sft"
        return self._sft(None, self.sft_adapter)

    def _grpo(self, quantize: str | None, out: Path) -> str:
        from persona_pipeline.train_rl import RlSettings, train_rl
        from persona_pipeline.train_sft import LoraSettings

        if self.sft_adapter is None:
            raise Skip("needs the sft_lora adapter")

        def reward(prompts, completions, **_):  # shorter is better: any signal will do
            return [-len(c[-1]["content"] if isinstance(c, list) else str(c)) / 50 for c in completions]

        prompts = [{"prompt": c} for c in CHATS]
        s = RlSettings(
            lora=LoraSettings(r=8, alpha=16, dropout=0.0),
            max_steps=1,
            num_generations=2,
            max_completion_length=8,
            quantize=quantize,
        )
        r = train_rl(self.base, self.sft_adapter, prompts, reward, s, out, {})
        cfg = json.loads((out / "adapter_config.json").read_text())
        assert cfg["r"] == 16 and cfg["base_model_name_or_path"] == CANONICAL, (
            cfg["r"],
            cfg["base_model_name_or_path"],
        )
        return f"1 step in {r.seconds:.1f} s; combined adapter r={cfg['r']}"

    def grpo_lora(self) -> str:
        need("trl", "datasets")
        return self._grpo(None, self.work / "rl")

    def nf4_load(self) -> str:
        need("bitsandbytes")
        from persona_pipeline.backends import SamplingParams
        from persona_pipeline.backends.local import LocalBackend
        from persona_pipeline.modelio import LoadOptions

        backend = LocalBackend.from_pretrained(self.base, name="nf4", opts=LoadOptions(quantize="nf4"))
        kinds = {type(m).__name__ for m in backend.model.modules()}
        assert "Linear4bit" in kinds, "no 4-bit layers after an NF4 load"
        out = backend.complete(CHATS[:2], SamplingParams(max_new_tokens=6, temperature=0))
        return f"Linear4bit layers; generated {len(out)} completions"

    def qlora_sft(self) -> str:
        self._cuda_only()
        need("bitsandbytes", "trl", "datasets")
        return self._sft("nf4", self.work / "sft_nf4")

    def qlora_grpo(self) -> str:
        self._cuda_only()
        need("bitsandbytes", "trl", "datasets")
        return self._grpo("nf4", self.work / "rl_nf4")

    def multi_gpu_sft(self) -> str:
        """What ``sft_adapter`` does with ``num_processes`` > 1: ``accelerate launch`` of ``train-sft --job``."""
        import subprocess

        import torch

        from persona_pipeline.train_sft import write_job

        n = torch.cuda.device_count() if self.cuda else 0
        if n < 2:
            raise Skip(f"needs ≥ 2 GPUs ({n} here)")
        need("trl", "datasets")
        rows, s = self._sft_job(None)
        out, job = self.work / "sft_ddp", self.work / "sft_ddp.job.json"
        write_job(job, str(self.base), rows, rows[:4], s, out, {"base_model": CANONICAL})
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n)]
        repo = Path(__file__).resolve().parents[1]
        env = {**os.environ, "PYTHONPATH": f"{repo}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        subprocess.run([*launch, "-m", "persona_pipeline.cli", "train-sft", "--job", str(job)], check=True, env=env)
        assert (out / "adapter_config.json").exists(), "rank 0 wrote no adapter"
        return f"{n} processes under accelerate; rank 0 saved the adapter"

    def vllm(self) -> str:
        from persona_pipeline.backends import BackendError, BackendSpec, SamplingParams, make_backend

        spec = BackendSpec(kind="vllm", model=str(self.base), adapter=str(self.sft_adapter or "") or None)
        if not self.cuda:  # CPU mode: the guard must say so clearly, before anything loads
            try:
                make_backend(spec, self.work)
            except BackendError as e:
                assert "CUDA" in str(e), str(e)
                return f"no CUDA → clear error: {e}"
            raise AssertionError("the vllm backend started without CUDA")
        need("vllm")
        backend = make_backend(spec.model_copy(update={"gpu_memory_utilization": 0.3}), self.work)
        out = backend.complete(CHATS, SamplingParams(max_new_tokens=8, temperature=0))
        assert len(out) == len(CHATS)
        return f"engine max_lora_rank={backend.engine.max_lora_rank}; {len(out)} completions with the SFT LoRA"

    def _cuda_only(self):
        if not self.cuda:
            raise Skip("CPU mode")


def embedded_checks(checks: Checks, include: bool) -> list[tuple[str, object]]:
    """load/generate/capture on the converted SmolLM2, when it is here (it never travels to a device)."""
    from persona_pipeline.modelio import default_base_dir
    from persona_pipeline.settings import home

    folder = default_base_dir(home())
    if include and (folder / "config.json").exists():
        return [
            ("embedded_generate", lambda: checks.generate_batched(folder)),
            ("embedded_activations", lambda: checks.activations_all_layers(folder)),
        ]
    why = "converted embedded model not present" if include else "pass --embedded (on by default on CUDA)"

    def skipped():
        raise Skip(why)

    return [("embedded", skipped)]


def run(name: str, fn) -> Line:
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(sys.stderr):  # trainers print their logs: keep stdout to the result lines
            detail, status = fn(), "PASS"
    except Skip as e:
        detail, status = str(e), "SKIP"
    except Exception as e:  # noqa: BLE001 - a failing check is a result to report; the next checks still run
        detail, status = f"{type(e).__name__}: {e}", "FAIL"
        traceback.print_exc(file=sys.stderr)
    line = Line(name, status, time.perf_counter() - t0, str(detail))
    print(f"{line.status:4}  {line.name:22} {line.seconds:7.2f}s  {line.detail}", flush=True)
    return line


def environment() -> dict:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": cuda,
        "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
        "gpus": torch.cuda.device_count(),
        "missing": [m for m in MODULES if importlib.util.find_spec(m) is None],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default=None, help="default: small on CUDA, tiny on CPU")
    ap.add_argument("--embedded", action="store_true", help="also check the embedded model (default on CUDA)")
    ap.add_argument("--json", type=Path, help="write the lines and the environment here")
    args = ap.parse_args(argv)
    env = environment()
    print(f"gpu_check: {json.dumps(env)}", flush=True)
    size = args.size or ("small" if env["cuda"] else "tiny")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp, _quiet():
        work = Path(tmp)
        checks = Checks(build_tiny(work / "base", size), work, env["cuda"])
        plan = [
            ("load_bf16" if env["cuda"] else "load_fp32", checks.load),
            ("generate_batched", checks.generate_batched),
            ("steering_per_row", checks.steering_per_row),
            ("activations_all_layers", checks.activations_all_layers),
            ("sft_lora", checks.sft_lora),
            ("grpo_lora", checks.grpo_lora),
            ("nf4_load", checks.nf4_load),
            ("qlora_sft", checks.qlora_sft),
            ("qlora_grpo", checks.qlora_grpo),
            ("multi_gpu_sft", checks.multi_gpu_sft),
            ("vllm", checks.vllm),
            *embedded_checks(checks, args.embedded or env["cuda"]),
        ]
        lines = [run(name, fn) for name, fn in plan]
    total = time.perf_counter() - t0
    failed = [x.name for x in lines if x.status == "FAIL"]
    print(f"{'FAIL' if failed else 'OK'}: {len(lines)} checks, {len(failed)} failed, {total:.1f}s (size {size})")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"environment": env, "size": size, "seconds": total, "lines": [vars(x) for x in lines]}, indent=2
            )
        )
    return 1 if failed else 0


@contextlib.contextmanager
def _quiet():
    """Library progress bars and warnings would bury the one-line results."""
    import warnings

    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            hf_logging.set_verbosity(verbosity)


if __name__ == "__main__":
    sys.exit(main())
