"""Statistics for the evaluation stage: summaries, bootstrap intervals, method-vs-baseline tests.

Everything here takes plain sequences (``None`` and NaN are treated as missing
and dropped, booleans count as 0/1) and is deterministic given ``seed``.

Choice of test. Judge scores are bounded, heavily tied (judges like round
numbers such as 0.7 or 0.8) and often come from a handful of items per
persona. The leaderboard reports a *difference of means*, so the p-value comes
from a permutation test of that same statistic: shuffle method/baseline labels
(unpaired) or flip the sign of each within-item difference (paired). It assumes
only exchangeability under the null, is exact when the number of permutations
is small enough to enumerate, and has no trouble with ties. Mann–Whitney and
Wilcoxon test a different null (stochastic ordering / symmetric median) and
fall back to normal approximations with tie corrections exactly where judge
data live, so they would not match the reported effect.

Confidence intervals are percentile bootstraps: resample items (paired) or
each group on its own (unpaired). Multiple comparisons are Holm-corrected
(step-down, controls the family-wise error rate without independence
assumptions).

Turns of one dialogue are not independent (the same history, the same
topic), so the leaderboard resamples *dialogues*: with a ``cluster_key``,
method and baseline are matched on (dialogue, turn), each dialogue contributes
one mean within-dialogue difference, and the bootstrap and the sign-flip
permutation run over those. Below ``min_n`` dialogues no comparison is called
significant: the row says how many there were instead.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

Values = Iterable[float | int | bool | None]


# --- basics -------------------------------------------------------------------------------


def clean(values: Values) -> np.ndarray:
    """Float array with ``None``/NaN removed (booleans become 0/1)."""
    out = [float(v) for v in values if v is not None]
    arr = np.asarray(out, dtype=float)
    return arr[~np.isnan(arr)]


def mean(values: Values) -> float:
    x = clean(values)
    return float(x.mean()) if x.size else math.nan


def std(values: Values, ddof: int = 1) -> float:
    """Sample standard deviation (NaN when there are not more than ``ddof`` values)."""
    x = clean(values)
    return float(x.std(ddof=ddof)) if x.size > ddof else math.nan


def bootstrap_ci(
    values: Values,
    confidence: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    statistic: Callable[..., Any] = np.mean,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` (which must accept ``axis=``).

    One value gives a degenerate interval at that value; none gives (NaN, NaN).
    """
    x = clean(values)
    if x.size == 0:
        return math.nan, math.nan
    if x.size == 1:
        v = float(statistic(x, axis=0))
        return v, v
    rng = np.random.default_rng(seed)
    boots = statistic(x[rng.integers(0, x.size, size=(n_boot, x.size))], axis=1)
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(boots, [tail, 100 - tail])
    return float(lo), float(hi)


# --- method vs baseline -------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """``method − baseline`` on the mean, with its bootstrap CI and permutation p-value."""

    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    n_method: int
    n_baseline: int
    paired: bool
    test: str

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _mean_axis(x, axis):
    return np.mean(x, axis=axis)


def _diff_axis(x, y, axis):
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def _pairs(a: Sequence, b: Sequence) -> tuple[np.ndarray, np.ndarray]:
    if len(a) != len(b):
        raise ValueError(f"paired comparison needs equal lengths, got {len(a)} and {len(b)}")
    keep = [(float(x), float(y)) for x, y in zip(a, b) if x is not None and y is not None]
    arr = np.asarray(keep, dtype=float).reshape(-1, 2)
    arr = arr[~np.isnan(arr).any(axis=1)]
    return arr[:, 0], arr[:, 1]


