"""Reading human ratings back: join each rating's label to the method that wrote the line.

The page never carries its label→method key, so every rating must be resolved against
the page's ``key.json`` before it means anything. This module holds that join (shared
by the ratings server, which applies it on arrival) and the ingestion of rating files
from disk: every record is validated with an error that names file, record and field,
and a submission seen twice (re-ingested, or both posted and downloaded) is counted once.
A rater who submits again (after editing answers) replaces their earlier ratings of the
same items: counts are per rater and page, latest submission wins. Files for another
page than the key's are skipped with a warning, so one stale file never blocks ingestion.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from .human_eval import KEY_FILE, KEY_FORMAT, RatingFile, Submission
from .loaders import InputError

# --------------------------------------------------------------------------- joining labels to methods


@dataclass
class _Key:
    page_id: str | None
    labels: dict[str, dict[str, str]]
    personas: dict[str, str] = field(default_factory=dict)


class _Problem(Exception):
    def __init__(self, index: int | None, field_name: str, msg: str):
        super().__init__(msg)
        self.index, self.field, self.msg = index, field_name, msg


def _read_json(path: Path):
    """A JSON file, or an ``InputError`` naming the file (and the line, for bad JSON)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}, line {e.lineno}: invalid JSON: {e.msg}") from None


def load_key(path: str | Path) -> dict:
    """Read a page's ``key.json`` (or the folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / KEY_FILE
    if not path.exists():
        raise InputError(f"{path}: key file not found")
    doc = _read_json(path)
    if not isinstance(doc, dict) or doc.get("format") != KEY_FORMAT or not isinstance(doc.get("key"), dict):
        raise InputError(f"{path}: field 'format': not a human-eval key file (expected format {KEY_FORMAT!r})")
    return doc


def _as_key(key: Mapping | str | Path | None) -> _Key | None:
    if key is None:
        return None
    doc = load_key(key) if isinstance(key, (str, Path)) else dict(key)
    if doc.get("format") == KEY_FORMAT:
        return _Key(doc.get("page_id"), doc["key"], doc.get("personas", {}))
    return _Key(None, {str(k): dict(v) for k, v in doc.items()})  # a bare {item_id: {label: method}}


def _join(sub: Submission, key: _Key | None) -> list[dict]:
    """Resolve each rating's method (and persona) from the key or the record itself; raise ``_Problem``."""
    use_key = key is not None and (key.page_id is None or key.page_id == sub.page_id)
    rows, seen = [], {}
    for i, r in enumerate(sub.ratings):
        given_method = getattr(r, "method", None)
        if use_key:
            labels = key.labels.get(r.item_id)
            if labels is None:
                raise _Problem(i, "item_id", f"unknown item {r.item_id!r}: not on page {sub.page_id}")
            method = labels.get(r.label)
            if method is None:
                raise _Problem(
                    i,
                    "label",
                    f"unknown label {r.label!r} for item {r.item_id!r} (the page shows {', '.join(sorted(labels))})",
                )
            if given_method is not None and given_method != method:
                raise _Problem(i, "method", f"{given_method!r} disagrees with the key, which says {method!r}")
            persona = key.personas.get(r.item_id) or r.persona_id
            if r.persona_id and persona != r.persona_id:
                raise _Problem(i, "persona_id", f"{r.persona_id!r} disagrees with the key, which says {persona!r}")
        else:
            method, persona = given_method, r.persona_id
            if method is None:
                why = (
                    f"the key given is for page {key.page_id}, not {sub.page_id}"
                    if key is not None
                    else "no key given: pass the page's key.json to join labels to methods"
                )
                raise _Problem(i, "method", f"labels only and {why}")
        if persona is None:
            raise _Problem(i, "persona_id", "missing, and no key to look it up in")
        where = (r.item_id, r.label)
        if where in seen:
            raise _Problem(
                i, "label", f"item {r.item_id!r} line {r.label!r} is already rated in ratings[{seen[where]}]"
            )
        seen[where] = i
        rows.append(
            {
                "item_id": r.item_id,
                "persona_id": persona,
                "label": r.label,
                "method": method,
                "rating": r.rating,
                "comment": r.comment,
            }
        )
    if use_key:
        _require_whole_items(sub, key)
    return rows


def _require_whole_items(sub: Submission, key: _Key) -> None:
    """Every item rated is rated on all its lines: a half-rated item cannot be compared across methods."""
    rated: dict[str, set[str]] = defaultdict(set)
    first: dict[str, int] = {}
    for i, r in enumerate(sub.ratings):
        rated[r.item_id].add(r.label)
        first.setdefault(r.item_id, i)
    for item, labels in rated.items():
        missing = sorted(set(key.labels[item]) - labels)
        if missing:
            raise _Problem(
                first[item],
                "label",
                f"item {item!r} is only partly rated: no rating for line(s) {', '.join(missing)} "
                "(rate every line of an item, or none of them)",
            )


