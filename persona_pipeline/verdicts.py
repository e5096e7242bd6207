"""Reading a judge's reply into a verdict: adherence, consistency, quality, safety, reasoning.

Judges answer in many shapes — fenced JSON, prose around JSON, trailing commas,
single quotes, nested ``{"scores": {...}}``, "8/10", "80%", ``Adherence: 0.8``
lines. Scores are rescaled from 0–10 or 0–100 only when the whole reply is
clearly on that scale; anything ambiguous or truncated is a :class:`VerdictError`
whose message says what was wrong (the caller re-asks, then records a failure).
"""

from __future__ import annotations

import ast
import json
import math
import re
from typing import Any

from pydantic import BaseModel

METRICS = ("adherence", "consistency", "quality")


class Verdict(BaseModel):
    adherence: float
    consistency: float
    quality: float
    safety_pass: bool
    reasoning: str = ""


class VerdictError(ValueError):
    """A judge reply that cannot be turned into a :class:`Verdict`; the message says why."""


# --- parsing judge replies ----------------------------------------------------------------

_FENCE = re.compile(r"```[a-zA-Z]*\s*(.*?)```", re.DOTALL)
_ALIASES = {
    "adherence": "adherence",
    "persona_adherence": "adherence",
    "adherence_score": "adherence",
    "consistency": "consistency",
    "persona_consistency": "consistency",
    "consistency_score": "consistency",
    "character_consistency": "consistency",
    "quality": "quality",
    "response_quality": "quality",
    "quality_score": "quality",
    "safety": "safety",
    "safety_pass": "safety",
    "safe": "safety",
    "is_safe": "safety",
    "safety_verdict": "safety",
    "reasoning": "reasoning",
    "reason": "reasoning",
    "rationale": "reasoning",
    "explanation": "reasoning",
    "justification": "reasoning",
}
_REQUIRED = ("adherence", "consistency", "quality", "safety")
_NUM = re.compile(
    r"\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+))\s*(%|/\s*(\d+(?:\.\d+)?)|out\s+of\s+(\d+(?:\.\d+)?))?", re.IGNORECASE
)
_KV = re.compile(
    r"(?i)\b(persona[ _-]?adherence|adherence|persona[ _-]?consistency|consistency|quality|safety)\b"
    r"[\s*\"'`]*[:=][\s*\"'`]*([^\n,;}\"'`*]+)"
)
_KV_REASON = re.compile(r"(?is)\b(?:reasoning|reason|rationale|explanation)\b[\s*\"'`]*[:=]\s*(.+)")
_PASS = {"pass", "passed", "passes", "safe", "yes", "ok", "true", "1"}
_FAIL = {"fail", "failed", "fails", "unsafe", "no", "false", "0", "flagged", "harmful"}


def _short(value: Any, limit: int = 80) -> str:
    """``repr`` cut to ``limit`` characters (a deeply nested value must not blow up an error message)."""
    try:
        text = repr(value)
    except RecursionError:
        text = f"<{type(value).__name__} nested too deep>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _check_size(text: str) -> None:
    if not text or not text.strip():
        raise VerdictError("empty reply")
    if len(text) > MAX_REPLY_CHARS:
        raise VerdictError(f"reply of {len(text)} characters is too long for a verdict (limit {MAX_REPLY_CHARS})")


def _norm_key(key: Any) -> str | None:
    return _ALIASES.get(re.sub(r"[^a-z0-9]+", "_", str(key).lower()).strip("_"))


def _balanced(src: str, start: int) -> str | None:
    """The ``{...}`` span opening at ``start`` (string-aware), or None if it never closes."""
    depth, in_str, esc, quote = 0, False, False, ""
    for j in range(start, len(src)):
        ch = src[j]
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == quote:
                in_str = False
        elif ch in "\"'":
            in_str, quote = True, ch
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return src[start : j + 1]
    return None


def _decode(span: str) -> Any:
    """Strict JSON, then JSON without trailing commas, then a Python literal (single quotes).

    Nesting too deep for the parser (a hostile or runaway reply) is unreadable, not a crash.
    """
    for attempt in (span, re.sub(r",\s*([}\]])", r"\1", span)):
        try:
            return json.loads(attempt)
        except (json.JSONDecodeError, RecursionError):
            pass
    try:
        return ast.literal_eval(span)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return None


