"""SIGKILL a real `synthetic_conversations` run mid-way; the rerun loses and duplicates nothing."""

import json
import os
import signal
import subprocess
import time

import pyarrow.parquet as pq
import pytest
from _dagster_helpers import REPO, isolated_env, materialize_cmd, persona_range, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _partial_states(work):
    states = {}
    for path in work.glob("*/*.json"):
        for d in json.loads(path.read_text())["dialogues"]:
            states[d["id"]] = d
    return states


def test_sigkill_then_rerun_resumes_without_loss_or_duplicates(tmp_path, embedded_dir, shared_home):
    env = isolated_env(tmp_path, shared_home)
    run_cli(materialize_cmd("persona_specs,topics"), env)
    home = tmp_path / "persona_home"
    work, out = home / "work" / "synthetic_conversations", home / "assets" / "synthetic_conversations"

    proc = subprocess.Popen(
        materialize_cmd("synthetic_conversations", persona_range()),
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 600
    try:
        while time.time() < deadline:
            states = _partial_states(work) if work.exists() else {}
            if states and min(len(d["turns"]) for d in states.values()) >= 3:
                break
            assert proc.poll() is None, "the run finished before it could be killed"
            time.sleep(0.2)
        else:
            pytest.fail("no progress checkpoint appeared in time")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    partial = _partial_states(work)
    assert partial and not all(d["done"] for d in partial.values()), "killed too late to test resuming"
    assert not out.exists() or not list(out.glob("*.parquet")), "a killed run left a half-written artifact"

    run_cli(materialize_cmd("synthetic_conversations", persona_range()), env)
    final = {}
    for path in out.glob("*.parquet"):
        for row in pq.read_table(path).to_pylist():
            assert row["id"] not in final, f"duplicated dialogue {row['id']}"
            final[row["id"]] = row
    assert set(final) == set(partial), "a dialogue was lost or invented"
    for cid, state in partial.items():
        kept = [t["content"] for t in final[cid]["turns"][: len(state["turns"])]]
        assert kept == [t["content"] for t in state["turns"]], f"{cid}: checkpointed turns were regenerated"
        assert len(final[cid]["turns"]) >= 8


def test_sigkill_during_sft_leaves_no_adapter_and_rerun_works(tmp_path, materialized, tiny_model_dir, shared_home):
    import shutil

    _src_env, src_assets = materialized
    env = isolated_env(tmp_path, shared_home)
    home = tmp_path / "persona_home"
    shutil.copytree(src_assets, home / "assets", ignore=shutil.ignore_patterns("sft_adapter.json", "rl_adapter.json"))
    (home / "assets" / "base_model.json").write_text(json.dumps({"path": str(tiny_model_dir)}))  # fast to train
    long_run = ["--config-json", json.dumps({"ops": {"sft_adapter": {"config": {"max_steps": 5000, "batch_size": 1}}}})]
    proc = subprocess.Popen(
        materialize_cmd("sft_adapter") + long_run,
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    models = home / "models"
    try:
        deadline = time.time() + 300
        while not list(models.glob(".sft_adapter.*.tmp/trainer")):
            assert proc.poll() is None and time.time() < deadline, "training never started"
            time.sleep(0.2)
        time.sleep(2)  # well inside the training loop
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (models / "sft_adapter").exists(), "a killed training run left an adapter a later stage would load"
    assert not (home / "assets" / "sft_adapter.json").exists()

    short = ["--config-json", json.dumps({"ops": {"sft_adapter": {"config": {"max_steps": 2, "batch_size": 1}}}})]
    run_cli(materialize_cmd("sft_adapter") + short, env)
    assert (models / "sft_adapter" / "adapter_model.safetensors").exists()
    assert not list(models.glob(".sft_adapter.*.tmp")), "the killed run's temp folder was not swept"


def test_sigkill_role_transcripts_then_rerun_keeps_finished_rollouts(tmp_path, embedded_dir, shared_home):
    from persona_pipeline.defs.assets._common import role_partitions

    env = isolated_env(tmp_path, shared_home)
    run_cli(materialize_cmd("role_specs,base_model"), env)
    home = tmp_path / "persona_home"
    work, out = home / "work" / "role_transcripts", home / "assets" / "role_transcripts"
    keys = role_partitions.get_partition_keys()
    cfg = ["--config-json", json.dumps({"ops": {"role_transcripts": {"config": {"chunk": 2, "max_new_tokens": 8}}}})]
    cmd = materialize_cmd("role_transcripts", f"{keys[0]}...{keys[-1]}") + cfg

    def finished():
        return [json.loads(x) for p in work.glob("*.jsonl") for x in p.read_text().splitlines() if x.endswith("}")]

    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 600
    try:
        while time.time() < deadline and len(finished()) < 4:
            assert proc.poll() is None, "the run finished before it could be killed"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = {
        (r["role"], r["system_prompt_idx"], r["question_idx"], r["rollout_idx"]): r["response"] for r in finished()
    }
    assert before, "no rollout was checkpointed before the kill"
    assert not out.exists() or not list(out.glob("*.parquet")), "a killed run left a half-written artifact"

    run_cli(cmd, env)
    rows = [r for p in out.glob("*.parquet") for r in pq.read_table(p).to_pylist()]
    keys_after = [(r["role"], r["system_prompt_idx"], r["question_idx"], r["rollout_idx"]) for r in rows]
    assert len(keys_after) == len(set(keys_after)), "a rollout was duplicated"
    assert set(before) <= set(keys_after), "a checkpointed rollout was lost"
    got = dict(zip(keys_after, (r["response"] for r in rows)))
    assert all(got[k] == v for k, v in before.items()), "checkpointed rollouts were regenerated"
