"""The rating page in a real headless Chromium against the real server on a loopback port.

Fills in the page as a rater would (name, a rating for every blind line, a comment),
submits, waits for the confirmation, and checks that the saved file ingests back to
exactly those ratings with the right methods. Also exercises the Download JSON
fallback. Screenshots go to ``tmp_path`` and, if ``PERSONA_TEST_ARTIFACTS`` is set,
are copied there.
"""

from __future__ import annotations

import json
import shutil
import threading
import time

import pytest
from _browser import free_port, launch, needs_chromium

from persona_pipeline.human_eval import write_page
from persona_pipeline.human_ratings import load_ratings
from persona_pipeline.rating_server import ratings_app

METHODS = ["prompt", "sft", "rl", "steering", "cmaes"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(120),
    needs_chromium,
]


def _items() -> list[dict]:
    return [
        {
            "id": f"item-{i}",
            "persona_id": ["grumpy_chef", "nervous_student", "retired_pilot"][i],
            "question": "What do you think about remote work?" if i == 0 else "",
            "history": [
                {"role": "assistant", "content": f"Tell me more about that ({i})."},
                {"role": "user", "content": "Well… it's <complicated> & long."},
            ],
            "reference": f"Frankly I'd rather not talk about it, item {i}.",
            "candidates": {
                m: f"Candidate {k} for item {i}: something the person might say." for k, m in enumerate(METHODS)
            },
        }
        for i in range(3)
    ]


@pytest.fixture()
def server(tmp_path):
    """The real app under uvicorn in a background thread; yields (base url, page dir, ratings dir, key doc)."""
    import uvicorn

    page_dir, ratings_dir = tmp_path / "page", tmp_path / "ratings"
    doc = write_page(page_dir, _items(), seed=5)
    port = free_port()
    srv = uvicorn.Server(
        uvicorn.Config(
            ratings_app(page_dir, ratings_dir), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
        )
    )
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not srv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", page_dir, ratings_dir, doc
    srv.should_exit = True
    thread.join(timeout=10)


def _rating(item_idx: int, label: str) -> int:
    return 1 + (item_idx * 2 + ord(label) - ord("A")) % 5


def test_rate_submit_and_ingest_in_real_browser(server, artifacts, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, page_dir, ratings_dir, doc = server
    with sync_playwright() as p:
        browser = launch(p)
        try:
            context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.set_default_timeout(15_000)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + "/")
            expect(page.locator("section.item")).to_have_count(3)
            body_text = page.locator("body").inner_text().lower()
            assert not any(f" {m} " in f" {body_text} " for m in ["sft", "cmaes", "steering"])

            # submitting before rating everything is refused client-side, nothing is saved
            page.click("#submit")
            expect(page.locator("#status")).to_contain_text("Please enter your name")
            page.fill("#rater", "Browser Rater")
            page.click("#submit")
            expect(page.locator("#status")).to_contain_text("Still missing")
            assert not ratings_dir.exists() or not list(ratings_dir.iterdir())

            expected = []
            for i, section in enumerate(page.locator("section.item").all()):
                item_id = section.get_attribute("data-item-id")
                for card in section.locator("fieldset.cand").all():
                    label = card.get_attribute("data-label")
                    value = _rating(i, label)
                    card.locator(f"input[type=radio][value='{value}']").check()
                    comment = f"{label} on {item_id} feels off" if label == "B" else ""
                    if comment:
                        card.locator("textarea").fill(comment)
                    expected.append((item_id, label, doc["key"][item_id][label], value, comment))
            assert len(expected) == 3 * len(METHODS)
            page.screenshot(path=str(artifacts / "human_eval_before_submit.png"), full_page=True)

            page.click("#submit")
            expect(page.locator("#status")).to_contain_text("Saved 15 ratings as", timeout=15_000)
            status = page.locator("#status").inner_text()
            page.screenshot(path=str(artifacts / "human_eval_after_submit.png"), full_page=True)

            files = sorted(ratings_dir.glob("*.json"))
            assert len(files) == 1 and files[0].name in status
            rows = load_ratings(ratings_dir)
            assert [(r["item_id"], r["label"], r["method"], r["rating"], r["comment"]) for r in rows] == expected
            assert {r["rater"] for r in rows} == {"Browser Rater"}
            assert {r["persona_id"] for r in rows} == {"grumpy_chef", "nervous_student", "retired_pilot"}

            # the offline fallback saves the same ratings (labels only); joined via the key they match
            with page.expect_download() as dl:
                page.click("#download")
            downloaded = tmp_path / "human_ratings" / dl.value.suggested_filename
            downloaded.parent.mkdir()
            dl.value.save_as(downloaded)
            raw = json.loads(downloaded.read_text())
            assert raw["source"] == "download" and all("method" not in r for r in raw["ratings"])
            via_key = load_ratings(downloaded.parent, key=page_dir)
            assert [(r["item_id"], r["label"], r["method"], r["rating"], r["comment"]) for r in via_key] == expected
            # and putting it next to the server copy does not double count
            shutil.copy(downloaded, ratings_dir / downloaded.name)
            assert len(load_ratings(ratings_dir, key=page_dir)) == len(expected)
            assert errors == [], errors
        finally:
            browser.close()
    assert (artifacts / "human_eval_before_submit.png").stat().st_size > 0
    assert (artifacts / "human_eval_after_submit.png").stat().st_size > 0
