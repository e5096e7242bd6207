"""A small local web server for the blind rating page.

It exists so raters can submit with one click instead of downloading and moving a
JSON file: it serves the page written by ``human_eval.write_page``, refuses to start
if page and key come from different builds, joins each posted submission to methods
with ``human_ratings`` and writes it atomically as one file that
``human_ratings.load_ratings`` reads later.

Run it directly with ``python -m persona_pipeline.rating_server PAGE_DIR RATINGS_DIR``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path

from .http_guard import Guard, api_key, guard_app, warn_if_exposed
from .human_eval import KEY_FILE, PAGE_FILE, RATINGS_FORMAT, Submission
from .human_ratings import _as_key, _join, _Problem, load_key
from .storage import write_json

MAX_BODY_BYTES = 4 << 20  # a page of 26 labels × many items with 4,000-character comments fits
# The page must not be framed by another site (clickjacking a rater's Submit); a <meta> CSP cannot say this.
NO_FRAMING = {"Content-Security-Policy": "frame-ancestors 'none'", "X-Frame-Options": "DENY"}

# --------------------------------------------------------------------------- server


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "anon"


def ratings_app(page_dir: str | Path, ratings_dir: str | Path, guard: Guard | None = None):
    """FastAPI app: ``GET /`` serves the page, ``POST /ratings`` validates, joins and saves one file.

    Page and key are read once at start and checked against each other, so ratings
    can never be joined with the key of a different build of the page. ``guard``
    (default: loopback Host names only, no key, 4 MiB bodies) is ``serve``'s request
    guard; with a key, the browser asks the rater for it (HTTP Basic, key as password).
    """
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import HTMLResponse

    page_dir, ratings_dir = Path(page_dir), Path(ratings_dir)
    page = (page_dir / PAGE_FILE).read_text(encoding="utf-8")
    doc = load_key(page_dir / KEY_FILE)
    page_sha = hashlib.sha256(page.encode("utf-8")).hexdigest()
    if doc.get("page_sha256") not in (None, page_sha) or f'data-page-id="{doc["page_id"]}"' not in page:
        raise RuntimeError(f"{page_dir}: {PAGE_FILE} and {KEY_FILE} come from different builds; re-run write_page")
    key = _as_key(doc)

    def unprocessable(index: int | None, field_name: str, msg: str) -> HTTPException:
        loc = ["body", "ratings", index, field_name] if index is not None else ["body", field_name]
        return HTTPException(status_code=422, detail=[{"loc": loc, "msg": msg, "type": "value_error"}])

    app = FastAPI(title="persona-pipeline human evaluation", docs_url=None, redoc_url=None, openapi_url=None)
    guard = guard or Guard(max_body_bytes=MAX_BODY_BYTES)
    guard = dataclasses.replace(guard, browser_login=True, headers={**NO_FRAMING, **guard.headers})
    guard_app(app, guard, lambda _status, message, _code: {"detail": message})  # the page shows ``detail``

    @app.get("/", response_class=HTMLResponse)
    def index():
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True, "page_id": key.page_id}

    @app.post("/ratings")
    def post_ratings(sub: Submission) -> dict:
        if sub.page_id != key.page_id:
            raise unprocessable(
                None,
                "page_id",
                f"ratings are for page {sub.page_id!r} but this server serves page {key.page_id!r}; reload the page",
            )
        try:
            rows = _join(sub, key)
        except _Problem as p:
            raise unprocessable(p.index, p.field, p.msg) from None
        now = datetime.now(UTC)
        name = f"{now:%Y%m%dT%H%M%SZ}-{_slug(sub.rater)}-{uuid.uuid4().hex[:8]}.json"
        write_json(
            ratings_dir / name,
            {
                "format": RATINGS_FORMAT,
                "page_id": key.page_id,
                "page_sha256": page_sha,
                "rater": sub.rater,
                "submitted_at": now.isoformat(timespec="microseconds").replace("+00:00", "Z"),  # orders re-submissions
                "client_submitted_at": sub.submitted_at,
                "source": "server",
                "ratings": rows,
            },
        )
        return {"file": name, "n_ratings": len(rows)}

    return app


def serve_ratings(
    page_dir: str | Path, ratings_dir: str | Path, host: str = "127.0.0.1", port: int = 8765, key: str | None = None
) -> None:
    """Serve the rating page until interrupted (loopback by default: raters on this machine).

    ``key`` (or ``$PERSONA_PIPELINE_API_KEY``) makes the browser ask each rater for it.
    """
    import uvicorn

    key = api_key(key)
    warn_if_exposed(host, key, "the rating server")
    app = ratings_app(page_dir, ratings_dir, Guard(bind_host=host, api_key=key, max_body_bytes=MAX_BODY_BYTES))
    print(f"rating page: http://{host}:{port}/  (ratings are written to {Path(ratings_dir).resolve()})")
    uvicorn.run(app, host=host, port=port, log_level="info")


def _main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Serve a human-evaluation page written by write_page.")
    ap.add_argument("page_dir")
    ap.add_argument("ratings_dir")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--api-key", help="ask raters for this key (default: $PERSONA_PIPELINE_API_KEY)")
    args = ap.parse_args(argv)
    serve_ratings(args.page_dir, args.ratings_dir, args.host, args.port, args.api_key)


if __name__ == "__main__":
    _main()
