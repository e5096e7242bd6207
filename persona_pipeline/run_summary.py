"""What a newcomer sees while ``make demo`` runs, and the short summary it ends with.

Each stage runs the Dagster CLI in a subprocess. Its output is kept whole in a log
file; the terminal gets a filtered view: a line per finished or failed step, the
pipeline's own progress and warnings, and everything it does not recognise (so the
user's own errors and tracebacks always show). Only noise that is not the user's
business is dropped, matched precisely: library deprecation / beta / supersession
warnings raised inside site-packages (UserWarnings there included: advice to us, not
to the user), bitsandbytes' offline kernel notice, weight-loading and trainer progress
bars, the trainers' printed log dicts (their curves are in the asset metadata), and
Dagster's per-event DEBUG lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .layout import layout

# "…/site-packages/x.py:12: BetaWarning: text" — the warnings module's first line; its second is indented source
LIB_WARNING = re.compile(
    r"^\S*site-packages/\S+\.py:\d+: "
    r"(SupersessionWarning|BetaWarning|PreviewWarning|ExperimentalWarning|FutureWarning|DeprecationWarning|"
    r"PendingDeprecationWarning|UserWarning): "
)
NOISE = [
    re.compile(r"Failed to load CPU gemm_4bit_forward"),  # bitsandbytes asks the kernels hub; offline by design
    re.compile(r"^\s*(Loading weights|Loading checkpoint shards|Writing model shards|Fetching \d+ files)\b.*\|"),
    re.compile(r"\d+%\|[^|]*\| *\d+/\d+ \["),  # a trainer's progress bar (the curve is in the asset metadata)
    re.compile(r"^\{'(loss|eval_loss|train_runtime)': "),  # a trainer's printed log dict (same: in the metadata)
]
# "2026-… - dagster - DEBUG - JOB - run - pid - [step -] EVENT - message"; an asset's own log has no EVENT
# (an asset's own context.log line carries no pid)
DAGSTER = re.compile(r"^\S+ \S+ \+\d{4} - dagster - (\w+) - [^ ]+ - [0-9a-f-]{36} - (?:\d+ - )?(.*)$")
EVENT = re.compile(r"^(?:(\S+) - )?([A-Z][A-Z_]+) - (.*)$")


@dataclass
class StageView:
    """Turns one stage's raw output lines into what the terminal shows (``None``: hidden)."""

    dropped: int = 0
    failed_steps: list[str] = field(default_factory=list)
    _skip_source_line: bool = False

    def show(self, line: str) -> str | None:
        line = line.rstrip("\n")
        if self._skip_source_line:
            self._skip_source_line = False
            if line.startswith("  "):
                return self._drop()
        if LIB_WARNING.match(line):
            self._skip_source_line = True
            return self._drop()
        if any(p.search(line) for p in NOISE):
            return self._drop()
        m = DAGSTER.match(line)
        if not m:
            return line  # not ours to judge: tracebacks, prints, the user's own errors
        level, rest = m.groups()
        step, event, msg = _parse(rest)
        if event == "STEP_SUCCESS":
            took = re.search(r" in ([\d.]+m?s)", msg)
            return f"  ✓ {step}" + (f" ({took.group(1)})" if took else "")
        if event in ("STEP_FAILURE", "RUN_FAILURE"):
            self.failed_steps.append(step or "run")
            return f"  ✗ {step or 'run'}: {msg}"
        if level in ("INFO", "WARNING", "ERROR", "CRITICAL") and event not in ("ASSET_CHECK_EVALUATION",):
            return f"    {step + ': ' if step else ''}{msg}" if level == "INFO" else f"  {level.lower()}: {msg}"
        return self._drop()

    def _drop(self) -> None:
        self.dropped += 1


def _parse(rest: str) -> tuple[str | None, str | None, str]:
    """(step, EVENT, message) of a Dagster line's tail; an asset's own log line has no EVENT."""
    e = EVENT.match(rest)
    if e:
        return e.group(1), e.group(2), e.group(3)
    step, sep, msg = rest.partition(" - ")
    return (step, None, msg) if sep else (None, None, rest)


# The summary leads with an evaluator no method was optimised on: the character n-gram
# persona-identification classifier (trained on gold and spec lines only). The primary
# ``adherence`` judge is the GRPO reward / CMA-ES fitness with a local judge, so it is shown
# only when no independent evaluator ran, and then flagged.
INDEPENDENT = "eval_persona_id_ngram"


def leaderboard_top(home: Path, k: int = 5) -> tuple[str, list[dict]]:
    """(metric, overall rows by that metric's mean, best first): the independent evaluator when it ran."""
    from .storage import read_records

    path = layout(home).assets / "leaderboard.parquet"
    if not path.exists():
        return "adherence", []
    rows = [r for r in read_records(path) if r.get("persona_id") == "ALL"]
    metric = INDEPENDENT if any(r.get(f"{INDEPENDENT}_mean") is not None for r in rows) else "adherence"
    rows = [r for r in rows if r.get(f"{metric}_mean") is not None]
    return metric, sorted(rows, key=lambda r: -r[f"{metric}_mean"])[:k]


def _leaderboard_lines(metric: str, top: list[dict]) -> list[str]:
    title = (
        "persona-id classifier score (independent: no method was optimised on it)"
        if metric == INDEPENDENT
        else "primary judge adherence (NOT independent: marked rows were optimised on it)"
    )
    out = [f"leaderboard (all personas, {title}; mean [95% CI], Δ vs prompt-only, n dialogues):"]
    for r in top:
        ci = f"[{_num(r.get(f'{metric}_ci_low'))}, {_num(r.get(f'{metric}_ci_high'))}]"
        diff = "" if r.get(f"{metric}_diff") is None else f"  Δ {_num(r[f'{metric}_diff'])}"
        verdict = f" ({r[f'{metric}_verdict']})" if diff and r.get(f"{metric}_verdict") else ""
        n = r.get(f"{metric}_n_units") or r.get(f"{metric}_n")
        circular = metric != INDEPENDENT and r.get("optimised_on")
        line = f"  {r['method']:<10} {_num(r[f'{metric}_mean'])} {ci}{diff}{verdict}"
        out.append(line + (f"  n={n}" if n else "") + ("  [optimised on this judge]" if circular else ""))
    return out


def _num(x, nd: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{nd}f}"


def summary(home: Path, checks: list[dict], seconds: float, n_assets: int, log_dir: Path) -> str:
    """The closing lines: report, leaderboard top rows, checks that did not pass, and how to open the UI."""
    out = [f"materialised {n_assets} assets in {seconds:.0f} s (full logs: {log_dir})", ""]
    report = layout(home).eval_report
    out.append(f"report:      {report.as_uri() if report.exists() else '(not built in this selection)'}")
    metric, top = leaderboard_top(home)
    if top:
        out += _leaderboard_lines(metric, top)
    bad = [c for c in checks if c["status"] != "passed"]
    if not checks:
        out.append("checks:      none evaluated in this selection")
    elif not bad:
        out.append(f"checks:      all {len(checks)} passed")
    else:
        out.append(f"checks:      {len(checks) - len(bad)}/{len(checks)} passed; these did not:")
        order = {"failed": 0, "errored": 1, "warned": 2}
        for c in sorted(bad, key=lambda c: (order.get(c["status"], 3), c["name"])):
            out.append(f"  {c['status']:<8} {c['asset']}.{c['name']}" + (f": {c['detail']}" if c.get("detail") else ""))
    out += ["", "next:        make dev   (the Dagster UI: lineage, metadata, plots, checks)"]
    return "\n".join(out)
