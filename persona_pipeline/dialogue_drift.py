"""Does a persona drift as the dialogue grows? Adherence per turn index and the
least-squares slope over turns, with a verdict that needs the whole confidence
interval of the slope below zero — so noise on a short test set is not called drift."""

from __future__ import annotations

import math
from collections.abc import Iterable

from pydantic import BaseModel

from . import stats
from .eval_judges import JudgeScore


class DriftReport(BaseModel):
    """Adherence over turns: mean per turn index and the OLS slope fitted on every point."""

    per_turn_mean: dict[int, float]
    per_turn_n: dict[int, int]
    slope: float | None
    intercept: float | None
    stderr: float | None
    n: int
    n_missing: int
    drifting: bool


def consistency_drift(points: Iterable[tuple[int, float | None]], confidence: float = 0.95) -> DriftReport:
    """``points``: (turn index, adherence) pairs pooled over dialogues; None scores are counted as missing.

    The slope is fitted on the individual points (not the per-turn means, so
    turns with more dialogues weigh more). A negative slope means adherence
    falls as the dialogue goes on; ``drifting`` is True when the whole
    ``confidence`` interval of the slope lies below zero.
    """
    pts = list(points)
    used = [(int(t), float(s)) for t, s in pts if s is not None and not math.isnan(s)]
    per: dict[int, list[float]] = {}
    for t, s in used:
        per.setdefault(t, []).append(s)
    fit = stats.ols_slope([t for t, _ in used], [s for _, s in used])
    drifting = False
    if not math.isnan(fit["stderr"]) and fit["df"] > 0:
        from scipy import stats as sps

        upper = fit["slope"] + sps.t.ppf(1 - (1 - confidence) / 2, fit["df"]) * fit["stderr"]
        drifting = bool(upper < 0)
    return DriftReport(
        per_turn_mean={t: float(sum(v) / len(v)) for t, v in sorted(per.items())},
        per_turn_n={t: len(v) for t, v in sorted(per.items())},
        slope=_finite(fit["slope"]),
        intercept=_finite(fit["intercept"]),
        stderr=_finite(fit["stderr"]),
        n=len(used),
        n_missing=len(pts) - len(used),
        drifting=drifting,
    )


def _finite(v: float) -> float | None:
    return None if math.isnan(v) else v


def drift_points(scores: Iterable[JudgeScore], metric: str = "adherence") -> list[tuple[int, float | None]]:
    """(turn_index, metric) from judge scores that carry a turn index (failed ones give None)."""
    return [(s.turn_index, getattr(s, metric)) for s in scores if s.turn_index is not None]


def projection_slope(rows: list[dict]) -> float | None:
    """Least-squares slope of ``axis_projection`` per persona turn (None with fewer than two turns)."""
    import numpy as np

    pts = [(r["turn"], r["axis_projection"]) for r in rows]
    return round(float(np.polyfit(*zip(*pts), 1)[0]), 4) if len({t for t, _ in pts}) > 1 else None
