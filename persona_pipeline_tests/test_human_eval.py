"""Blind human evaluation: page blindness, the ratings server, and ingestion of rating files."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from persona_pipeline.human_eval import RATINGS_FORMAT, build_page, write_page
from persona_pipeline.human_ratings import SkippedRatingsWarning, load_ratings, summarise
from persona_pipeline.loaders import InputError
from persona_pipeline.rating_server import ratings_app

LOOPBACK = "http://127.0.0.1"  # the rating server answers loopback Host names only

METHODS = ["prompt", "sft", "rl", "steering", "cmaes"]


def make_items(n: int = 4) -> list[dict]:
    items = []
    for i in range(n):
        items.append(
            {
                "id": f"conv-{i}#t{i + 1}",
                "persona_id": "nervous_student" if i % 2 else "grumpy_chef",
                "question": f"What would you cook on day {i}?" if i % 2 == 0 else "",
                "history": [
                    {"role": "assistant", "content": f"Hello! How can I help with topic {i}?"},
                    {"role": "user", "content": "I <b>need</b> dinner ideas & fast."},
                ],
                "reference": f"Honestly, just eggs again {i}.",
                "candidates": {m: f"line {i} written by method number {k}" for k, m in enumerate(METHODS)},
            }
        )
    return items


@pytest.fixture()
def page(tmp_path) -> tuple[Path, dict, list[dict]]:
    items = make_items()
    doc = write_page(tmp_path / "page", items, seed=7)
    return tmp_path / "page", doc, items


def payload(doc: dict, items: list[dict], rater: str = "Ana", rating=lambda i, k: 1 + (i + k) % 5) -> dict:
    ratings = []
    for i, it in enumerate(items):
        for k, label in enumerate(sorted(doc["key"][it["id"]])):
            ratings.append(
                {
                    "item_id": it["id"],
                    "persona_id": it["persona_id"],
                    "label": label,
                    "rating": rating(i, k),
                    "comment": f"c{i}{k}" if k == 0 else "",
                }
            )
    return {
        "format": RATINGS_FORMAT,
        "page_id": doc["page_id"],
        "rater": rater,
        "submitted_at": "2025-01-01T00:00:00.000Z",
        "ratings": ratings,
    }


def expected_rows(doc: dict, body: dict) -> list[tuple]:
    return [(r["item_id"], r["label"], doc["key"][r["item_id"]][r["label"]], r["rating"]) for r in body["ratings"]]


# --------------------------------------------------------------------------- page


def test_page_is_blind_complete_and_escaped():
    items = make_items()
    items[0]["reference"] = "<script>alert('x')</script> & co"
    html, key = build_page(items, seed=3)
    for m in METHODS:  # no method name anywhere, in any case, as a word
        assert not re.search(rf"\b{m}\b", html, re.IGNORECASE), m
    assert "<script>alert" not in html and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; co" in html
    assert "I &lt;b&gt;need&lt;/b&gt; dinner ideas &amp; fast." in html
    assert not re.search(r'(src|href)\s*=\s*"https?:', html)  # self-contained: no external assets
    for it in items:
        assert f'data-item-id="{it["id"]}"' in html
        assert set(key[it["id"]]) == set("ABCDE") and sorted(key[it["id"]].values()) == sorted(METHODS)
        for line in it["candidates"].values():
            assert line in html
    assert html.count('class="cand"') == len(items) * len(METHODS)
    for i in range(len(items)):
        for label in "ABCDE":
            assert html.count(f'name="r{i}-{label}"') == 5  # one radio per scale point
            assert f'name="c{i}-{label}"' in html
    assert 'id="rater"' in html and 'id="submit"' in html and 'id="download"' in html


def test_shuffle_is_deterministic_per_seed_and_varies_across_items():
    items = make_items(8)
    html1, key1 = build_page(items, seed=11)
    html2, key2 = build_page(items, seed=11)
    assert (html1, key1) == (html2, key2)
    orders = {tuple(v.values()) for v in key1.values()}
    assert len(orders) > 1, "every item got the same label order"
    _, key3 = build_page(items, seed=12)
    assert key3 != key1
    # the candidates' dict order does not matter, only the seed
    shuffled = [dict(it, candidates=dict(reversed(list(it["candidates"].items())))) for it in items]
    assert build_page(shuffled, seed=11)[1] == key1


def test_bad_items_rejected():
    items = make_items(2)
    items[1]["id"] = items[0]["id"]
    with pytest.raises(ValueError, match="duplicate item id"):
        build_page(items, seed=0)
    with pytest.raises(ValueError, match="candidates"):
        build_page([dict(make_items(1)[0], candidates={})], seed=0)


def test_write_page_files_and_mismatch_refused(page, tmp_path):
    page_dir, doc, items = page
    assert sorted(p.name for p in page_dir.iterdir()) == ["index.html", "key.json"]
    on_disk = json.loads((page_dir / "key.json").read_text())
    assert on_disk == doc and doc["methods"] == sorted(METHODS) and doc["n_items"] == len(items)
    assert f'data-page-id="{doc["page_id"]}"' in (page_dir / "index.html").read_text()
    # a key from a different build must not be served with this page
    other = write_page(tmp_path / "other", items, seed=8)
    shutil.copy(tmp_path / "other" / "key.json", page_dir / "key.json")
    assert other["page_id"] != doc["page_id"]
    with pytest.raises(RuntimeError, match="different builds"):
        ratings_app(page_dir, tmp_path / "ratings")


# --------------------------------------------------------------------------- server


def test_post_writes_one_file_with_methods_joined(page, tmp_path):
    page_dir, doc, items = page
    ratings_dir = tmp_path / "ratings"
    client = TestClient(ratings_app(page_dir, ratings_dir), base_url=LOOPBACK)
    got = client.get("/")
    assert got.status_code == 200 and doc["page_id"] in got.text
    body = payload(doc, items, rater="Ana María")
    res = client.post("/ratings", json=body)
    assert res.status_code == 200, res.text
    name = res.json()["file"]
    assert res.json()["n_ratings"] == len(items) * len(METHODS)
    assert re.fullmatch(r"\d{8}T\d{6}Z-ana-mar-a-[0-9a-f]{8}\.json", name)
    assert [p.name for p in ratings_dir.iterdir()] == [name]  # no temp files left behind
    saved = json.loads((ratings_dir / name).read_text())
    assert saved["rater"] == "Ana María" and saved["page_id"] == doc["page_id"] and saved["source"] == "server"
    assert saved["page_sha256"] == doc["page_sha256"] and saved["submitted_at"].endswith("Z")
    assert [(r["item_id"], r["label"], r["method"], r["rating"]) for r in saved["ratings"]] == expected_rows(doc, body)
    assert {r["persona_id"] for r in saved["ratings"]} == {"grumpy_chef", "nervous_student"}
    assert saved["ratings"][0]["comment"] == "c00"


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda b: b["ratings"][2].update(item_id="nope"), "unknown item 'nope'"),
        (lambda b: b["ratings"][1].update(label="Q"), "unknown label 'Q'"),
        (lambda b: b["ratings"][0].update(rating=7), "less than or equal to 5"),
        (lambda b: b["ratings"][0].update(rating=0), "greater than or equal to 1"),
        (lambda b: b["ratings"][0].update(rating="4"), "valid integer"),
        (lambda b: b["ratings"][0].pop("item_id"), "Field required"),
        (lambda b: b["ratings"][0].update(method="sft"), "Extra inputs"),
        (lambda b: b.update(rater="  "), "rater"),
        (lambda b: b.update(ratings=[]), "ratings"),
        (lambda b: b.update(page_id="other"), "this server serves page"),
        (lambda b: b["ratings"].append(dict(b["ratings"][0])), "already rated"),
    ],
)
def test_bad_payloads_are_422_with_a_clear_message(page, tmp_path, mutate, needle):
    page_dir, doc, items = page
    client = TestClient(ratings_app(page_dir, tmp_path / "ratings"), base_url=LOOPBACK)
    body = payload(doc, items)
    mutate(body)
    res = client.post("/ratings", json=body)
    assert res.status_code == 422
    assert needle in json.dumps(res.json()["detail"])
    assert not (tmp_path / "ratings").exists() or not list((tmp_path / "ratings").iterdir())


def test_not_json_body_is_422(page, tmp_path):
    page_dir, _, _ = page
    client = TestClient(ratings_app(page_dir, tmp_path / "ratings"), base_url=LOOPBACK)
    res = client.post("/ratings", content=b"{not json", headers={"Content-Type": "application/json"})
    assert res.status_code == 422


# --------------------------------------------------------------------------- ingestion


def post(page_dir: Path, ratings_dir: Path, body: dict) -> str:
    res = TestClient(ratings_app(page_dir, ratings_dir), base_url=LOOPBACK).post("/ratings", json=body)
    assert res.status_code == 200, res.text
    return res.json()["file"]


def test_load_ratings_reads_server_files(page, tmp_path):
    page_dir, doc, items = page
    ratings_dir = tmp_path / "ratings"
    b1, b2 = payload(doc, items, "Ana"), payload(doc, items, "Ben", rating=lambda i, k: 5)
    post(page_dir, ratings_dir, b1)
    post(page_dir, ratings_dir, b2)
    rows = load_ratings(ratings_dir)  # server files carry methods: no key needed
    assert len(rows) == 2 * len(items) * len(METHODS)
    assert rows == load_ratings(ratings_dir, key=page_dir) == load_ratings(ratings_dir)  # cross-checked, stable
    assert {(r["item_id"], r["label"], r["method"], r["rating"]) for r in rows if r["rater"] == "Ben"} == {
        t for t in expected_rows(doc, b2)
    }
    assert set(rows[0]) >= {"item_id", "persona_id", "label", "method", "rating", "comment", "rater", "file"}
    assert load_ratings(tmp_path / "missing") == []


def test_downloaded_json_joined_via_key(page, tmp_path):
    page_dir, doc, items = page
    ratings_dir = tmp_path / "human_ratings"
    ratings_dir.mkdir()
    body = dict(payload(doc, items), source="download")
    (ratings_dir / "ratings-download.json").write_text(json.dumps(body))
    for key in (page_dir, page_dir / "key.json", doc, doc["key"]):
        rows = load_ratings(ratings_dir, key=key)
        assert [(r["item_id"], r["label"], r["method"], r["rating"]) for r in rows] == expected_rows(doc, body)
        assert rows[0]["persona_id"] == items[0]["persona_id"]
    with pytest.raises(InputError, match=r"ratings-download\.json, ratings\[0\]: field 'method': labels only"):
        load_ratings(ratings_dir)
    other = write_page(tmp_path / "other", items, seed=99)
    with pytest.warns(SkippedRatingsWarning, match=f"not the current page '{other['page_id']}'"):
        assert load_ratings(ratings_dir, key=other) == []  # another page's file is skipped, not an error


def test_duplicates_are_counted_once(page, tmp_path):
    page_dir, doc, items = page
    ratings_dir = tmp_path / "ratings"
    body = payload(doc, items)
    name = post(page_dir, ratings_dir, body)
    post(page_dir, ratings_dir, body)  # the same form submitted twice
    shutil.copy(ratings_dir / name, ratings_dir / "copy-of-it.json")  # re-ingested copy
    (ratings_dir / "ratings-download.json").write_text(json.dumps(dict(body, source="download")))  # its download twin
    n = len(items) * len(METHODS)
    rows = load_ratings(ratings_dir, key=page_dir)
    assert len(rows) == n and len({r["file"] for r in rows}) == 1
    assert load_ratings(ratings_dir, key=page_dir) == rows  # ingesting again changes nothing
    changed = payload(doc, items, rating=lambda i, k: 3)
    post(page_dir, ratings_dir, changed)  # the same rater edits and submits again: it replaces, not adds
    rows = load_ratings(ratings_dir, key=page_dir)
    assert len(rows) == n and {r["rating"] for r in rows} == {3}
    post(page_dir, ratings_dir, payload(doc, items, "Ben"))  # another rater does count
    assert len(load_ratings(ratings_dir, key=page_dir)) == 2 * n


def _good_file(doc, items) -> dict:
    return dict(payload(doc, items), source="download")


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda d: "{oops", r"bad\.json, line 1: invalid JSON"),
        (lambda d: [1, 2], r"bad\.json: expected a JSON object, got list"),
        (
            lambda d: {**d, "ratings": [d["ratings"][0], {**d["ratings"][1], "rating": 7}]},
            r"bad\.json, ratings\[1\]: field 'rating': Input should be less than or equal to 5 \(got 7\)",
        ),
        (
            lambda d: {**d, "ratings": [d["ratings"][0], {k: v for k, v in d["ratings"][1].items() if k != "item_id"}]},
            r"bad\.json, ratings\[1\]: field 'item_id': Field required",
        ),
        (
            lambda d: {**d, "ratings": [d["ratings"][0], {**d["ratings"][1], "rating": "five"}]},
            r"bad\.json, ratings\[1\]: field 'rating': Input should be a valid integer",
        ),
        (
            lambda d: {**d, "ratings": [d["ratings"][0], {**d["ratings"][1], "ratng": 3}]},
            r"bad\.json, ratings\[1\]: field 'ratng': Extra inputs are not permitted",
        ),
        (
            lambda d: {**d, "ratings": [d["ratings"][0], {**d["ratings"][1], "label": "Z"}]},
            r"bad\.json, ratings\[1\]: field 'label': unknown label 'Z'",
        ),
        (
            lambda d: {**d, "ratings": [d["ratings"][0], {**d["ratings"][1], "item_id": "ghost"}]},
            r"bad\.json, ratings\[1\]: field 'item_id': unknown item 'ghost'",
        ),
        (
            lambda d: {**d, "ratings": [d["ratings"][0], {**d["ratings"][0], "comment": "again"}]},
            r"bad\.json, ratings\[1\]: field 'label': .* already rated in ratings\[0\]",
        ),
        (lambda d: {k: v for k, v in d.items() if k != "rater"}, r"bad\.json: field 'rater': Field required"),
        (lambda d: {**d, "ratings": "all fives"}, r"bad\.json: field 'ratings': Input should be a valid list"),
        (lambda d: {**d, "format": "something/else"}, r"bad\.json: field 'format'"),
    ],
)
def test_load_ratings_errors_name_file_record_and_field(page, tmp_path, make, pattern):
    page_dir, doc, items = page
    ratings_dir = tmp_path / "ratings"
    ratings_dir.mkdir()
    (ratings_dir / "a-good.json").write_text(json.dumps(_good_file(doc, items)))
    content = make(_good_file(doc, items))
    (ratings_dir / "bad.json").write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(InputError, match=pattern):
        load_ratings(ratings_dir, key=page_dir)


def test_server_method_disagreeing_with_key_is_caught(page, tmp_path):
    page_dir, doc, items = page
    ratings_dir = tmp_path / "ratings"
    name = post(page_dir, ratings_dir, payload(doc, items))
    saved = json.loads((ratings_dir / name).read_text())
    true = saved["ratings"][0]["method"]
    saved["ratings"][0]["method"] = next(m for m in METHODS if m != true)
    (ratings_dir / name).write_text(json.dumps(saved))
    with pytest.raises(InputError, match=rf"{re.escape(name)}, ratings\[0\]: field 'method': .*says '{true}'"):
        load_ratings(ratings_dir, key=page_dir)


def test_summarise_means_per_method_and_persona():
    rows = [
        {"persona_id": "p1", "method": "sft", "rating": 4, "rater": "a"},
        {"persona_id": "p1", "method": "sft", "rating": 2, "rater": "b"},
        {"persona_id": "p2", "method": "sft", "rating": 5, "rater": "a"},
        {"persona_id": "p1", "method": "rl", "rating": 1, "rater": "a"},
    ]
    s = summarise(rows)
    assert s["by_method"] == [
        {"method": "rl", "mean": 1.0, "n": 1, "n_raters": 1},
        {"method": "sft", "mean": round(11 / 3, 4), "n": 3, "n_raters": 2},
    ]
    assert s["by_persona_method"] == [
        {"persona_id": "p1", "method": "rl", "mean": 1.0, "n": 1, "n_raters": 1},
        {"persona_id": "p1", "method": "sft", "mean": 3.0, "n": 2, "n_raters": 2},
        {"persona_id": "p2", "method": "sft", "mean": 5.0, "n": 1, "n_raters": 1},
    ]
    assert summarise([]) == {"by_method": [], "by_persona_method": []}
