"""Benchmark: rerun after editing one persona spec vs a full rebuild of the persona dialogues.

Both sides run the real CLI on a throwaway instance with a copy of data_assets/:
  full rebuild  — `synthetic_conversations` for every persona on a fresh artifacts home;
  incremental   — edit one spec, `persona-pipeline observe` (Dagster data versions say
                  which partitions are stale), rematerialise only those.

    .venv/bin/python bench/incremental.py [--turns 8] [--tokens 16]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def env_for(tmp: Path, data: Path) -> dict:
    home, dagster_home = tmp / "home", tmp / "dagster_home"
    (home / "models").mkdir(parents=True, exist_ok=True)
    dagster_home.mkdir(exist_ok=True)
    shutil.copy(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    base = Path(os.environ.get("PERSONA_PIPELINE_HOME", REPO / ".persona_home")) / "models" / "base"
    if base.exists():
        (home / "models" / "base").symlink_to(base.resolve())
    return {
        **os.environ,
        "PERSONA_PIPELINE_HOME": str(home),
        "DAGSTER_HOME": str(dagster_home),
        "PERSONA_PIPELINE_DATA": str(data),
        "PERSONA_PIPELINE_PROFILE": "ci",
        "HF_HUB_OFFLINE": "1",
    }


def run(cmd: list[str], env: dict) -> str:
    return subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, text=True).stdout


def materialize(env: dict, partitions: list[str], cfg: str) -> float:
    start = time.perf_counter()
    run(
        [
            str(BIN / "dagster"),
            "asset",
            "materialize",
            "-m",
            "persona_pipeline.defs.definitions",
            "--select",
            "synthetic_conversations",
            "--partition-range",
            f"{partitions[0]}...{partitions[-1]}",
            "--config-json",
            cfg,
        ],
        env,
    )
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=16)
    args = ap.parse_args()
    cfg = json.dumps(
        {
            "ops": {
                "synthetic_conversations": {
                    "config": {
                        "min_turns": args.turns,
                        "max_turns": args.turns,
                        "persona_max_new_tokens": args.tokens,
                        "assistant_max_new_tokens": args.tokens,
                        "max_line_retries": 0,
                    }
                }
            }
        }
    )
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        data = tmp / "data_assets"
        shutil.copytree(REPO / "data_assets", data)
        env = env_for(tmp, data)
        personas = sorted(p.stem for p in (data / "personas").glob("*.yaml"))
        run(
            [
                str(BIN / "dagster"),
                "asset",
                "materialize",
                "-m",
                "persona_pipeline.defs.definitions",
                "--select",
                "topics",
            ],
            env,
        )
        run([str(BIN / "persona-pipeline"), "observe"], env)
        full = materialize(env, personas, cfg)
        spec = data / "personas" / f"{personas[0]}.yaml"
        raw = yaml.safe_load(spec.read_text())
        raw["description"] = "(edited) " + raw["description"]
        spec.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
        stale = json.loads(run([str(BIN / "persona-pipeline"), "observe"], env))["stale_synthetic_conversations"]
        incremental = materialize(env, stale, cfg)
    print(f"full rebuild ({len(personas)} personas): {full:.1f} s")
    print(f"after editing {personas[0]}: stale = {stale}; rerun {incremental:.1f} s")
    print(f"incremental vs full: **{full / incremental:.2f}×** faster (CLI start-up included on both sides)")


if __name__ == "__main__":
    main()