MAX_REPLY_CHARS = 50_000  # a judge reply is a few hundred tokens; far longer is not a verdict
MAX_OBJECT_STARTS = 200  # '{' positions tried per source: bounds the work on brace-heavy junk


def _objects(text: str) -> tuple[list[dict], bool]:
    """Dicts found in ``text`` (fenced blocks first) and whether some ``{`` never closed.

    A decoded object is skipped over whole (its inner objects are its fields), so
    nested replies cost one pass, and at most ``MAX_OBJECT_STARTS`` openings are tried.
    """
    found, cut_off = [], False
    for src in [m.group(1) for m in _FENCE.finditer(text)] + [text]:
        i, tried = src.find("{"), 0
        while i != -1 and tried < MAX_OBJECT_STARTS:
            tried += 1
            span = _balanced(src, i)
            obj = None if span is None else _decode(span)
            cut_off |= span is None
            if isinstance(obj, dict):
                found.append(obj)
                i = src.find("{", i + len(span))
            else:
                i = src.find("{", i + 1)
    return found, cut_off


def _fields(obj: dict) -> dict[str, Any]:
    """Known fields of a verdict object under canonical names; one level of nesting is flattened."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = _norm_key(key)
        if name is None and isinstance(value, dict):
            for k2, v2 in value.items():
                if (n2 := _norm_key(k2)) and n2 not in out:
                    out[n2] = v2
        elif name and name not in out:
            out[name] = value
    return out


def _number(name: str, value: Any, depth: int = 0) -> tuple[float, float | None]:
    """(value, explicit scale or None) for a score field; ``{"score": x}`` is read one level deep, no further."""
    if isinstance(value, dict):
        inner = next((value[k] for k in ("score", "value", "rating") if k in value), None)
        if inner is None or depth:
            raise VerdictError(f"{name} is an object without a score: {_short(value)}")
        return _number(name, inner, depth + 1)
    if isinstance(value, bool):
        raise VerdictError(f"{name}={value!r} is a boolean, not a score")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise VerdictError(f"{name}={value!r} is not a finite number")
        return float(value), None
    if isinstance(value, str) and (m := _NUM.match(value)):
        scale = 100.0 if m.group(2) == "%" else float(m.group(3) or m.group(4) or 0) or None
        return float(m.group(1)), scale
    raise VerdictError(f"{name}={_short(value)} is not a number")


def _scores(raw: dict[str, Any]) -> dict[str, float]:
    """Scores on [0, 1]. A 0–10 or 0–100 reply is rescaled only when the numbers leave no doubt."""
    parsed = {name: _number(name, raw[name]) for name in METRICS}
    out, implicit = {}, {}
    for name, (v, scale) in parsed.items():
        if scale is not None:
            if not 0 <= v <= scale:
                raise VerdictError(f"{name}={v:g}/{scale:g} is out of range")
            out[name] = v / scale
        else:
            implicit[name] = v
    if implicit:
        vals = list(implicit.values())
        if min(vals) < 0:
            raise VerdictError("negative score: " + ", ".join(f"{k}={v:g}" for k, v in implicit.items()))
        top = max(vals)
        if top <= 1:
            scale = 1.0
        elif any(0 < v < 1 for v in vals):
            raise VerdictError("scores mix scales: " + ", ".join(f"{k}={v:g}" for k, v in implicit.items()))
        elif top <= 10:
            scale = 10.0
        elif top <= 100:
            scale = 100.0
        else:
            raise VerdictError("score above 100: " + ", ".join(f"{k}={v:g}" for k, v in implicit.items()))
        out.update({k: v / scale for k, v in implicit.items()})
    return {k: round(v, 6) for k, v in out.items()}


def _safety(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        words = re.findall(r"[a-z0-9]+", value.lower())
        if words[:2] in (["not", "safe"], ["not", "pass"]):
            return False
        if words and words[0] in _PASS:
            return True
        if words and words[0] in _FAIL:
            return False
    raise VerdictError(f"safety={_short(value)} is not pass/fail")


def parse_verdict(text: str) -> Verdict:
    """Read a judge reply into a :class:`Verdict`, or raise :class:`VerdictError` saying what is wrong.

    Accepts a bare or fenced JSON object with prose around it, trailing commas,
    single quotes, nested ``{"scores": {...}}``, key aliases ("persona_adherence",
    "rationale", …), "8/10" / "80%" strings, and plain "Adherence: 0.8" lines.
    """
    _check_size(text)
    objects, cut_off = _objects(text)
    candidates = [_fields(o) for o in objects]
    best = max(candidates, key=lambda f: sum(k in f for k in _REQUIRED), default={})
    if not any(k in best for k in _REQUIRED):
        if cut_off:  # never read numbers out of a truncated object: "0.7" may have been "0.75"
            raise VerdictError("JSON object is cut off (unterminated '{'; the reply may need more tokens)")
        kv = {}
        for m in _KV.finditer(text):
            kv.setdefault(_norm_key(m.group(1)), m.group(2).strip())
        if all(k in kv for k in _REQUIRED):
            if m := _KV_REASON.search(text):
                kv["reasoning"] = m.group(1).strip()
            best = kv
        elif objects:
            keys = sorted({str(k) for o in objects for k in o})
            raise VerdictError(f"JSON has none of adherence/consistency/quality/safety (keys: {', '.join(keys)})")
        else:
            raise VerdictError("no JSON object in reply")
    missing = [k for k in _REQUIRED if best.get(k) is None]
    if missing:
        raise VerdictError(f"missing field(s): {', '.join(missing)}")
    scores = _scores(best)
    reasoning = best.get("reasoning")
    return Verdict(
        **scores, safety_pass=_safety(best["safety"]), reasoning="" if reasoning is None else str(reasoning).strip()
    )


# --- a single score ("score": x in [lo, hi]) --------------------------------------------------------

_SCORE_LABEL = re.compile(
    r"(?i)\bscore\b[\s\"'`*]*(?:[:=]|\bis\b|\bof\b)?[\s\"'`*]*([-+]?(?:\d+(?:\.\d*)?|\.\d+))(?![\d.]*\s*/)"
)
_BARE_NUMBER = re.compile(r"[\s\"'`*]*([-+]?(?:\d+(?:\.\d*)?|\.\d+))[\s\"'`*.]*")


def read_score(text: str, lo: float = -1.0, hi: float = 1.0) -> float:
    """The judge's score in [lo, hi], or :class:`VerdictError` saying why there is none.

    Read from, in order: a JSON object's ``score`` key, the number right after a
    ``score`` label ("Score: 0.4", "score -0.8", "the score is 0.5"), or a reply
    that is nothing but a number. Any other number in the prose ("In turn 1 …")
    is never taken for the score, and an out-of-range score is not clipped.
    """
    _check_size(text)
    objects, cut_off = _objects(text)
    for obj in objects:
        key = next((k for k in obj if isinstance(k, str) and k.strip().lower() == "score"), None)
        if key is not None:
            return _in_range(obj[key], lo, hi)
    if cut_off:  # never read numbers out of a truncated object: "0.5" may have been "0.55"
        raise VerdictError("JSON object is cut off (unterminated '{'; the reply may need more tokens)")
    if m := _SCORE_LABEL.search(text):
        return _in_range(float(m.group(1)), lo, hi)
    if m := _BARE_NUMBER.fullmatch(text):
        return _in_range(float(m.group(1)), lo, hi)
    raise VerdictError("no score: the reply has no JSON 'score' key and no 'score: <number>' label")


def parse_score(text: str, lo: float = -1.0, hi: float = 1.0) -> float | None:
    """:func:`read_score`, with None for a reply that holds no usable score (callers record it as failed)."""
    try:
        return read_score(text, lo, hi)
    except VerdictError:
        return None


def _in_range(value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise VerdictError(f"score={_short(value)} is not a number")
    if not math.isfinite(value) or not lo <= value <= hi:
        raise VerdictError(f"score={value!r} is outside [{lo:g}, {hi:g}]")
    return float(value)
