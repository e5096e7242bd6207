"""The GPU paths, checked without a GPU: vLLM engine arguments, portable adapters, QLoRA plumbing.

vLLM cannot import here (its wheel is CUDA-only), so a stand-in module records
what our code asks of it; CUDA is patched on only to reach the code that runs
there, and every load that would really need a GPU is stopped right after the
arguments are captured. Everything that can run on a CPU runs for real.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch

from persona_pipeline import modelio
from persona_pipeline.backends import BackendError, BackendSpec, SamplingParams, make_backend, vllm_engine
from persona_pipeline.storage import write_json

REPO = Path(__file__).resolve().parents[1]
CHATS = [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "How are you?"}]]


class Stop(Exception):
    """Raised by a patched loader once it has the arguments a GPU load would get."""


def adapter(folder: Path, r: int, rank_pattern: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    write_json(folder / "adapter_config.json", {"r": r, "rank_pattern": rank_pattern or {}, "peft_type": "LORA"})
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    return folder


@pytest.fixture()
def fake_vllm(monkeypatch):
    """A stand-in ``vllm`` package recording engine starts, requests and LoRA requests; CUDA reported present."""
    calls: dict[str, list] = {"engines": [], "chat": []}

    class LLM:
        def __init__(self, **kwargs):
            calls["engines"].append(kwargs)

        def chat(self, chats, sampling_params, lora_request=None, use_tqdm=True):
            calls["chat"].append({"n": len(chats), "params": sampling_params.kwargs, "lora": lora_request})
            token = types.SimpleNamespace(decoded_token=" Yes", logprob=-0.25)
            out = types.SimpleNamespace(text=" hello END tail", logprobs=[{7: token}])
            return [types.SimpleNamespace(outputs=[out]) for _ in chats]

    class VSamplingParams:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    class LoRARequest:
        def __init__(self, name, lora_int_id, lora_path):
            self.name, self.id, self.path = name, lora_int_id, lora_path

    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = LLM, VSamplingParams
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = LoRARequest
    for name, module in {
        "vllm": vllm,
        "vllm.lora": types.ModuleType("vllm.lora"),
        "vllm.lora.request": request,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(modelio, "cuda_available", lambda: True)
    vllm_engine.shutdown()
    yield calls
    vllm_engine.shutdown()


# -- vLLM --------------------------------------------------------------------


def test_lora_rank_rounds_up_to_what_vllm_accepts(tmp_path):
    assert [vllm_engine.lora_rank_for(r) for r in (1, 8, 9, 32, 48, 64, 65, 200)] == [8, 8, 16, 32, 64, 64, 128, 256]
    with pytest.raises(BackendError, match="largest"):
        vllm_engine.lora_rank_for(4096)
    assert vllm_engine.adapter_rank(adapter(tmp_path / "a", 8, {"q_proj": 96})) == 96
    write_json(tmp_path / "bad" / "adapter_config.json", {"peft_type": "LORA"})
    with pytest.raises(BackendError, match="field r"):
        vllm_engine.adapter_rank(tmp_path / "bad")


def test_roles_share_one_engine_sized_for_their_adapters(fake_vllm, tmp_path, monkeypatch):
    from persona_pipeline.defs.resources import model_resource_from_env

    sft, rl = adapter(tmp_path / "sft", 32), adapter(tmp_path / "rl", 48)  # rl: SFT r32 ⊕ RL r16 (PEFT cat)
    monkeypatch.setenv("PERSONA_PIPELINE_HOME", str(tmp_path / "home"))
    for role, extra in {"teacher": {"ADAPTER": str(rl)}, "assistant": {"ADAPTER": str(sft)}, "judge": {}}.items():
        for k, v in {"KIND": "vllm", "MODEL": "org/base-8b", "GPU_MEMORY_UTILIZATION": "0.35", **extra}.items():
            monkeypatch.setenv(f"PERSONA_{role.upper()}_{k}", v)
    teacher, assistant, judge = (model_resource_from_env(r).backend() for r in ("teacher", "assistant", "judge"))

    assert fake_vllm["engines"] == [
        {"model": "org/base-8b", "gpu_memory_utilization": 0.35, "enable_lora": True, "max_lora_rank": 64}
    ]
    assert teacher.engine is assistant.engine is judge.engine
    teacher.complete(CHATS, SamplingParams(max_new_tokens=9, temperature=0.5, seed=3, stop=["END"]))
    assert assistant.complete(CHATS[:1], SamplingParams()) == ["hello END tail"]
    assert judge.next_token_logprobs(CHATS, top_k=5) == [{"Yes": -0.25}] * 2
    t, a, j = fake_vllm["chat"]
    assert (t["lora"].path, a["lora"].path, j["lora"]) == (str(rl), str(sft), None)
    assert t["lora"].id != a["lora"].id
    assert t["params"] == {"max_tokens": 9, "temperature": 0.5, "top_p": 0.95, "seed": 3, "stop": ["END"]}
    assert j["params"] == {"max_tokens": 1, "temperature": 0, "logprobs": 5}


def test_engine_rank_and_memory_share_are_settable_and_enforced(fake_vllm, tmp_path):
    home = tmp_path / "home"
    base = make_backend(BackendSpec(kind="vllm", model="org/m", max_lora_rank=16, gpu_memory_utilization=0.2), home)
    assert fake_vllm["engines"][-1] == {
        "model": "org/m",
        "gpu_memory_utilization": 0.2,
        "enable_lora": True,
        "max_lora_rank": 16,
    }
    with pytest.raises(BackendError, match="max_lora_rank=16.*rank 32.*MAX_LORA_RANK=32"):
        make_backend(BackendSpec(kind="vllm", model="org/m", adapter=str(adapter(tmp_path / "sft", 32))), home)
    plain = make_backend(BackendSpec(kind="vllm", model="org/other"), home)  # another model: its own engine
    assert fake_vllm["engines"][-1] == {"model": "org/other", "gpu_memory_utilization": 0.5, "enable_lora": False}
    assert plain.engine is not base.engine and len(fake_vllm["engines"]) == 2
    with pytest.raises(BackendError, match="LoRA off"):
        make_backend(BackendSpec(kind="vllm", model="org/other", adapter=str(tmp_path / "sft")), home)


def test_retrained_adapter_gets_a_new_lora_id(fake_vllm, tmp_path):
    sft = adapter(tmp_path / "sft", 32)
    backend = make_backend(BackendSpec(kind="vllm", model="org/m", adapter=str(sft)), tmp_path)
    backend.complete(CHATS, SamplingParams())
    backend.complete(CHATS, SamplingParams())
    stamp = (sft / "adapter_model.safetensors").stat().st_mtime + 10
    os.utime(sft / "adapter_model.safetensors", (stamp, stamp))
    backend.complete(CHATS, SamplingParams())
    ids = [c["lora"].id for c in fake_vllm["chat"]]
    assert ids[0] == ids[1] != ids[2]


def test_pipeline_adapter_names_and_missing_adapters(fake_vllm, tmp_path):
    home = tmp_path / "home"
    adapter(home / "models" / "rl_adapter", 48)
    backend = make_backend(BackendSpec(kind="vllm", model="org/m", adapter="rl"), home)
    assert fake_vllm["engines"][-1]["max_lora_rank"] == 64 and backend.adapter == home / "models" / "rl_adapter"
    with pytest.raises(FileNotFoundError, match="'sft'.*adapter_config.json"):
        make_backend(BackendSpec(kind="vllm", model="org/m", adapter="sft"), home)


def test_vllm_without_cuda_or_without_vllm_is_a_clear_error(fake_vllm, monkeypatch, tmp_path):
    monkeypatch.setattr(modelio, "cuda_available", lambda: False)
    with pytest.raises(BackendError, match="needs a CUDA GPU"):
        make_backend(BackendSpec(kind="vllm", model="org/m"), tmp_path)
    assert fake_vllm["engines"] == []
    monkeypatch.setattr(modelio, "cuda_available", lambda: True)
    monkeypatch.setitem(sys.modules, "vllm", None)  # not installed
    with pytest.raises(BackendError, match="pip install vllm"):
        make_backend(BackendSpec(kind="vllm", model="org/m"), tmp_path)


# -- portable adapters -----------------------------------------------------------


def test_adapter_names_its_canonical_base_and_loads_from_it(tiny_model_dir, tmp_path):
    """PEFT records the local folder; we record the model's real name and map it back when loading."""
    from peft import get_peft_model

    from persona_pipeline.train_sft import LoraSettings

    home = tmp_path / "home"
    base = home / "models" / "tiny"
    shutil.copytree(tiny_model_dir, base)
    write_json(base / modelio.MANIFEST, {"model_id": "test-org/tiny-llama"})
    model, tok = modelio.load_model(base)
    peft = get_peft_model(model, LoraSettings(r=8, alpha=16, dropout=0.0).peft_config())
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    saved = tmp_path / "adapter"
    peft.save_pretrained(saved, safe_serialization=True)
    assert json.loads((saved / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)

    assert modelio.make_portable(saved, base) == "test-org/tiny-llama"
    assert json.loads((saved / "adapter_config.json").read_text())["base_model_name_or_path"] == "test-org/tiny-llama"
    assert modelio.base_for_adapter(saved, home) == base  # the canonical id maps to the local copy
    loaded, _ = modelio.load_adapter(saved, home)  # PeftModel.from_pretrained on the resolved base
    ids = tok("hello there, how are you", return_tensors="pt").input_ids
    with torch.no_grad():
        want, got = peft.eval()(ids).logits, loaded(ids).logits
        plain = modelio.load_model(base)[0](ids).logits
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-3)  # the adapter really is applied
    # elsewhere (no local copy) the name stays the hub id / the user's path
    assert modelio.base_for_adapter(saved, tmp_path / "other-home") == "test-org/tiny-llama"


