"""API keys never leak, and a flaky OpenAI-compatible endpoint is retried or fails cleanly.

* Secrets: a loopback server that *requires* a bearer key runs the real
  embedded model (``serve.create_app`` behind a key check); teacher and
  assistant reach it through env vars only, and the real Dagster CLI
  materialises ``synthetic_conversations``. The key must then appear in no CLI
  output, no file under DAGSTER_HOME (sqlite event logs, compute logs), no file
  under the artifact home, and no run or event record read back from the
  instance, while the server saw every request authenticated with it.
* Faults: an endpoint that answers HTTP 500, then stalls past the client
  timeout, then answers, is retried with backoff until the asset materialises;
  one that always fails makes the run fail naming the endpoint and the status,
  leaves no artifact, and a rerun against a healthy endpoint completes.
* Non-JSON judge text: the JSON judge re-asks unreadable replies over real HTTP
  and records the item as failed with the reason, never crashing or defaulting.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
from _dagster_helpers import REPO, isolated_env, materialize_cmd, run_cli
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from persona_pipeline.serve import create_app, serving

ROLES = ("teacher", "assistant", "judge", "policy")
PARTITION = "skeptic"
SMALL_RUN = [
    "--config-json",
    json.dumps(
        {
            "ops": {
                "synthetic_conversations": {
                    "config": {
                        "conversations_per_persona": 1,
                        "min_turns": 8,
                        "max_turns": 8,
                        "persona_max_new_tokens": 8,
                        "assistant_max_new_tokens": 8,
                        "max_line_retries": 0,
                    }
                }
            }
        }
    ),
]
SYNTH = materialize_cmd("synthetic_conversations") + ["--partition", PARTITION] + SMALL_RUN


# --- helpers ------------------------------------------------------------------------------------


def role_env(base: dict, url: str, model: str, roles=("teacher", "assistant"), **extra: str) -> dict:
    """``base`` with the settings of ``roles`` cleared, then those roles pointed at ``url`` through env vars only."""
    env = {k: v for k, v in base.items() if not any(k.startswith(f"PERSONA_{r.upper()}_") for r in roles)}
    for role in roles:
        prefix = f"PERSONA_{role.upper()}_"
        env.update({prefix + "KIND": "openai", prefix + "BASE_URL": url, prefix + "MODEL": model})
        env.update({prefix + k.upper(): v for k, v in extra.items()})
    return env


@pytest.fixture(scope="module")
def specs_assets(tmp_path_factory, embedded_dir, shared_home) -> Path:
    """``persona_specs`` and ``topics`` materialised once through the CLI; tests copy the files."""
    tmp = tmp_path_factory.mktemp("specs")
    run_cli(materialize_cmd("persona_specs,topics"), isolated_env(tmp, shared_home))
    return tmp / "persona_home" / "assets"


def fresh_env(tmp: Path, shared_home: Path, specs_assets: Path) -> dict:
    """A temp instance holding the specs, with no role settings inherited from the caller's environment."""
    env = isolated_env(tmp, shared_home)
    env = {k: v for k, v in env.items() if not any(k.startswith(f"PERSONA_{r.upper()}_") for r in ROLES)}
    shutil.copytree(specs_assets, tmp / "persona_home" / "assets", dirs_exist_ok=True)
    return env


def synth_dir(env: dict) -> Path:
    return Path(env["PERSONA_PIPELINE_HOME"]) / "assets" / "synthetic_conversations"


def assert_one_full_dialogue(env: dict) -> list[dict]:
    files = sorted(p.name for p in synth_dir(env).iterdir())
    assert files == [f"{PARTITION}.parquet"], f"expected exactly the {PARTITION} partition, found {files}"
    rows = pq.read_table(synth_dir(env) / f"{PARTITION}.parquet").to_pylist()
    assert len(rows) == 1 and rows[0]["persona_id"] == PARTITION
    assert len(rows[0]["turns"]) == 8
    return rows


