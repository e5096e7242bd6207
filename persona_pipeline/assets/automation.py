"""Sensors: new or changed input files trigger the assets that read them."""

import hashlib
from pathlib import Path

import dagster as dg

from ..settings import ratings_dir


def folder_state(folder: Path) -> str:
    """A fingerprint of every file (name, size, mtime) under ``folder``: changes when a file is added or edited."""
    if not folder.exists():
        return "absent"
    parts = sorted(f"{p.relative_to(folder)}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
                   for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def folder_sensor(name: str, folder, selection: dg.AssetSelection, description: str,
                  default_status=dg.DefaultSensorStatus.RUNNING) -> dg.SensorDefinition:
    """Materialise ``selection`` whenever the files under ``folder()`` change (one run per distinct state)."""

    @dg.sensor(name=name, asset_selection=selection, minimum_interval_seconds=30, description=description,
               default_status=default_status)
    def _sensor(context: dg.SensorEvaluationContext):
        state = folder_state(folder())
        if state == context.cursor:
            return dg.SkipReason(f"no change under {folder()}")
        context.update_cursor(state)
        if state == "absent":
            return dg.SkipReason(f"{folder()} does not exist")
        return dg.RunRequest(run_key=f"{name}:{state}")

    return _sensor


human_ratings_sensor = folder_sensor(
    "human_ratings_sensor", ratings_dir, dg.AssetSelection.assets("human_ratings"),
    "New rating files (served page or downloaded JSON) → re-ingest human_ratings and re-run the judge–human check.",
)