def compare(
    method: Values,
    baseline: Values,
    paired: bool = False,
    confidence: float = 0.95,
    n_boot: int = 2000,
    n_perm: int = 10000,
    seed: int = 0,
) -> Comparison:
    """Compare a method's scores with a baseline's (see the module docstring for the test).

    ``paired=True`` means position i of both lists is the same item; pairs with
    a missing side are dropped. Fewer than two values on either side gives NaN
    statistics rather than a misleading p-value.
    """
    if paired:
        a, b = _pairs(list(method), list(baseline))
        test = "paired sign-flip permutation"
    else:
        a, b = clean(method), clean(baseline)
        test = "two-sample permutation"
    nan = Comparison(math.nan, math.nan, math.nan, math.nan, a.size, b.size, paired, test)
    if a.size < 2 or b.size < 2:
        return nan if a.size == 0 or b.size == 0 else dataclasses.replace(nan, diff=float(a.mean() - b.mean()))
    rng = np.random.default_rng(seed)
    tail = (1 - confidence) / 2 * 100
    if paired:
        d = a - b
        diff = float(d.mean())
        lo, hi = bootstrap_ci(d, confidence, n_boot, seed)
        if np.all(d == 0):
            p = 1.0
        else:
            res = sps.permutation_test(
                (d,),
                _mean_axis,
                permutation_type="samples",
                vectorized=True,
                n_resamples=n_perm,
                alternative="two-sided",
                rng=rng,
            )
            p = float(res.pvalue)
    else:
        diff = float(a.mean() - b.mean())
        boots = a[rng.integers(0, a.size, size=(n_boot, a.size))].mean(axis=1) - b[
            rng.integers(0, b.size, size=(n_boot, b.size))
        ].mean(axis=1)
        lo, hi = (float(v) for v in np.percentile(boots, [tail, 100 - tail]))
        if np.ptp(np.concatenate([a, b])) == 0:
            p = 1.0
        else:
            res = sps.permutation_test(
                (a, b),
                _diff_axis,
                permutation_type="independent",
                vectorized=True,
                n_resamples=n_perm,
                alternative="two-sided",
                rng=rng,
            )
            p = float(res.pvalue)
    return Comparison(diff, float(lo), float(hi), min(1.0, p), int(a.size), int(b.size), paired, test)


def cluster_means(values: Mapping[tuple, float]) -> dict[Any, float]:
    """Mean per cluster of values keyed (cluster, item)."""
    groups: dict[Any, list[float]] = {}
    for (cluster, _), v in values.items():
        groups.setdefault(cluster, []).append(v)
    return {c: float(np.mean(v)) for c, v in groups.items()}


def paired_by_cluster(
    method: Mapping[tuple, float],
    baseline: Mapping[tuple, float],
    confidence: float = 0.95,
    n_boot: int = 2000,
    n_perm: int = 10000,
    seed: int = 0,
) -> Comparison:
    """``method − baseline`` matched on (cluster, item) keys, with the *cluster* as the unit of resampling.

    Only keys present on both sides count; each cluster (a dialogue) gives the mean of its
    matched within-item differences; CI and p come from the bootstrap and the paired sign-flip
    permutation over clusters (``n_method`` = ``n_baseline`` = clusters used).
    """
    shared = {k: method[k] - baseline[k] for k in method if k in baseline}
    d = cluster_means(shared)
    c = compare(list(d.values()), [0.0] * len(d), True, confidence, n_boot, n_perm, seed)
    return dataclasses.replace(c, test="paired sign-flip permutation over dialogues")


def holm(pvalues: Sequence[float | None]) -> list[float]:
    """Holm step-down adjusted p-values, in input order; missing/NaN stay NaN and do not count."""
    p = np.asarray([math.nan if v is None else float(v) for v in pvalues], dtype=float)
    out = np.full(p.shape, math.nan)
    idx = np.flatnonzero(~np.isnan(p))
    m = idx.size
    if m == 0:
        return out.tolist()
    order = idx[np.argsort(p[idx], kind="stable")]
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(1.0, adjusted)
    return out.tolist()


# --- leaderboard --------------------------------------------------------------------------


def _as_dict(record: Any) -> dict:
    if isinstance(record, Mapping):
        return dict(record)
    if hasattr(record, "model_dump"):
        return record.model_dump()
    if dataclasses.is_dataclass(record):
        return dataclasses.asdict(record)
    raise TypeError(f"leaderboard record must be a mapping, pydantic model or dataclass, got {type(record).__name__}")


def _metric_value(rec: dict, metric: str, where: str) -> float | None:
    v = rec.get(metric)
    if v is None:
        return None
    if isinstance(v, (bool, int, float, np.integer, np.floating)):
        f = float(v)
        return None if math.isnan(f) else f
    raise ValueError(f"{where}: field {metric!r} must be a number, a boolean or empty, got {v!r}")


def _seed_for(seed: int, *parts: Any) -> int:
    return (seed ^ zlib.crc32(repr(parts).encode())) & 0x7FFFFFFF


