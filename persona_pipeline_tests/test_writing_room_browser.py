"""The persona writing room end to end: a labeler in headless Chromium writes a session against the real
embedded model, the session is saved as HITL JSONL, and the next ``hitl_conversations`` run (the real
Dagster CLI) turns it into training paths. The server runs with an API key, as a labeler would reach it.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from _browser import free_port, launch, needs_chromium
from _dagster_helpers import isolated_env, materialize_cmd, run_cli, small_data

from persona_pipeline import loaders
from persona_pipeline.http_guard import Guard
from persona_pipeline.persona_simulator import definitions
from persona_pipeline.storage import read_records
from persona_pipeline.writing_room import writing_room_app

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600), needs_chromium]
KEY = "room-key-for-tests"
MODEL_WAIT = 120_000  # ms: the real model answers on a shared CPU


@pytest.fixture()
def room(tmp_path, embedded_backend):
    """The app on a loopback port over a CI-sized copy of data_assets/; yields (url, data dir)."""
    import uvicorn

    data = small_data(tmp_path)
    specs = loaders.load_personas(data / "personas")
    topics = [t for t in loaders.load_topics(data / "topics.yaml") if t.split == "train"]
    app = writing_room_app(
        specs,
        topics,
        embedded_backend,
        embedded_backend,
        data / "hitl",
        definitions([s.model_dump() for s in specs], {}),
        Guard(api_key=KEY, browser_login=True),
        max_new_tokens=24,
    )
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not srv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", data
    srv.should_exit = True
    thread.join(timeout=10)


def test_requests_without_the_key_are_refused(room):
    url, data = room
    assert httpx.get(url + "/api/setup").status_code == 401
    bad = httpx.post(url + "/api/sessions", json={}, headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and not list((data / "hitl").glob("writing-room-*"))
    ok = httpx.get(url + "/api/setup", headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200 and {p["id"] for p in ok.json()["personas"]} == {"skeptic", "student"}
    too_long = {"persona_id": "skeptic", "topic": "x" * 400, "turns": []}
    r = httpx.post(url + "/api/suggest", json=too_long, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 422 and "topic" in r.text


def test_a_session_written_in_the_page_reaches_hitl_conversations(room, artifacts, tmp_path, shared_home):
    from playwright.sync_api import expect, sync_playwright

    url, data = room
    with sync_playwright() as p:
        browser = launch(p)
        try:
            context = browser.new_context(http_credentials={"username": "labeler", "password": KEY})
            page = context.new_page()
            page.set_default_timeout(120_000)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + "/")
            expect(page.locator("body[data-ready='1']")).to_have_count(1)
            page.select_option("#persona", "skeptic")
            topic = page.locator("#topic option").nth(3)
            page.select_option("#topic", topic.get_attribute("value"))
            page.fill("#annotator", "Browser Labeler")

            # a session needs turns, and a persona line needs an alternative: both refused, nothing saved
            page.click("#save")
            expect(page.locator("#status.error")).to_contain_text("turns")
            page.fill("#line", "pip or uv for a monorepo. which one and why")
            page.click("#send")
            expect(page.locator("#status.error")).to_contain_text("at least one alternative")
            assert not list((data / "hitl").glob("writing-room-*"))

            # the simulator (real model) proposes candidates; the labeler takes one and writes an alternative
            page.fill("#line", "")
            page.click("#suggest")
            expect(page.locator("button.candidate").first).to_be_visible(timeout=MODEL_WAIT)
            page.locator("button.candidate").first.click()
            assert page.input_value("#line").strip()
            page.fill("#alt1", "uv or pip, monorepo, 40 packages. numbers please")
            page.click("#send")
            expect(page.locator(".turn.assistant")).to_have_count(1, timeout=MODEL_WAIT)  # the assistant model answered
            assert page.locator(".turn.assistant").first.inner_text().strip()

            page.fill("#line", "says who. link the benchmark")
            page.fill("#alt1", "source for that claim?")
            page.fill("#alt2", "benchmarks or it didn't happen")
            page.click("#send")
            expect(page.locator(".turn.assistant")).to_have_count(2, timeout=MODEL_WAIT)
            page.screenshot(path=str(artifacts / "writing_room_session.png"), full_page=True)
            page.click("#save")
            expect(page.locator("#status")).to_contain_text("saved session", timeout=30_000)
            saved = page.locator("body").get_attribute("data-saved")
            assert not errors, errors
        finally:
            browser.close()

    (rec,) = [r for r in loaders.load_hitl(data / "hitl", {"skeptic", "student"}) if r.id == saved]
    assert [t.role for t in rec.turns] == ["user", "assistant", "user", "assistant"]
    assert rec.turns[2].alternatives == ["source for that claim?", "benchmarks or it didn't happen"]
    assert rec.annotator == "Browser Labeler" and rec.metadata["tool"] == "writing-room"
    assert rec.metadata["suggested_turns"] == [0]

    # the next hitl_conversations run (real Dagster CLI, fresh instance) carries the session's three paths
    env = {**isolated_env(tmp_path, shared_home), "PERSONA_PIPELINE_DATA": str(data)}
    run_cli(materialize_cmd("persona_specs,hitl_conversations"), env)
    rows = read_records(tmp_path / "persona_home" / "assets" / "hitl_conversations.parquet")
    paths = sorted(r["id"] for r in rows if r["id"].startswith(saved))
    assert paths == [f"{saved}#p0", f"{saved}#p1", f"{saved}#p2"]
    mine = next(r for r in rows if r["id"] == f"{saved}#p2")
    assert (
        mine["turns"][2]["content"] == "benchmarks or it didn't happen"
        and '"writing-room"' in mine["metadata"]["extra"]
    )