def test_embedded_base_is_recorded_by_its_hub_id(embedded_dir, shared_home):
    assert modelio.canonical_name(embedded_dir) == modelio.EMBEDDED_ID == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert modelio.local_folder_for(modelio.EMBEDDED_ID, shared_home) == embedded_dir
    assert modelio.canonical_name("/data/my-model") == "/data/my-model"  # a user's path stays theirs


# -- QLoRA plumbing -----------------------------------------------------------------


def test_quantize_choices():
    assert [modelio.resolve_quantize(v, cuda=True) for v in ("auto", "nf4", "none", None)] == ["nf4", "nf4", None, None]
    assert [modelio.resolve_quantize(v, cuda=False) for v in ("auto", "nf4", "none", None)] == [None, "nf4", None, None]
    with pytest.raises(ValueError, match="int8"):
        modelio.resolve_quantize("int8")


def test_policy_quantize_reaches_inference_loads(monkeypatch, tiny_model_dir):
    """PERSONA_POLICY_QUANTIZE (the policy resource's setting) is honoured by the policy loads assets make."""
    from persona_pipeline.backends import _local
    from persona_pipeline.backends.local import LocalBackend
    from persona_pipeline.defs.resources import ModelResource

    seen = []
    monkeypatch.setattr(LocalBackend, "from_pretrained", classmethod(lambda cls, *a, **kw: seen.append(kw) or cls))
    monkeypatch.setenv("PERSONA_POLICY_QUANTIZE", "auto")
    _local.cache_clear()
    try:
        for cuda, want in ((True, "nf4"), (False, None)):
            monkeypatch.setattr(modelio, "cuda_available", lambda cuda=cuda: cuda)
            make_backend(BackendSpec(model=str(tiny_model_dir), adapter=None), Path("."))
            assert seen[-1]["opts"].quantize == want
        # other roles keep their own setting (PERSONA_TEACHER_QUANTIZE), not the policy's
        monkeypatch.setattr(modelio, "cuda_available", lambda: True)
        assert ModelResource(role="teacher", model=str(tiny_model_dir)).spec().quantize is None
    finally:
        _local.cache_clear()


