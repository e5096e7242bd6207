"""The rating server and ingestion, provoked as raters and stale files would: the real app under
uvicorn on a loopback port, real requests, real files; each case asserts the clear error and that
no rating was lost or counted twice.
"""

from __future__ import annotations

import base64
import json
import warnings

import httpx
import pytest
from test_human_eval import METHODS, make_items, payload

from persona_pipeline.http_guard import Guard
from persona_pipeline.human_eval import write_page
from persona_pipeline.human_ratings import SkippedRatingsWarning, load_ratings
from persona_pipeline.rating_server import MAX_BODY_BYTES, ratings_app
from persona_pipeline.serve import serving


@pytest.fixture()
def site(tmp_path):
    """(base url, page dir, ratings dir, key doc, items) with the server running."""
    items = make_items()
    page_dir, ratings_dir = tmp_path / "page", tmp_path / "ratings"
    doc = write_page(page_dir, items, seed=7)
    with serving(ratings_app(page_dir, ratings_dir)) as url:
        yield url.removesuffix("/v1"), page_dir, ratings_dir, doc, items


def saved(ratings_dir) -> list[str]:
    return sorted(p.name for p in ratings_dir.glob("*")) if ratings_dir.exists() else []


def test_an_edited_resubmission_replaces_the_first(site):
    url, page_dir, ratings_dir, doc, items = site
    n = len(items) * len(METHODS)
    first = payload(doc, items, rater="Ana María")
    assert httpx.post(f"{url}/ratings", json=first).status_code == 200
    edited = payload(doc, items, rater=" ana  maría ", rating=lambda i, k: 5)  # same person, edited answers
    assert httpx.post(f"{url}/ratings", json=edited).status_code == 200
    assert len(saved(ratings_dir)) == 2  # both submissions are kept on disk: nothing is lost
    rows = load_ratings(ratings_dir, key=page_dir)
    assert len(rows) == n and {r["rating"] for r in rows} == {5}  # ...but counted once, the latest
    # a later partial edit (one whole item) replaces only that item's ratings
    one_item = dict(payload(doc, items[:1], rater="Ana María", rating=lambda i, k: 2))
    assert httpx.post(f"{url}/ratings", json=one_item).status_code == 200
    rows = load_ratings(ratings_dir, key=page_dir)
    assert len(rows) == n
    assert {r["rating"] for r in rows if r["item_id"] == items[0]["id"]} == {2}
    assert {r["rating"] for r in rows if r["item_id"] != items[0]["id"]} == {5}
    other = payload(doc, items, rater="Ben")
    assert httpx.post(f"{url}/ratings", json=other).status_code == 200
    assert len(load_ratings(ratings_dir, key=page_dir)) == 2 * n  # another rater counts


def test_a_partly_rated_item_is_rejected(site):
    url, page_dir, ratings_dir, doc, items = site
    body = payload(doc, items)
    dropped = body["ratings"].pop(3)  # item 0 loses one of its five lines
    res = httpx.post(f"{url}/ratings", json=body)
    assert res.status_code == 422
    detail = json.dumps(res.json()["detail"])
    assert "only partly rated" in detail and dropped["label"] in detail and dropped["item_id"] in detail
    assert saved(ratings_dir) == []
    # the same problem in a downloaded file names file, record and field
    ratings_dir.mkdir()
    (ratings_dir / "partial.json").write_text(json.dumps(dict(body, source="download")))
    from persona_pipeline.loaders import InputError

    with pytest.raises(InputError, match=r"partial\.json, ratings\[0\]: field 'label': item .* only partly rated"):
        load_ratings(ratings_dir, key=page_dir)


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda b: b["ratings"][0].update(item_id="x" * 5000), "item_id"),
        (lambda b: b["ratings"][0].update(comment="x" * 5000), "comment"),
        (lambda b: b.update(rater="x" * 500), "rater"),
        (lambda b: b.update(page_id="p" * 500), "page_id"),
        (lambda b: b.update(submitted_at="t" * 500), "submitted_at"),
        (lambda b: b["ratings"][0].update(persona_id="p" * 500), "persona_id"),
    ],
)
def test_field_lengths_are_bounded(site, mutate, field):
    url, _, ratings_dir, doc, items = site
    body = payload(doc, items)
    mutate(body)
    res = httpx.post(f"{url}/ratings", json=body)
    assert res.status_code == 422 and field in json.dumps(res.json()["detail"]) and "at most" in res.text
    assert saved(ratings_dir) == []


