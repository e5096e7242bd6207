"""Benchmark: the whole demo DAG on this machine — wall time and a per-asset breakdown.

Runs what `make demo` runs (`persona-pipeline materialize --select '*'`) on a fresh
artifacts home and Dagster instance (the converted base model is reused), then reads
every step's start/end from the instance. `--report DAGSTER_HOME` only prints the
breakdown of runs already in that instance.

    .venv/bin/python bench/demo.py [--profile demo]
    .venv/bin/python bench/demo.py --report /tmp/demo/dh
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def breakdown(dagster_home: str) -> list[tuple[str, float]]:
    """(step, seconds) for every step of every run in the instance, in start order."""
    os.environ["DAGSTER_HOME"] = dagster_home
    import dagster as dg

    rows = []
    with dg.DagsterInstance.get() as instance:
        for run in instance.get_runs():
            for st in instance.get_run_step_stats(run.run_id):
                if st.start_time and st.end_time:
                    rows.append((st.start_time, st.step_key, st.end_time - st.start_time))
    return [(k, s) for _, k, s in sorted(rows)]


def run(profile: str) -> tuple[Path, Path, float]:
    """Materialise every asset under ``profile`` on a fresh home and instance: (home, dagster home, wall s)."""
    tmp = Path(tempfile.mkdtemp(prefix=f"persona-{profile}-"))
    dagster_home, home = tmp / "dagster_home", tmp / "home"
    (home / "models").mkdir(parents=True)
    dagster_home.mkdir()
    shutil.copy(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    base = Path(os.environ.get("PERSONA_PIPELINE_HOME", REPO / ".persona_home")) / "models" / "base"
    if base.exists():
        (home / "models" / "base").symlink_to(base.resolve())
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "PERSONA_PIPELINE_HOME": str(home),
        "PERSONA_PIPELINE_PROFILE": profile,
        "HF_HUB_OFFLINE": "1",
        "PERSONA_PIPELINE_RATINGS": str(tmp / "ratings"),
    }
    start = time.perf_counter()
    subprocess.run(
        [str(Path(sys.executable).parent / "persona-pipeline"), "materialize", "--select", "*"],
        cwd=REPO,
        env=env,
        check=True,
    )
    return home, dagster_home, time.perf_counter() - start


def print_breakdown(dagster_home: str, wall: float | None, target_min: int) -> None:
    steps = breakdown(dagster_home)
    for key, seconds in sorted(steps, key=lambda r: -r[1]):
        if seconds >= 1:
            print(f"{key:45s} {seconds:8.1f} s")
    total = sum(s for _, s in steps)
    print(
        f"sum of step times: {total / 60:.1f} min"
        + (f"; wall time: {wall / 60:.1f} min (target ≤ {target_min})" if wall else "")
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--report", help="only print the breakdown of this DAGSTER_HOME")
    args = ap.parse_args()
    if args.report:
        print_breakdown(args.report, None, 10)
        return
    _, dagster_home, wall = run(args.profile)
    print_breakdown(str(dagster_home), wall, 10)


if __name__ == "__main__":
    main()
