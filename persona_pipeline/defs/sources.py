"""Input files as Dagster external assets whose data versions are content hashes.

Editing ``data_assets/personas/skeptic.yaml`` changes only the data version of
``persona_files[skeptic]``; Dagster then marks only ``synthetic_conversations[skeptic]``
(and what reads it) stale, and rematerialising the stale set redoes only that persona.
Observations are recorded by the ``persona_files_sensor`` (daemon / ``dagster dev``) or by
``persona-pipeline observe`` — no home-made cache decides what is stale.
"""

import hashlib

import dagster as dg

from persona_pipeline.defs.assets._common import persona_partitions
from persona_pipeline.settings import data_root

persona_files = dg.AssetSpec(
    "persona_files",
    partitions_def=persona_partitions,
    group_name="specs",
    kinds={"yaml"},
    description="The persona spec files in data_assets/personas/ (one partition per file), observed with a content hash "
    "as data version so an edit makes only that persona stale.",
)


def file_versions() -> dict[str, str]:
    """Persona id → sha256 of its spec file (the data version Dagster compares); editor lock files are no personas."""
    from persona_pipeline.loaders import persona_files

    return {p.stem: hashlib.sha256(p.read_bytes()).hexdigest()[:16] for p in persona_files(data_root() / "personas")}


def observations(versions: dict[str, str]) -> list[dg.AssetObservation]:
    return [
        dg.AssetObservation(
            asset_key="persona_files", partition=pid, tags={"dagster/data_version": v}, metadata={"sha256_16": v}
        )
        for pid, v in versions.items()
    ]


def observe(instance: dg.DagsterInstance) -> dict[str, str]:
    """Record the current file versions on ``instance`` (what the sensor does on each tick)."""
    versions = file_versions()
    for event in observations(versions):
        instance.report_runless_asset_event(event)
    return versions


def stale_partitions(instance: dg.DagsterInstance, defs: dg.Definitions, asset: str) -> list[str]:
    """Partitions of ``asset`` that Dagster considers stale or never materialised."""
    from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
    from dagster._core.loader import LoadingContextForTest

    graph = defs.resolve_asset_graph()
    resolver = CachingStaleStatusResolver(instance, graph, LoadingContextForTest(instance))
    key = dg.AssetKey(asset)
    keys = graph.get(key).partitions_def.get_partition_keys()
    return [k for k in keys if resolver.get_status(key, k) != StaleStatus.FRESH]


@dg.sensor(
    name="persona_files_sensor",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    asset_selection=dg.AssetSelection.assets("synthetic_conversations"),
    description="Observes data_assets/personas/ (*.yaml, *.json); an edited or new persona gets its dialogues regenerated "
    "(that partition only).",
)
def persona_files_sensor(context: dg.SensorEvaluationContext):
    import json

    versions = file_versions()
    if context.cursor is None:  # first tick: record the versions; only later edits trigger runs
        context.update_cursor(json.dumps(versions))
        return dg.SensorResult(asset_events=observations(versions))
    before = json.loads(context.cursor)
    changed = sorted(
        p for p, v in versions.items() if before.get(p) != v and p in persona_partitions.get_partition_keys()
    )
    context.update_cursor(json.dumps(versions))
    if not changed:
        return dg.SkipReason("no persona file changed")
    return dg.SensorResult(
        asset_events=observations({p: versions[p] for p in changed}),
        run_requests=[dg.RunRequest(run_key=f"persona:{p}:{versions[p]}", partition_key=p) for p in changed],
    )


def observe_report() -> dict:
    """What ``persona-pipeline observe`` prints: the recorded versions and the stale dialogue partitions."""
    from persona_pipeline.defs.definitions import defs

    with dg.DagsterInstance.get() as instance:
        versions = observe(instance)
        stale = stale_partitions(instance, defs, "synthetic_conversations")
    return {"persona_files": versions, "stale_synthetic_conversations": stale}