def _submission_hash(sub: Submission) -> str:
    """Identity of a submission's content: same rater, page and ratings → same hash.

    Timestamps, file names and joined methods are left out, so a re-ingested copy, a
    repeated click on Submit, or a downloaded twin of a posted submission all collapse.
    """
    core = {
        "page_id": sub.page_id,
        "rater": sub.rater,
        "ratings": sorted([r.item_id, r.label, r.rating, r.comment] for r in sub.ratings),
    }
    return hashlib.sha256(json.dumps(core, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


# --------------------------------------------------------------------------- ingestion


def _explain(e: ValidationError) -> tuple[str | None, str]:
    errors = e.errors()
    err = next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])
    loc = list(err["loc"])
    record = None
    if len(loc) >= 2 and loc[0] == "ratings" and isinstance(loc[1], int):
        record, loc = f"ratings[{loc[1]}]", loc[2:]
    name = ".".join(str(p) for p in loc) or "(record)"
    got = err.get("input")
    shown = f" (got {got!r})" if isinstance(got, (str, int, float, bool)) and err["type"] != "missing" else ""
    return record, f"field '{name}': {err['msg']}{shown}"


class SkippedRatingsWarning(UserWarning):
    """A rating file left out of ingestion (written for another page than the key's)."""


def _submitted(sub: Submission) -> datetime:
    """When a submission was made (server time for posted files, the browser's for downloads); unknown = oldest."""
    try:
        when = datetime.fromisoformat(sub.submitted_at or "")
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _rater_id(sub: Submission) -> str:
    """ "Ana  María" and "ana maría" are one rater."""
    return " ".join(sub.rater.split()).casefold()


def _read_submission(path: Path, k: _Key | None) -> tuple[RatingFile, list[dict]] | None:
    """One validated, joined file; None for a page key kept alongside, or (with a warning) another page's file."""
    raw = _read_json(path)
    if isinstance(raw, dict) and raw.get("format") == KEY_FORMAT:
        return None  # a page key kept next to its ratings is not a submission
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    if k is not None and k.page_id is not None and raw.get("page_id") != k.page_id:
        warnings.warn(
            f"{path}: skipped: ratings for page {raw.get('page_id')!r}, not the current page {k.page_id!r}",
            SkippedRatingsWarning,
            stacklevel=3,
        )
        return None
    try:
        sub = RatingFile.model_validate(raw)
    except ValidationError as e:
        record, what = _explain(e)
        raise InputError(f"{path}" + (f", {record}" if record else "") + f": {what}") from None
    try:
        return sub, _join(sub, k)
    except _Problem as p:
        record = f", ratings[{p.index}]" if p.index is not None else ""
        raise InputError(f"{path}{record}: field '{p.field}': {p.msg}") from None


def load_ratings(ratings_dir: str | Path, key: Mapping | str | Path | None = None) -> list[dict]:
    """Read every rating file in ``ratings_dir`` into rows, in file-name order, each submission once.

    ``key`` (a page folder, a ``key.json`` path, its loaded dict, or a bare
    ``{item_id: {label: method}}``) joins downloaded, labels-only files to methods and
    cross-checks server-written ones; files for another page are then skipped with a
    ``SkippedRatingsWarning``. Per rater (name, case and spacing ignored) and page, each
    item counts once, from that rater's latest submission rating it. A missing folder
    means no ratings yet. Raises ``InputError`` naming the file, the record and the field on bad input.
    """
    ratings_dir = Path(ratings_dir)
    if not ratings_dir.exists():
        return []
    k = _as_key(key)
    subs, seen = [], set()
    for path in sorted(p for p in ratings_dir.glob("*.json") if p.is_file() and not p.name.startswith(".")):
        read = _read_submission(path, k)
        if read is None:
            continue
        digest = _submission_hash(read[0])
        if digest not in seen:  # the same submission again (a copy, a download twin) counts once
            seen.add(digest)
            subs.append((path, *read))
    latest: dict[tuple, Path] = {}  # (page, rater, item) → the file whose rating of it counts
    for path, sub, joined in sorted(subs, key=lambda s: (_submitted(s[1]), s[0].name)):
        for r in joined:
            latest[(sub.page_id, _rater_id(sub), r["item_id"])] = path
    rows = []
    for path, sub, joined in subs:
        meta = {"file": path.name, "rater": sub.rater, "page_id": sub.page_id, "submitted_at": sub.submitted_at}
        rows += [{**meta, **r} for r in joined if latest[(sub.page_id, _rater_id(sub), r["item_id"])] == path]
    return rows


def summarise(rows: Sequence[Mapping]) -> dict[str, list[dict]]:
    """Mean rating and counts per method and per persona × method (sorted, ready for a table)."""

    def stats(group: list[Mapping]) -> dict:
        ratings = [g["rating"] for g in group]
        return {
            "mean": round(sum(ratings) / len(ratings), 4),
            "n": len(ratings),
            "n_raters": len({g.get("rater") for g in group}),
        }

    by_method: dict[str, list] = defaultdict(list)
    by_pm: dict[tuple[str, str], list] = defaultdict(list)
    for r in rows:
        by_method[r["method"]].append(r)
        by_pm[(r["persona_id"], r["method"])].append(r)
    return {
        "by_method": [{"method": m, **stats(g)} for m, g in sorted(by_method.items())],
        "by_persona_method": [{"persona_id": p, "method": m, **stats(g)} for (p, m), g in sorted(by_pm.items())],
    }