def test_oversize_body_is_refused_before_parsing(site):
    url, _, ratings_dir, doc, items = site
    body = payload(doc, items)
    body["padding"] = "x" * (MAX_BODY_BYTES + 1)
    res = httpx.post(f"{url}/ratings", json=body)
    assert res.status_code == 413 and "bytes" in res.json()["detail"]
    assert saved(ratings_dir) == []
    assert httpx.post(f"{url}/ratings", json=payload(doc, items)).status_code == 200  # still serving


def test_stale_files_are_skipped_with_a_warning_and_never_block_ingestion(site, tmp_path):
    url, page_dir, ratings_dir, doc, items = site
    assert httpx.post(f"{url}/ratings", json=payload(doc, items)).status_code == 200
    old_doc = write_page(tmp_path / "old-page", make_items(3), seed=1)  # an older build of the page
    old = payload(old_doc, make_items(3), rater="Cleo")
    (ratings_dir / "0-old-download.json").write_text(json.dumps(dict(old, source="download")))
    broken_old = dict(old, ratings=[{"item_id": "gone", "label": "ZZZ", "rating": 9}])  # invalid, but not ours
    (ratings_dir / "1-old-broken.json").write_text(json.dumps(broken_old))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = load_ratings(ratings_dir, key=page_dir)
    skipped = [str(w.message) for w in caught if issubclass(w.category, SkippedRatingsWarning)]
    assert len(skipped) == 2 and all(old_doc["page_id"] in m and doc["page_id"] in m for m in skipped)
    assert any("0-old-download.json" in m for m in skipped) and any("1-old-broken.json" in m for m in skipped)
    assert len(rows) == len(items) * len(METHODS) and {r["page_id"] for r in rows} == {doc["page_id"]}


def test_the_page_cannot_be_framed(site):
    url, *_ = site
    for res in (httpx.get(f"{url}/"), httpx.post(f"{url}/ratings", json={}), httpx.get(f"{url}/nope")):
        assert res.headers["content-security-policy"] == "frame-ancestors 'none'"
        assert res.headers["x-frame-options"] == "DENY"
    assert httpx.get(f"{url}/docs").status_code == 404 and httpx.get(f"{url}/openapi.json").status_code == 404


def test_foreign_host_is_refused(site):
    url, *_ = site
    res = httpx.get(f"{url}/", headers={"Host": "rebound.example"})
    assert res.status_code == 400 and "not allowed" in res.json()["detail"]
    assert httpx.get(f"{url}/", headers={"Host": "localhost:8765"}).status_code == 200


def test_api_key_guards_the_page_and_the_browser_is_asked_for_it(tmp_path):
    items = make_items()
    page_dir, ratings_dir = tmp_path / "page", tmp_path / "ratings"
    doc = write_page(page_dir, items, seed=7)
    with serving(ratings_app(page_dir, ratings_dir, Guard(api_key="rate-key"))) as url:
        url = url.removesuffix("/v1")
        res = httpx.get(f"{url}/")
        assert res.status_code == 401 and res.headers["www-authenticate"].startswith("Basic")  # browser prompts
        assert httpx.post(f"{url}/ratings", json=payload(doc, items)).status_code == 401
        assert saved(ratings_dir) == []
        basic = base64.b64encode(b"rater:rate-key").decode()
        assert httpx.get(f"{url}/", headers={"Authorization": f"Basic {basic}"}).status_code == 200
        wrong = base64.b64encode(b"rater:guess").decode()
        assert httpx.get(f"{url}/", headers={"Authorization": f"Basic {wrong}"}).status_code == 401
        ok = httpx.post(f"{url}/ratings", json=payload(doc, items), headers={"Authorization": "Bearer rate-key"})
        assert ok.status_code == 200 and len(saved(ratings_dir)) == 1