def leaderboard_rows(
    records: Iterable[Any],
    group_keys: Sequence[str] = ("persona_id", "method"),
    metrics: Sequence[str] = ("adherence", "consistency", "quality", "safety_pass"),
    baseline_method: str | None = "prompt",
    method_key: str = "method",
    pair_key: str | None = None,
    alpha: float = 0.05,
    confidence: float = 0.95,
    n_boot: int = 2000,
    n_perm: int = 10000,
    seed: int = 0,
    cluster_key: str | None = None,
    min_n: int = 2,
) -> list[dict]:
    """One flat row per group: ``<metric>_{mean,std,ci_low,ci_high,n}`` and, against the baseline
    group (same keys, ``method_key`` = ``baseline_method``), ``<metric>_{diff,diff_ci_low,
    diff_ci_high,p,p_holm,significant}``.

    Records are dicts, pydantic models or dataclasses; a missing/None metric
    (e.g. a failed judgement) is left out of that metric only, and
    ``n_records`` keeps the total so failures stay visible. With ``pair_key``
    (e.g. ``"item_id"``: the same prompt answered by every method) the
    comparison is paired on the keys both groups share; otherwise it is
    unpaired. Holm's correction runs over every comparison in this call; a
    comparison is ``significant`` when its Holm-adjusted p < ``alpha``. Every
    row has the same columns (None where a value does not apply), so the rows
    go straight into one table.

    With ``cluster_key`` (e.g. the dialogue: persona × topic, the same for every
    method) and ``pair_key`` (e.g. the turn), values are matched on (cluster, pair),
    the mean's CI bootstraps cluster means and the comparison is
    :func:`paired_by_cluster`; ``<metric>_n_units`` counts clusters (else values).
    A comparison on fewer than ``min_n`` units is never ``significant`` (None) and
    ``<metric>_verdict`` says why; otherwise it reads "significant" / "not significant".
    """
    if cluster_key and not pair_key:
        raise ValueError("cluster_key needs pair_key: the item matched within a cluster")
    group_keys = tuple(group_keys)
    groups: dict[tuple, list[dict]] = {}
    for i, raw in enumerate(records):
        rec = _as_dict(raw)
        missing = [k for k in group_keys if k not in rec]
        if missing:
            raise ValueError(f"leaderboard record {i}: missing group field(s) {missing}")
        rec["_where"] = f"leaderboard record {i}"
        groups.setdefault(tuple(rec[k] for k in group_keys), []).append(rec)

    def values(recs: list[dict], metric: str) -> dict[Any, float]:
        out: dict[Any, float] = {}
        for j, rec in enumerate(recs):
            v = _metric_value(rec, metric, rec["_where"])
            if v is None:
                continue
            key = rec.get(pair_key) if pair_key else j
            if cluster_key:
                key = (rec.get(cluster_key), key)
            if pair_key and key in out:
                raise ValueError(f"{rec['_where']}: {pair_key}={key!r} occurs twice in one group; it cannot pair items")
            out[key] = v
        return out

    compare_on = method_key in group_keys and baseline_method is not None
    m_pos = group_keys.index(method_key) if compare_on else -1
    rows, pending = [], []  # pending: (row, metric, p)
    for key in sorted(groups, key=lambda k: tuple(str(x) for x in k)):
        recs = groups[key]
        row: dict[str, Any] = dict(zip(group_keys, key))
        row["n_records"] = len(recs)
        base_key = key[:m_pos] + (baseline_method,) + key[m_pos + 1 :] if compare_on else None
        has_base = compare_on and key[m_pos] != baseline_method and base_key in groups
        for metric in metrics:
            vals = values(recs, metric)
            x = list(vals.values())
            units = list(cluster_means(vals).values()) if cluster_key else x
            s = _seed_for(seed, key, metric)
            lo, hi = bootstrap_ci(units, confidence, n_boot, s)
            row.update(
                {
                    f"{metric}_mean": mean(units),
                    f"{metric}_std": std(x),
                    f"{metric}_ci_low": lo,
                    f"{metric}_ci_high": hi,
                    f"{metric}_n": len(x),
                    f"{metric}_n_units": len(units),
                }
            )
            cmp_cols = dict.fromkeys(
                ("diff", "diff_ci_low", "diff_ci_high", "p", "p_holm", "significant", "n_compared", "verdict")
            )
            if has_base:
                bvals = values(groups[base_key], metric)
                if cluster_key:
                    c = paired_by_cluster(vals, bvals, confidence, n_boot, n_perm, s)
                elif pair_key:
                    shared = [k for k in vals if k in bvals]
                    c = compare(
                        [vals[k] for k in shared], [bvals[k] for k in shared], True, confidence, n_boot, n_perm, s
                    )
                else:
                    c = compare(x, list(bvals.values()), False, confidence, n_boot, n_perm, s)
                cmp_cols.update(
                    diff=c.diff, diff_ci_low=c.ci_low, diff_ci_high=c.ci_high, p=c.p_value, n_compared=c.n_method
                )
                pending.append((row, metric, c.p_value))
            row.update({f"{metric}_{k}": v for k, v in cmp_cols.items()})
        rows.append(row)
    unit = "dialogues" if cluster_key else "items"
    for (row, metric, _), p_adj in zip(pending, holm([p for *_, p in pending])):
        row[f"{metric}_p_holm"] = p_adj
        n = row[f"{metric}_n_compared"]
        if n < min_n:
            row[f"{metric}_significant"] = None
            row[f"{metric}_verdict"] = f"n={n} {unit} < {min_n}: too few to test"
        else:
            row[f"{metric}_significant"] = bool(p_adj < alpha) if not math.isnan(p_adj) else False
            row[f"{metric}_verdict"] = "significant" if row[f"{metric}_significant"] else "not significant"
    return rows


