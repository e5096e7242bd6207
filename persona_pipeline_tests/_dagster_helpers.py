"""Helpers for tests that drive the real Dagster CLI on a throwaway instance."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DAGSTER = str(Path(sys.executable).parent / "dagster")


def isolated_env(tmp: Path, shared_home: Path, profile: str = "ci") -> dict[str, str]:
    """A temp DAGSTER_HOME and artifact home that reuse the machine's converted base model."""
    dagster_home, home = tmp / "dagster_home", tmp / "persona_home"
    dagster_home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    (home / "models").mkdir(parents=True, exist_ok=True)
    base = shared_home / "models" / "base"
    if base.exists() and not (home / "models" / "base").exists():
        (home / "models" / "base").symlink_to(base)
    return {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "PERSONA_PIPELINE_HOME": str(home),
        "PERSONA_PIPELINE_PROFILE": profile,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


SMALL = {
    "personas": ("skeptic", "student"),
    "roles": ("default", "pirate", "therapist", "scientist"),
    "traits": ("humorous", "formal"),
}


def small_data(tmp: Path) -> Path:
    """A copy of data_assets/ with a few personas, roles and traits: every code path, CI-sized."""
    dest = tmp / "data_assets"
    shutil.copytree(REPO / "data_assets", dest)
    for folder, keep in SMALL.items():
        for path in (dest / folder).glob("*.yaml"):
            if path.stem not in keep and path.stem != "questions":
                path.unlink()
    for path in (dest / "hitl").glob("*.jsonl"):  # gold sessions of the kept personas only
        lines = [
            x for x in path.read_text().splitlines() if x.strip() and json.loads(x)["persona_id"] in SMALL["personas"]
        ]
        path.write_text("\n".join(lines) + "\n")
    return dest


def run_pipeline(env: dict, select: str = "*", timeout: int = 2400) -> subprocess.CompletedProcess:
    """``persona-pipeline materialize`` (what ``make demo`` runs): one CLI run per partition set."""
    return run_cli(
        [str(Path(sys.executable).parent / "persona-pipeline"), "materialize", "--select", select], env, timeout
    )


def persona_range() -> str:
    from persona_pipeline.defs.assets._common import persona_partitions

    keys = persona_partitions.get_partition_keys()
    return f"{keys[0]}...{keys[-1]}"


def materialize_cmd(select: str, partition_range: str | None = None) -> list[str]:
    cmd = [DAGSTER, "asset", "materialize", "-m", "persona_pipeline.defs.definitions", "--select", select]
    return cmd + (["--partition-range", partition_range] if partition_range else [])


def run_cli(cmd: list[str], env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}"
    return proc


def check_results(env: dict) -> dict[str, bool]:
    """{check name: passed} for the latest evaluation of every check, read from the instance."""
    from dagster import DagsterInstance

    from persona_pipeline.defs.definitions import defs

    old = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
    try:
        with DagsterInstance.get() as instance:
            keys = list(defs.resolve_asset_graph().asset_check_keys)
            latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(keys)
            out = {}
            for key, rec in latest.items():
                evaluation = rec.event.dagster_event.event_specific_data if rec.event else None
                out[key.name] = bool(evaluation and evaluation.passed)
            return out
    finally:
        if old is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = old