def test_nf4_load_arguments_on_cuda(monkeypatch, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    seen = {}

    def capture(*args, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(modelio, "cuda_available", lambda: True)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", capture)
    with pytest.raises(Stop):
        modelio.load_model(tiny_model_dir, opts=modelio.LoadOptions(quantize="nf4"))
    q = seen["quantization_config"]
    assert (q.load_in_4bit, q.bnb_4bit_quant_type, q.bnb_4bit_compute_dtype) == (True, "nf4", torch.bfloat16)
    assert seen["device_map"] == "auto" and seen["dtype"] == torch.bfloat16


def test_rl_stage_loads_its_base_quantised(monkeypatch, tiny_model_dir, tmp_path):
    from persona_pipeline.defs.assets.models import RlConfig
    from persona_pipeline.train_rl import RlSettings, train_rl

    seen = []

    def capture(base, adapter=None, opts=None, trainable=False):
        seen.append((base, adapter, opts))
        raise Stop

    monkeypatch.setattr(modelio, "load_model", capture)
    prompts = [{"prompt": CHATS[0], "spec": "x", "history": "[]"}]
    with pytest.raises(Stop):
        train_rl(tiny_model_dir, tmp_path / "sft", prompts, None, RlSettings(quantize="nf4"), tmp_path / "rl", {})
    assert seen == [(tiny_model_dir, tmp_path / "sft", modelio.LoadOptions(quantize="nf4"))]
    assert RlConfig().quantize == "auto"  # like sft_adapter: NF4 on CUDA by default


# -- the prepared device check, in CPU mode ----------------------------------------------


def test_gpu_check_runs_green_in_cpu_mode(tmp_path, capsys, monkeypatch):
    """bench/gpu_check.py at its tiny size: every check that can run on a CPU passes, the rest skip."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", gpu_check)  # dataclasses look their module up there
    spec.loader.exec_module(gpu_check)
    if torch.cuda.is_available():
        pytest.skip("CPU-mode expectations")
    assert gpu_check.main(["--size", "tiny", "--json", str(tmp_path / "out.json")]) == 0
    report = json.loads((tmp_path / "out.json").read_text())
    status = {line["name"]: line["status"] for line in report["lines"]}
    must_pass = ["load_fp32", "generate_batched", "steering_per_row", "activations_all_layers", "sft_lora", "grpo_lora"]
    assert {n: status[n] for n in must_pass} == dict.fromkeys(must_pass, "PASS")
    assert status["vllm"] == "PASS"  # CPU mode: the no-CUDA error is clear and raised before any load
    assert status["qlora_sft"] == status["qlora_grpo"] == status["multi_gpu_sft"] == "SKIP"
    assert status["nf4_load"] == ("PASS" if importlib.util.find_spec("bitsandbytes") else "SKIP")
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in status) and "OK: " in out
