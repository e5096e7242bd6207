"""The persona writing room: labelers write gold persona lines against a real assistant model.

The pipeline doc's HITL method. A labeler picks a persona and a topic and plays the
persona; after each of their lines the assistant model answers (the real model the
pipeline tests against). Each persona line carries 1–2 alternatives (2–3 gold lines per
turn); the persona simulator may propose candidates to edit. A finished session is
validated as a :class:`~persona_pipeline.contracts.HitlRecord` and written atomically as
its own JSONL file in ``data_assets/hitl/`` (configurable), where ``hitl_files_sensor`` and
the next ``hitl_conversations`` run pick it up.

The server binds loopback by default, shares ``http_guard`` with the other servers
(optional API key, Host allowlist, body limit) and bounds every field.
"""

from __future__ import annotations

import re
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field

from .backends import SamplingParams
from .contracts import ID_PATTERN, HitlRecord, PersonaSpec, Topic
from .http_guard import Guard, api_key, guard_app, warn_if_exposed
from .loaders import InputError, validate_record
from .persona_simulator import PersonaBackend
from .prompts import assistant_chat
from .storage import write_text

PAGE = Path(__file__).parent / "static" / "writing_room.html"
MAX_BODY_BYTES = 256 * 1024
MAX_TURNS = 40
MAX_LINE = 2000


class Line(BaseModel):
    role: str = Field(pattern="^(user|assistant)$")
    content: str = Field(min_length=1, max_length=MAX_LINE)
    alternatives: list[str] = Field(default_factory=list, max_length=2)


class Draft(BaseModel):
    """The dialogue so far, as the page holds it (``user`` = the persona)."""

    persona_id: str = Field(pattern=ID_PATTERN, max_length=64)
    topic: str = Field(min_length=3, max_length=300)
    turns: list[Line] = Field(default_factory=list, max_length=MAX_TURNS)


class Session(Draft):
    scenario_type: str = Field(pattern=ID_PATTERN, max_length=64)
    annotator: str = Field(min_length=1, max_length=64)
    suggested_turns: list[int] = Field(default_factory=list, max_length=MAX_TURNS)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:24] or "anon"


def session_record(s: Session, assistant_name: str) -> HitlRecord:
    """The saved record: our HITL layout plus metadata saying where it came from."""
    now = datetime.now(UTC)
    raw = {
        "id": f"wr-{s.persona_id.replace('_', '-')}-{now:%Y%m%d%H%M%S}-{uuid.uuid4().hex[:6]}",
        "persona_id": s.persona_id,
        "topic": s.topic,
        "scenario_type": s.scenario_type,
        "annotator": s.annotator,
        "turns": [t.model_dump() for t in s.turns],
        "metadata": {
            "source": "hitl",
            "tool": "writing-room",
            "assistant_model": assistant_name,
            "suggested_turns": s.suggested_turns,
            "written_at": now.isoformat(timespec="seconds").replace("+00:00", "Z"),
        },
    }
    return validate_record(HitlRecord, raw, Path("session"))


def writing_room_app(
    personas: list[PersonaSpec],
    topics: list[Topic],
    assistant,
    simulator,
    hitl_dir: Path,
    definitions: dict[str, str],
    guard: Guard | None = None,
    max_new_tokens: int = 96,
):
    """FastAPI app: ``GET /`` the page, ``/api/setup``, ``/api/assistant``, ``/api/suggest``, ``/api/sessions``.

    ``assistant`` answers the persona's lines; ``simulator`` (any backend, wrapped per persona
    in :class:`PersonaBackend`) proposes candidate persona lines. Calls to the models are
    serialised: one model, one request at a time.
    """
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import HTMLResponse

    by_id = {p.id: p for p in personas}
    model_lock = threading.Lock()
    app = FastAPI(title="persona writing room", docs_url=None, redoc_url=None, openapi_url=None)
    guard_app(app, guard or Guard(max_body_bytes=MAX_BODY_BYTES), lambda _s, message, _c: {"detail": message})

    def known(persona_id: str) -> PersonaSpec:
        if persona_id not in by_id:
            raise HTTPException(422, [{"loc": ["body", "persona_id"], "msg": f"unknown persona {persona_id!r}"}])
        return by_id[persona_id]

    @app.get("/", response_class=HTMLResponse)
    def index():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"), headers={"Cache-Control": "no-store"})

    @app.get("/api/setup")
    def setup() -> dict:
        return {
            "personas": [
                {"id": p.id, "name": p.name, "description": p.description, "example_lines": p.example_lines[:3]}
                for p in personas
            ],
            "topics": [{"text": t.text, "scenario_type": t.scenario_type} for t in topics],
            "hitl_dir": str(hitl_dir),
        }

    @app.post("/api/assistant")
    def assistant_reply(d: Draft) -> dict:
        known(d.persona_id)
        if not d.turns or d.turns[-1].role != "user":
            raise HTTPException(422, [{"loc": ["body", "turns"], "msg": "the last turn must be the persona's line"}])
        chat = assistant_chat([t.model_dump() for t in d.turns])
        with model_lock:
            (reply,) = assistant.complete([chat], SamplingParams(max_new_tokens=max_new_tokens, temperature=0.7))
        return {"content": reply.strip(), "model": assistant.name}

    @app.post("/api/suggest")
    def suggest(d: Draft) -> dict:
        spec = known(d.persona_id)
        if d.turns and d.turns[-1].role != "assistant":
            raise HTTPException(422, [{"loc": ["body", "turns"], "msg": "suggestions are for the persona's next line"}])
        persona = PersonaBackend(simulator, spec.id, definitions[spec.id], topic=d.topic if not d.turns else None)
        chat = [t.model_dump(include={"role", "content"}) for t in d.turns]
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.9)
        with model_lock:
            lines = persona.complete([chat, chat, chat], params)
        return {"candidates": list(dict.fromkeys(x.strip() for x in lines if x.strip()))}

    @app.post("/api/sessions")
    def save(s: Session) -> dict:
        known(s.persona_id)
        try:
            rec = session_record(s, assistant.name)
        except InputError as e:
            msg = str(e).removeprefix("session: ")
            raise HTTPException(422, [{"loc": ["body"], "msg": msg}]) from None
        name = f"writing-room-{rec.id}.jsonl"
        write_text(hitl_dir / name, rec.model_dump_json(exclude_none=True) + "\n")
        return {"id": rec.id, "file": str(hitl_dir / name), "turns": len(rec.turns)}

    return app


def serve_writing_room(app, host: str, port: int, key: str | None) -> None:
    import uvicorn

    warn_if_exposed(host, key, "the writing room")
    uvicorn.run(app, host=host, port=port, log_level="info")


def guard_for(host: str, key: str | None) -> Guard:
    """Loopback Host allowlist and the optional key (``--api-key`` or ``PERSONA_PIPELINE_API_KEY``)."""
    return Guard(bind_host=host, api_key=api_key(key), max_body_bytes=MAX_BODY_BYTES, browser_login=True)
