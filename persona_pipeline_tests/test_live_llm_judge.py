"""The teacher and the LLM judges against a real third-party OpenAI-compatible server.

``transformers serve`` (the ``transformers[serving]`` extra) serves the converted embedded
model on loopback. The pipeline's teacher, assistant and judge roles are pointed at it
through their env vars only, one persona's ``synthetic_conversations`` partition is
materialised through the real ``dagster asset materialize`` CLI, and the JSON judge, the
0–100 logprob judge and the reward judge score a few of the lines it wrote. Every reply is
either parsed or recorded as failed with a reason — none is dropped. This server returns
``logprobs: None``; the logprob judges must say so, never score.
"""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from _dagster_helpers import isolated_env, materialize_cmd, run_cli, small_data

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(300)]

SERVE = Path(sys.executable).parent / "transformers"
PERSONA = "skeptic"
LINES = 3  # judged lines: enough to see parsed and failed replies, cheap on 2 cores
SHORT = {
    "ops": {
        "synthetic_conversations": {
            "config": {"min_turns": 8, "max_turns": 8, "persona_max_new_tokens": 16, "assistant_max_new_tokens": 16}
        }
    }
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ready(url: str, proc: subprocess.Popen, log: Path, limit_s: float = 180) -> None:
    """Poll ``/health`` until it answers 200; fail with the server's log if it exits or never does."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"transformers serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"transformers serve not ready after {limit_s:.0f} s:\n{log.read_text()[-3000:]}")


@contextmanager
def transformers_serve(model_dir: Path, log: Path):
    """``transformers serve <folder>`` on a free loopback port; always stopped, even when the test fails."""
    if not SERVE.exists():
        pytest.fail(f'{SERVE} missing: install the dev extras (pip install "transformers[serving]")')
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [str(SERVE), "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        _ready(url, proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _roles_env(url: str, model_dir: Path) -> dict[str, str]:
    """PERSONA_<ROLE>_* for teacher, assistant and judge: all three on the served model."""
    out = {}
    for role in ("TEACHER", "ASSISTANT", "JUDGE"):
        out |= {
            f"PERSONA_{role}_KIND": "openai",
            f"PERSONA_{role}_BASE_URL": f"{url}/v1",
            f"PERSONA_{role}_MODEL": str(model_dir),
        }
    return out


def _materialization_metadata(env: dict) -> dict:
    from dagster import AssetKey, DagsterInstance

    old = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
    try:
        with DagsterInstance.get() as instance:
            event = instance.get_latest_materialization_event(AssetKey("synthetic_conversations"))
            assert event is not None and event.asset_materialization.partition == PERSONA
            return {k: getattr(v, "value", v) for k, v in event.asset_materialization.metadata.items()}
    finally:
        if old is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = old


def _tally(scores) -> dict[str, int]:
    return {"parsed": sum(not s.failed for s in scores), "failed": sum(s.failed for s in scores)}


def _requests(live) -> int:
    """Chat completions the server has answered so far (its access log)."""
    return live["log"].read_text().count("POST /v1/chat/completions")


@pytest.fixture(scope="module")
def live(tmp_path_factory, embedded_dir, shared_home):
    """The server, the env that points every role at it, and one persona's materialised dialogues."""
    import json

    tmp = tmp_path_factory.mktemp("live-judge")
    with transformers_serve(embedded_dir, tmp / "serve.log") as url:
        env = {
            **isolated_env(tmp, shared_home),
            "PERSONA_PIPELINE_DATA": str(small_data(tmp)),
            **_roles_env(url, embedded_dir),
        }
        run_cli(materialize_cmd("persona_specs,topics"), env)
        run_cli(
            materialize_cmd("synthetic_conversations") + ["--partition", PERSONA, "--config-json", json.dumps(SHORT)],
            env,
        )
        rows = pq.read_table(tmp / "persona_home" / "assets" / "synthetic_conversations" / f"{PERSONA}.parquet")
        specs = pq.read_table(tmp / "persona_home" / "assets" / "persona_specs.parquet").to_pylist()
        yield {"url": url, "env": env, "rows": rows.to_pylist(), "specs": specs, "log": tmp / "serve.log"}


@pytest.fixture()
def judge_env(live, monkeypatch):
    """This process's judge role on the server, read the way the pipeline reads it."""
    for k, v in live["env"].items():
        if k.startswith("PERSONA_JUDGE_"):
            monkeypatch.setenv(k, v)
    from persona_pipeline.defs.resources import model_resource_from_env

    return model_resource_from_env("judge")


def _items(live) -> list:
    """The first persona lines of the dialogue the served teacher just wrote, with their histories."""
    from persona_pipeline.contracts import Conversation, PersonaSpec
    from persona_pipeline.judging import JudgeItem

    conv = Conversation(**live["rows"][0])
    spec = PersonaSpec(**next(s for s in live["specs"] if s["id"] == PERSONA)).definition()  # the judges' full form
    history = [{"role": t.role, "content": t.content} for t in conv.turns]
    picks = [i for i in conv.persona_turn_indices() if i > 0][:LINES]
    return [JudgeItem(spec, history[:i], conv.turns[i].content, PERSONA) for i in picks]


def test_served_teacher_writes_a_persona_partition(live):
    (row,) = live["rows"]
    assert row["persona_id"] == PERSONA and row["metadata"]["num_turns"] >= 8
    assert row["metadata"]["generation_model"].startswith("openai:")
    assert sum(bool(t["content"].strip()) for t in row["turns"]) >= 6
    meta = _materialization_metadata(live["env"])
    assert meta["conversations"] == 1 and meta["teacher"].startswith("openai:") and live["url"] in meta["teacher"]
    assert "POST /v1/chat/completions" in live["log"].read_text()  # the dialogue really went over the wire


def test_json_judge_parses_or_records_every_reply(live, judge_env):
    from persona_pipeline import eval_judges as ej
    from persona_pipeline.backends import SamplingParams

    items = _items(live)
    evals = [
        ej.EvalItem(id=f"line{k}", persona_id=PERSONA, history=it.history, candidate=it.response)
        for k, it in enumerate(items)
    ]
    judge = ej.persona_judge(
        judge_env.backend(),
        {s["id"]: s for s in live["specs"]},
        params=SamplingParams(max_new_tokens=64, temperature=0),
        max_retries=0,
    )
    before = _requests(live)
    scores = judge(evals)
    assert _requests(live) - before >= LINES  # every item was asked over the wire
    assert [s.item_id for s in scores] == [e.id for e in evals]  # none dropped, in order
    print("json judge:", {"parsed": sum(s.ok for s in scores), "failed": sum(not s.ok for s in scores)})
    for s in scores:
        # parsed, or a reply that came back and was rejected by the parser (not a transport error)
        assert (s.ok and s.adherence is not None) or (not s.ok and s.error and s.raw), s
    assert sum(s.ok for s in scores) + sum(not s.ok for s in scores) == len(items) == LINES


def test_reward_judge_on_the_wire_scores_in_range_or_fails_with_reason(live, judge_env):
    from persona_pipeline.judging import choose

    items = _items(live)
    judge = choose.persona_judge("reward", judge_env, live["specs"], choice="json")
    before = _requests(live)
    scores = judge.score(items)
    assert _requests(live) - before >= LINES
    print("reward judge (json):", _tally(scores), [s.error or s.value for s in scores])
    assert len(scores) == len(items) == LINES and sum(_tally(scores).values()) == LINES
    assert all(s.value is not None or s.error.startswith("no score in [-1, 1] in the reply") for s in scores)


def test_logprob_judges_name_the_missing_logprobs_instead_of_scoring(live, judge_env):
    """transformers serve answers ``logprobs=True`` with ``logprobs: None``: every item fails, saying why."""
    from persona_pipeline.judging import choose
    from persona_pipeline.loaders import load_traits
    from persona_pipeline.settings import data_root

    items = _items(live)
    trait = load_traits(data_root() / "traits")[0]
    for judge in (
        choose.trait_judge(judge_env, trait),  # the 0–100 logprob judge (endpoint: its eval prompt)
        choose.persona_judge("reward", judge_env, live["specs"]),  # auto with an endpoint: the logprob reward
    ):
        before = _requests(live)
        scores = judge.score(items)
        assert _requests(live) > before  # it asked; the server answered without logprobs
        assert len(scores) == LINES and _tally(scores) == {"parsed": 0, "failed": LINES}, judge.name
        print(judge.name, scores[0].error)
        for s in scores:
            assert "next-token logprobs" in s.error and "logprobs: None" in s.error, s.error
