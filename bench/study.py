"""The study: every asset under the ``study`` profile, then the table of shapes with CIs and n.

Runs ``persona-pipeline materialize --profile study --select '*'`` on a fresh home and Dagster
instance (the converted base model is reused), prints the per-step breakdown, and prints the
shape table the report holds (``persona_pipeline.study``) as Markdown for ``bench/RESULTS.md``.
``--home`` only prints the table of a finished run.

    .venv/bin/python bench/study.py                 # ≤ 60 min on 2 CPU cores
    .venv/bin/python bench/study.py --home /tmp/persona-study-xxxx/home
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo import print_breakdown, run

COLUMNS = ("shape", "trait", "measure", "estimate", "ci", "n", "verdict", "note")


def markdown(shapes: list[dict]) -> str:
    """The shape rows as a Markdown table (estimate with its 95 % CI in one column)."""
    fmt = lambda x: "–" if x is None else f"{x:+.3f}"
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in shapes:
        ci = f"[{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]" if r["ci_low"] is not None else "–"
        cells = [r["shape"], r["trait"], r["measure"], fmt(r["estimate"]), ci, f"{r['n']} {r['unit']}"]
        lines.append("| " + " | ".join(map(str, cells + [r["verdict"], r["note"]])) + " |")
    return "\n".join(lines)


def show(home: Path) -> None:
    report = json.loads((home / "assets" / "eval_report.json").read_text())
    print(f"trait judge: {report.get('trait_judge')}")
    print(markdown(report["shapes"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", help="only print the table of this finished run's artifacts home")
    args = ap.parse_args()
    if args.home:
        show(Path(args.home))
        return
    home, dagster_home, wall = run("study")
    print_breakdown(str(dagster_home), wall, 60)
    print(f"home: {home}")
    show(home)


if __name__ == "__main__":
    main()
