"""The trained simulator from the command line and over HTTP, against the adapters `make demo` trains.

Uses the artifacts of the Dagster CLI test module (same temp home), so the
adapters are real ones trained by the pipeline.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _dagster_helpers import REPO

pytestmark = [pytest.mark.slow, pytest.mark.integration]
CLI = str(Path(sys.executable).parent / "persona-pipeline")


@pytest.fixture(scope="module")
def env(materialized):
    return materialized[0]


def run(args, env, **kw):
    return subprocess.run(
        [CLI, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False, **kw
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_simulate_prints_and_saves_a_conversation(env, tmp_path):
    import json

    out = tmp_path / "dialogue.json"
    proc = run(["simulate", "--persona", "skeptic", "--turns", "4", "--adapter", "rl", "--out", str(out)], env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    conv = json.loads(out.read_text())
    assert conv["persona_id"] == "skeptic" and conv["metadata"]["source"] == "simulated"
    assert [t["role"] for t in conv["turns"]] == ["user", "assistant", "user", "assistant"]
    assert proc.stdout.count("skeptic>") == 2


def test_chat_takes_the_assistant_lines_from_stdin(env):
    proc = run(
        ["chat", "--persona", "student", "--adapter", "sft", "--max-tokens", "16"],
        env,
        input="Hello! How can I help you today?\nSure, tell me more.\n",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("student>") == 3  # opening line + one reply per assistant line


def test_unknown_persona_and_missing_adapter_are_clear_errors(env, tmp_path):
    proc = run(["simulate", "--persona", "nobody", "--turns", "2"], env)
    assert proc.returncode != 0 and "unknown persona 'nobody'" in proc.stderr and "skeptic" in proc.stderr
    empty = {**env, "PERSONA_PIPELINE_HOME": str(tmp_path)}
    (tmp_path / "models").mkdir()
    os.symlink(Path(env["PERSONA_PIPELINE_HOME"]) / "models" / "base", tmp_path / "models" / "base")
    proc = run(["simulate", "--persona", "skeptic", "--adapter", "rl"], empty)
    assert proc.returncode != 0 and "no rl adapter" in proc.stderr and "rl_adapter" in proc.stderr


def test_serve_speaks_openai_to_the_official_client(env):
    import openai

    port = free_port()
    server = subprocess.Popen(
        [CLI, "serve", "--port", str(port), "--adapters", "sft", "none"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120)
        deadline = time.time() + 120
        while True:
            try:
                models = {m.id for m in client.models.list()}
                break
            except openai.APIConnectionError:
                assert server.poll() is None, server.stderr.read()[-2000:]
                assert time.time() < deadline, "serve did not come up"
                time.sleep(0.5)
        assert {"base", "sft", "persona-simulator:skeptic", "persona-simulator-none:student"} <= models
        history = [{"role": "assistant", "content": "Hi! What can I help you with today?"}]
        reply = client.chat.completions.create(
            model="persona-simulator:skeptic", messages=history, max_tokens=24, temperature=0
        )
        text = reply.choices[0].message.content
        assert text.strip()

        def top(model):  # next-token distribution: shows which weights answered, even when greedy text ties
            r = client.chat.completions.create(
                model=model, messages=history, max_tokens=1, logprobs=True, top_logprobs=5
            )
            return {t.token: round(t.logprob, 4) for t in r.choices[0].logprobs.content[0].top_logprobs}

        assert top("persona-simulator:skeptic") != top("persona-simulator-none:skeptic")  # the name selects the adapter
        assert top("persona-simulator:skeptic") != top("persona-simulator:student")  # …and the persona
        stream = client.chat.completions.create(
            model="persona-simulator:skeptic", messages=history, max_tokens=24, temperature=0, stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream) == text
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="persona-simulator:nobody", messages=history, max_tokens=4)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
