"""The materialised leaderboard under each evaluator, as Markdown for bench/RESULTS.md.

Reads ``leaderboard`` and ``judge_scores`` from an artifacts home (default: the
active ``PERSONA_PIPELINE_HOME``, e.g. after ``make demo``) and prints the same
tables the ``leaderboard`` asset puts in its metadata: every method under every
evaluator with its CI over dialogues, the paired Δ vs prompt-only, n, the verdict,
and whether the method was optimised against that evaluator; then how far the
evaluators agree on the ranking of methods. No model is loaded.

    .venv/bin/python bench/evaluators.py [--home .persona_home]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def markdown(rows: list[dict]) -> str:
    if not rows:
        return "_empty_"
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join("" if r[c] is None else str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", help="artifacts root (default: PERSONA_PIPELINE_HOME or ./.persona_home)")
    args = ap.parse_args()
    if args.home:
        os.environ["PERSONA_PIPELINE_HOME"] = args.home
    import pyarrow.parquet as pq

    from persona_pipeline import leaderboard as lb
    from persona_pipeline.settings import home

    assets = Path(home()) / "assets"
    board = pq.read_table(assets / "leaderboard.parquet").to_pylist()
    scores = pq.read_table(assets / "judge_scores.parquet", columns=["persona_id_classes"]).to_pylist()
    overall = [r for r in board if r["persona_id"] == "ALL" and r.get("adherence_n") is not None]
    classes = scores[0]["persona_id_classes"] if scores else None
    print("## Leaderboard under each evaluator (ALL personas)\n")
    print(markdown(lb.by_evaluator(overall, classes)))
    print("\n## Do the evaluators rank the methods alike?\n")
    print(markdown(lb.method_rank_agreement(overall)))


if __name__ == "__main__":
    main()