def completion_body(text: str, model: str = "m") -> dict:
    message = {"role": "assistant", "content": text}
    choice = {"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}
    return {"id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": model, "choices": [choice]}


def server_error() -> JSONResponse:
    return JSONResponse({"error": {"message": "injected overload", "type": "server_error"}}, status_code=500)


# --- (A) the API key leaks nowhere ----------------------------------------------------------------


def key_checking_app(backend, key: str) -> FastAPI:
    """Our real OpenAI-compatible server, answering only requests that carry ``Bearer <key>``."""
    app = create_app({"smollm2": backend})
    app.state.authorized, app.state.rejected = 0, 0

    @app.middleware("http")
    async def require_key(request: Request, call_next):
        if request.headers.get("authorization") != f"Bearer {key}":
            app.state.rejected += 1
            body = {"error": {"message": "invalid API key", "type": "invalid_request_error", "code": "invalid_api_key"}}
            return JSONResponse(body, status_code=401)
        if request.url.path.endswith("/chat/completions"):
            app.state.authorized += 1
        return await call_next(request)

    return app


def files_containing(root: Path, needle: bytes) -> list[str]:
    hits, scanned = [], 0
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            scanned += 1
            if needle in path.read_bytes():
                hits.append(str(path.relative_to(root)))
    assert scanned, f"nothing to scan under {root}"
    return hits


def instance_records(dagster_home: str, monkeypatch) -> tuple[list[str], dict]:
    """Every run and every event of the instance, serialised; and the materialisation's metadata."""
    from dagster import AssetKey, DagsterInstance
    from dagster._serdes import serialize_value

    monkeypatch.setenv("DAGSTER_HOME", dagster_home)
    with DagsterInstance.get() as instance:
        blobs = []
        runs = instance.get_runs()
        assert runs, "the instance recorded no runs"
        for run in runs:
            blobs.append(serialize_value(run))
            blobs.extend(serialize_value(ev) for ev in instance.all_logs(run.run_id))
        event = instance.get_latest_materialization_event(AssetKey("synthetic_conversations"))
        assert event is not None, "no materialisation of synthetic_conversations was recorded"
        mat = event.asset_materialization
        assert mat.partition == PARTITION
        metadata = {k: str(getattr(v, "value", v)) for k, v in mat.metadata.items()}
    return blobs, metadata


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(300)
def test_api_key_appears_in_no_log_metadata_or_artifact(
    tmp_path, shared_home, specs_assets, embedded_backend, monkeypatch
):
    key = f"sk-test-{secrets.token_hex(16)}"
    secret = key.removeprefix("sk-test-")  # search for the random part alone: catches a re-prefixed or cut key too
    app = key_checking_app(embedded_backend, key)
    with serving(app) as url:
        # the key check is real: without the key, or with another one, the server refuses
        assert httpx.post(f"{url}/chat/completions", json={}).status_code == 401
        assert (
            httpx.post(
                f"{url}/chat/completions", json={}, headers={"Authorization": "Bearer sk-test-wrong"}
            ).status_code
            == 401
        )
        rejected_before = app.state.rejected

        env = role_env(fresh_env(tmp_path, shared_home, specs_assets), url, "smollm2", api_key_env="PP_TEST_KEY")
        env["PP_TEST_KEY"] = key
        proc = run_cli(SYNTH, env, timeout=240)

    # not vacuous: the pipeline talked to the server, every request carried the key, none was refused
    assert app.state.authorized >= 8, f"only {app.state.authorized} authenticated completions for 8 turns"
    assert app.state.rejected == rejected_before
    rows = assert_one_full_dialogue(env)
    assert any(t["content"] for t in rows[0]["turns"]), "the real model produced no text at all"

    assert secret not in proc.stdout and secret not in proc.stderr, "the key was printed by the CLI"
    for root in (env["DAGSTER_HOME"], env["PERSONA_PIPELINE_HOME"]):
        assert not files_containing(Path(root), secret.encode()), f"the key was written under {root}"

    # the scans can see what was recorded: the endpoint URL (logged and in metadata) is found the same way
    assert files_containing(Path(env["DAGSTER_HOME"]), url.encode()), "the scan did not read the event logs"

    blobs, metadata = instance_records(env["DAGSTER_HOME"], monkeypatch)
    assert not [b for b in blobs if secret in b], "the key is in a run or event record"
    assert [b for b in blobs if url in b], "the serialised records do not show what was recorded"
    assert metadata["teacher"] == f"openai:smollm2 @ {url}"  # the endpoint is recorded, its key is not
    assert not [k for k, v in metadata.items() if secret in v]


# --- (B) a flaky endpoint: retried with backoff, or a clear failure and no artifact ----------------------


def canned_reply(body: dict) -> str:
    """Deterministic, in-character lines: the teacher writes the persona, the assistant answers."""
    if body["model"] == "teacher-m":
        return "I doubt that claim. Show me the benchmark numbers first."
    return "Here are the numbers from the last three benchmark runs."


def flaky_app(plan: list[str], stall_s: float = 4.0) -> FastAPI:
    """Request i follows ``plan[i]`` ("500" or "stall"); later requests, and all once ``healthy``, succeed.

    ``app.state`` counts outcomes and records when each request arrived.
    """
    app = FastAPI()
    app.state.plan, app.state.healthy = list(plan), False
    app.state.outcomes, app.state.arrivals = [], []

    @app.post("/v1/chat/completions")
    async def chat(body: dict):
        s = app.state
        i = len(s.arrivals)
        s.arrivals.append(time.monotonic())
        what = "ok" if s.healthy or i >= len(s.plan) else s.plan[i]
        s.outcomes.append(what)
        if what == "500":
            return server_error()
        if what == "stall":
            await asyncio.sleep(stall_s)
        return completion_body(canned_reply(body), body["model"])

    return app


def fault_env(tmp_path, shared_home, specs_assets, url: str, max_retries: int) -> dict:
    env = fresh_env(tmp_path, shared_home, specs_assets)
    env = role_env(
        env,
        url,
        "assistant-m",
        roles=("assistant",),
        timeout_s="2",
        max_retries=str(max_retries),
        api_key_env="PP_TEST_NO_KEY",
    )
    env = role_env(
        env,
        url,
        "teacher-m",
        roles=("teacher",),
        timeout_s="2",
        max_retries=str(max_retries),
        api_key_env="PP_TEST_NO_KEY",
    )
    env.pop("PP_TEST_NO_KEY", None)
    return env


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(240)
def test_http_500s_and_a_stall_are_retried_with_backoff_until_the_asset_materialises(
    tmp_path, shared_home, specs_assets
):
    app = flaky_app(["500", "500", "stall"])
    with serving(app) as url:
        env = fault_env(tmp_path, shared_home, specs_assets, url, max_retries=3)
        run_cli(SYNTH, env, timeout=180)

    s = app.state
    assert s.outcomes[:4] == ["500", "500", "stall", "ok"], "the first call was not retried through the faults"
    assert s.outcomes.count("ok") == 8  # 4 persona lines + 4 assistant replies, each answered once
    gaps = [b - a for a, b in zip(s.arrivals, s.arrivals[1:4])]
    assert gaps[0] >= 0.3 and gaps[1] >= 0.6, f"retries after HTTP 500 did not back off: {gaps}"
    assert gaps[2] >= 2.0, f"the stalled request was not given its 2 s timeout before the retry: {gaps}"
    rows = assert_one_full_dialogue(env)
    assert [t["content"] for t in rows[0]["turns"][:2]] == [
        canned_reply({"model": "teacher-m"}),
        canned_reply({"model": "assistant-m"}),
    ]


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(240)
def test_an_endpoint_that_always_fails_fails_the_run_clearly_and_writes_no_artifact(
    tmp_path, shared_home, specs_assets
):
    app = flaky_app(["500"] * 1000)
    with serving(app) as url:
        env = fault_env(tmp_path, shared_home, specs_assets, url, max_retries=2)
        proc = subprocess.run(SYNTH, cwd=REPO, env=env, capture_output=True, text=True, timeout=180, check=False)
        assert proc.returncode != 0, "the run succeeded against an endpoint that only answers HTTP 500"
        out = proc.stdout + proc.stderr
        assert f"{url} answered HTTP 500 for teacher-m" in out, f"unclear failure:\n{out[-3000:]}"
        assert "injected overload" in out
        assert app.state.outcomes == ["500"] * 3, "expected 1 attempt + 2 retries, then a stop"
        gaps = [b - a for a, b in zip(app.state.arrivals, app.state.arrivals[1:])]
        assert gaps[0] >= 0.3 and gaps[1] >= 0.6, f"no backoff between retries: {gaps}"
        target = synth_dir(env)
        leftovers = sorted(str(p.relative_to(target)) for p in target.rglob("*")) if target.exists() else []
        assert not leftovers, f"a failed run left files for the asset: {leftovers}"

        app.state.healthy = True  # the endpoint recovers: the same command now completes
        run_cli(SYNTH, env, timeout=180)
    assert app.state.outcomes[3:] == ["ok"] * 8
    assert_one_full_dialogue(env)


# --- (B) non-JSON judge text, over real HTTP ---------------------------------------------------------

VERDICT = '{"adherence": 0.8, "consistency": 0.7, "quality": 0.9, "safety": "pass", "reasoning": "fits"}'
JUNK = "Honestly this reads fine to me, nothing to add!!"


def judge_app(fail_first: int = 0, always_500: bool = False) -> FastAPI:
    """A judge endpoint: HTTP 500 for the first requests, then junk prose — except that a re-ask of the item
    whose candidate says "recovers" (the request carries the retry note) gets a valid JSON verdict."""
    app = FastAPI()
    app.state.requests, app.state.notes = 0, 0

    @app.post("/v1/chat/completions")
    async def chat(body: dict):
        s = app.state
        s.requests += 1
        if always_500 or s.requests <= fail_first:
            return server_error()
        last = body["messages"][-1]["content"]
        retried = "your previous answer could not be used" in last
        s.notes += retried
        return completion_body(VERDICT if retried and "recovers" in last else JUNK)

    return app


def judge_items():
    from persona_pipeline.eval_judges import EvalItem

    return [
        EvalItem(id="junk", persona_id=PARTITION, candidate="Prove it. Numbers, please."),
        EvalItem(id="recovers", persona_id=PARTITION, candidate="I'd want to see recovers-data first."),
    ]


@pytest.mark.timeout(60)
def test_non_json_judge_text_is_reasked_then_recorded_as_failed(monkeypatch):
    from persona_pipeline.backends.openai_compat import OpenAIBackend
    from persona_pipeline.eval_judges import persona_judge

    monkeypatch.delenv("PP_TEST_NO_KEY", raising=False)
    app = judge_app(fail_first=2)
    with serving(app) as url:
        backend = OpenAIBackend("judge-m", base_url=url, api_key_env="PP_TEST_NO_KEY", timeout_s=5, max_retries=2)
        junk, recovers = persona_judge(backend, {PARTITION: "Dmitri, a skeptical senior engineer."}, max_retries=2)(
            judge_items()
        )

    assert app.state.requests == 2 + 3 + 2  # two HTTP 500s retried by the client; 3 asks of one item, 2 of the other
    assert app.state.notes == 2 + 1  # every re-ask told the judge what was wrong
    assert junk.ok is False and junk.attempts == 3 and junk.raw == JUNK
    assert junk.error == "no JSON object in reply"
    assert junk.adherence is junk.consistency is junk.quality is junk.safety_pass is None  # not defaulted
    assert recovers.ok is True and recovers.attempts == 2 and recovers.error is None
    assert (recovers.adherence, recovers.consistency, recovers.quality, recovers.safety_pass) == (0.8, 0.7, 0.9, True)


@pytest.mark.timeout(60)
def test_a_judge_endpoint_that_always_fails_records_failed_scores_naming_it(monkeypatch):
    from persona_pipeline.backends.openai_compat import OpenAIBackend
    from persona_pipeline.eval_judges import persona_judge

    monkeypatch.delenv("PP_TEST_NO_KEY", raising=False)
    app = judge_app(always_500=True)
    with serving(app) as url:
        backend = OpenAIBackend("judge-m", base_url=url, api_key_env="PP_TEST_NO_KEY", timeout_s=5, max_retries=1)
        scores = persona_judge(backend, {PARTITION: "Dmitri."}, max_retries=1)(judge_items())

    assert app.state.requests == 2 * 2 * 2  # 2 items × 2 judge asks × (1 try + 1 client retry)
    for s in scores:
        assert s.ok is False and s.attempts == 2 and s.raw is None and s.adherence is None
        assert s.error.startswith("backend error: ") and f"{url} answered HTTP 500 for judge-m" in s.error


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "body",
    ["<html>502 bad gateway</html>", {"weird": 1}, {"choices": []}],
    ids=["not-json", "no-choices", "empty-choices"],
)
def test_a_malformed_200_body_is_a_backend_error_naming_the_endpoint(monkeypatch, body):
    from fastapi.responses import PlainTextResponse

    from persona_pipeline.backends import BackendError, SamplingParams
    from persona_pipeline.backends.openai_compat import OpenAIBackend

    monkeypatch.delenv("PP_TEST_NO_KEY", raising=False)
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat():
        return PlainTextResponse(body) if isinstance(body, str) else JSONResponse(body)

    with serving(app) as url, pytest.raises(BackendError, match=url):
        OpenAIBackend("m", base_url=url, api_key_env="PP_TEST_NO_KEY", max_retries=0).complete(
            [[{"role": "user", "content": "hi"}]], SamplingParams(max_new_tokens=4)
        )
