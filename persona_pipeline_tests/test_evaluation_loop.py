"""The human-eval loop end to end: the pipeline's page in headless Chromium, served by
`persona-pipeline rate`, submitted ratings ingested by the next `human_ratings` run."""

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from _browser import free_port, launch, needs_chromium
from _dagster_helpers import REPO, run_pipeline

pytestmark = [pytest.mark.slow, pytest.mark.integration, needs_chromium]


def _wait(url: str, proc) -> None:
    deadline = time.time() + 60
    while time.time() < deadline:
        assert proc.poll() is None, "persona-pipeline rate exited"
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"{url} did not come up")


def test_ratings_submitted_in_a_browser_reach_the_next_human_ratings_run(materialized, artifacts):
    from playwright.sync_api import expect, sync_playwright

    env, assets = materialized
    page_doc = json.loads((assets / "human_eval_page.json").read_text())
    assert page_doc["items"], "the pipeline produced no items to rate"
    port = free_port()
    cli = str(Path(sys.executable).parent / "persona-pipeline")
    server = subprocess.Popen(
        [cli, "rate", "--port", str(port)], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait(f"http://127.0.0.1:{port}/", server)
        with sync_playwright() as p:
            browser = launch(p)
            page = browser.new_page()
            page.set_default_timeout(15_000)
            page.goto(f"http://127.0.0.1:{port}/")
            page.fill("#rater", "CI rater")
            cards = page.locator("fieldset.cand").all()
            for i, card in enumerate(cards):
                card.locator(f"input[type=radio][value='{1 + i % 5}']").check()
            page.click("#submit")
            expect(page.locator("#status")).to_contain_text("Saved")
            page.screenshot(path=str(artifacts / "pipeline_rating_page.png"), full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=10)
    run_pipeline(env, "human_ratings")
    ingested = json.loads((assets / "human_ratings.json").read_text())
    rows = ingested["rows"]
    assert len(rows) == len(cards) and {r["rater"] for r in rows} == {"CI rater"}
    methods = {m for it in page_doc["items"] for m in it["candidates"]}
    assert {r["method"] for r in rows} == methods  # blind labels joined back to the methods
    assert ingested["agreement"]["n"] == len(rows)