# --- agreement and trends -----------------------------------------------------------------


def _corr(fn, x: np.ndarray, y: np.ndarray) -> float:
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(fn(x, y)[0])


def agreement(a: Sequence[float | None], b: Sequence[float | None], tolerance: float = 0.2) -> dict:
    """How well two raters agree on the same items (same order): Spearman, Pearson, share within
    ``tolerance``, mean absolute difference, and ``n`` pairs used (pairs with a missing side dropped).

    Correlations are NaN with fewer than 3 pairs or when one side is constant.
    """
    x, y = _pairs(list(a), list(b))
    n = int(x.size)
    return {
        "n": n,
        "spearman": _corr(sps.spearmanr, x, y),
        "pearson": _corr(sps.pearsonr, x, y),
        "agreement_rate": float(np.mean(np.abs(x - y) <= tolerance + 1e-12)) if n else math.nan,
        "mean_abs_diff": float(np.mean(np.abs(x - y))) if n else math.nan,
        "tolerance": tolerance,
    }


def rescale(values: Sequence[float | None], lo: float, hi: float) -> list[float | None]:
    """Map ratings on [lo, hi] (e.g. a 1–5 Likert) onto [0, 1]; None stays None."""
    out = []
    for v in values:
        if v is None:
            out.append(None)
            continue
        if not lo <= v <= hi:
            raise ValueError(f"rating {v!r} is outside the scale {lo}..{hi}")
        out.append((float(v) - lo) / (hi - lo))
    return out


def judge_human_agreement(
    judge: Sequence[float | None],
    human: Sequence[float | None],
    human_scale: tuple[float, float] = (1, 5),
    tolerance: float = 0.25,
) -> dict:
    """Agreement of 0–1 judge scores with human ratings on ``human_scale``, rescaled to 0–1.

    The default tolerance of 0.25 is one step of a 1–5 scale after rescaling.
    """
    return agreement(judge, rescale(human, *human_scale), tolerance)


def ols_slope(x: Sequence[float], y: Sequence[float]) -> dict:
    """Least-squares line y = intercept + slope·x with the slope's standard error.

    ``slope``/``intercept`` are NaN with fewer than 2 points or a constant x;
    ``stderr`` needs at least 3 points. ``df`` = n − 2.
    """
    xs, ys = _pairs(list(x), list(y))
    n = int(xs.size)
    out = {"slope": math.nan, "intercept": math.nan, "stderr": math.nan, "n": n, "df": max(0, n - 2)}
    if n < 2:
        return out
    sxx = float(((xs - xs.mean()) ** 2).sum())
    if sxx == 0:
        return out
    slope = float(((xs - xs.mean()) * (ys - ys.mean())).sum() / sxx)
    intercept = float(ys.mean() - slope * xs.mean())
    out.update(slope=slope, intercept=intercept)
    if n >= 3:
        resid = ys - (intercept + slope * xs)
        out["stderr"] = float(math.sqrt(float((resid**2).sum()) / (n - 2) / sxx))
    return out


def rounded(x, nd: int = 4) -> float | None:
    """``x`` rounded for metadata; None stays None and NaN becomes None (JSON has no NaN)."""
    if x is None or math.isnan(float(x)):
        return None
    return round(float(x), nd)
