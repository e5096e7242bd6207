"""Sensors: new or changed input files trigger the assets that read them."""

import hashlib
import itertools
from pathlib import Path

import dagster as dg

from persona_pipeline.settings import data_root, ratings_dir


def folder_state(folder: Path) -> str:
    """A fingerprint of every file (name, size, mtime) under ``folder``: changes when a file is added or edited.

    Hidden and editor lock/backup files (``.#x.jsonl``, ``x~``) are left out: saving in an editor
    must not trigger a run on a half-edited file, and a dangling lock symlink must not break the tick.
    """
    from persona_pipeline.loaders import is_ignorable

    if not folder.exists():
        return "absent"
    parts = sorted(
        f"{p.relative_to(folder)}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
        for p in folder.rglob("*")
        if not any(is_ignorable(q) for q in (p, *p.relative_to(folder).parents) if q.name) and p.is_file()
    )
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def folder_sensor(
    name: str, folder, selection: dg.AssetSelection, description: str, default_status=dg.DefaultSensorStatus.RUNNING
) -> dg.SensorDefinition:
    """Materialise ``selection`` whenever the files under ``folder()`` change (one run per distinct state).

    One run holds one partition set, so the run stops where the graph enters a
    partitioned asset; what lies beyond shows as stale in the UI (and is rebuilt by the jobs).
    """

    @dg.sensor(
        name=name,
        asset_selection=selection,
        minimum_interval_seconds=30,
        description=description,
        default_status=default_status,
    )
    def _sensor(context: dg.SensorEvaluationContext):
        state = folder_state(folder())
        if state == context.cursor:
            return dg.SkipReason(f"no change under {folder()}")
        first = context.cursor is None
        context.update_cursor(state)
        if first:  # the first tick records what is there; only later changes trigger runs
            return dg.SkipReason(f"baseline recorded for {folder()}")
        if state == "absent":
            return dg.SkipReason(f"{folder()} does not exist")
        keys = unpartitioned_reach(context.repository_def.asset_graph, selection)
        return dg.RunRequest(run_key=f"{name}:{state}", asset_selection=keys)

    return _sensor


def unpartitioned_reach(graph, selection: dg.AssetSelection) -> list[dg.AssetKey]:
    """The part of ``selection`` (a root and its downstream) one run can refresh: unpartitioned assets
    none of whose affected parents was left out (so nothing runs on top of a stale partitioned input)."""
    affected = set(selection.resolve(graph))
    kept: list[dg.AssetKey] = []
    for key in graph.toposorted_asset_keys:
        node = graph.get(key)
        if key not in affected or node.partitions_def is not None or not node.is_executable:
            continue
        if all(p in kept for p in node.parent_keys if p in affected):
            kept.append(key)
    return kept


hitl_files_sensor = folder_sensor(
    "hitl_files_sensor",
    lambda: data_root() / "hitl",
    dg.AssetSelection.assets("hitl_conversations").downstream(),
    "New or edited HITL sessions → hitl_conversations and the unpartitioned assets downstream (curation, pairs, adapters…).",
)

survey_files_sensor = folder_sensor(
    "survey_files_sensor",
    lambda: data_root() / "surveys",
    dg.AssetSelection.assets("surveys").downstream(),
    "New or edited surveys → surveys and the unpartitioned assets downstream (survey conversations, training, replication…).",
)

source_conversations_sensor = folder_sensor(
    "source_conversations_sensor",
    lambda: data_root() / "conversations",
    dg.AssetSelection.assets("conversations").downstream(),
    "New or edited dialogues of your own (data_assets/conversations/*.jsonl, the pipeline doc's layout) → "
    "conversations and the unpartitioned assets downstream.",
)

human_ratings_sensor = folder_sensor(
    "human_ratings_sensor",
    ratings_dir,
    dg.AssetSelection.assets("human_ratings"),
    "New rating files (served page or downloaded JSON) → re-ingest human_ratings and re-run the judge–human check.",
)


# ------------------------------------------------------------------ jobs and schedules
#
# A Dagster job can hold assets of only ONE partition set (plus unpartitioned ones), so
# the representations stage is four jobs, one per partition set, and "everything" is a
# chain: each job's success launches the next (run-status sensors), which is exactly the
# order `persona-pipeline materialize` uses.

GROUPS = ("specs", "data", "models", "representations", "evaluation")


def _job(name: str, selection: dg.AssetSelection, description: str, partitioned: bool = False):
    return dg.define_asset_job(
        name,
        selection=selection,
        description=description,
        tags={"persona-pipeline/job": name, "persona-pipeline/partitioned": str(partitioned)},
    )


def _keys(*names: str) -> dg.AssetSelection:
    return dg.AssetSelection.assets(*names)


JOBS = [
    _job(
        "data",
        dg.AssetSelection.groups("specs", "data"),
        "Specs and the data stage (teacher dialogues per persona).",
        True,
    ),
    _job("train", dg.AssetSelection.groups("models"), "Base model, SFT adapter, GRPO adapter."),
    _job("representations_roles", _keys("role_transcripts"), "Role-play transcripts, per role.", True),
    _job("representations_traits", _keys("trait_responses"), "Contrastive trait answers, per trait.", True),
    _job(
        "representations_checkpoints",
        _keys("activations", "persona_space"),
        "Activations per checkpoint, persona space.",
        True,
    ),
    _job(
        "representations_vectors",
        _keys(
            "persona_vectors",
            "steering_sweep",
            "trait_interference",
            "finetuning_shift",
            "projection_predicts_score",
            "sft_pairs_screen",
            "behavioural_interference",
            "trait_finetune_sets",
            "trait_finetunes",
        ),
        "Persona vectors, steering sweeps, interference (cosine and behavioural), fine-tuning shift, projection vs "
        "trait score, the SFT-set projection screen, per trait; trait fine-tunes (with / without preventative "
        "steering) and Assistant-Axis capping.",
        True,
    ),
    _job("representations_personas", _keys("cmaes_steering"), "CMA-ES steering per persona.", True),
    _job(
        "evaluate",
        dg.AssetSelection.groups("evaluation"),
        "Judged test dialogues, drift monitor, survey replication, leaderboard, report, human eval.",
    ),
]
EVERYTHING = [j.name for j in JOBS]  # dependency order


def _partition_run(job_name: str, defs_partitions) -> list[dg.RunRequest]:
    """One run over all partitions (single-run backfill policy): the first..last range as tags."""
    keys = defs_partitions.get_partition_keys() if defs_partitions else []
    tags = (
        {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]} if keys else {}
    )
    return [dg.RunRequest(job_name=job_name, tags={**tags, "persona-pipeline/chain": "everything"})]


def _chain_sensor(upstream, downstream, partitions) -> dg.RunStatusSensorDefinition:
    @dg.run_status_sensor(
        name=f"after_{upstream.name}_run_{downstream.name}",
        run_status=dg.DagsterRunStatus.SUCCESS,
        monitored_jobs=[upstream],
        request_job=downstream,
        minimum_interval_seconds=30,
        description=f"Weekly full rebuild: when `{upstream.name}` succeeds, run `{downstream.name}`.",
    )
    def _sensor(context: dg.RunStatusSensorContext):
        if context.dagster_run.tags.get("persona-pipeline/chain") != "everything":
            return dg.SkipReason(f"{upstream.name} ran outside the full-rebuild chain")
        return _partition_run(downstream.name, partitions)

    return _sensor


def _partitions_of(name: str):
    from persona_pipeline.defs.assets._common import (
        checkpoint_partitions,
        persona_partitions,
        role_partitions,
        trait_partitions,
    )

    return {
        "data": persona_partitions,
        "representations_roles": role_partitions,
        "representations_traits": trait_partitions,
        "representations_checkpoints": checkpoint_partitions,
        "representations_vectors": trait_partitions,
        "representations_personas": persona_partitions,
    }.get(name)


def schedules_enabled() -> dg.DefaultScheduleStatus:
    """Schedules run only where ``PERSONA_PIPELINE_SCHEDULES=on`` (a dev laptop should not retrain nightly)."""
    import os

    on = os.environ.get("PERSONA_PIPELINE_SCHEDULES", "off").lower() in ("on", "1", "true")
    return dg.DefaultScheduleStatus.RUNNING if on else dg.DefaultScheduleStatus.STOPPED


def automation() -> tuple[list, list, list]:
    """(jobs, schedules, sensors): nightly evaluation refresh, weekly full rebuild chained job by job."""
    by_name = {j.name: j for j in JOBS}
    chain = [_chain_sensor(by_name[a], by_name[b], _partitions_of(b)) for a, b in itertools.pairwise(EVERYTHING)]
    nightly = dg.ScheduleDefinition(
        name="nightly_evaluation",
        job=by_name["evaluate"],
        cron_schedule="0 2 * * *",
        default_status=schedules_enabled(),
        description="Re-judge, re-score and rebuild the leaderboard and report every night.",
    )

    @dg.schedule(
        name="weekly_full_rebuild",
        job=by_name["data"],
        cron_schedule="0 3 * * 0",
        default_status=schedules_enabled(),
        description="Every Sunday: data → train → representations → evaluate, each job started by the previous one's success.",
    )
    def weekly(_context):
        return _partition_run("data", _partitions_of("data"))

    return (
        JOBS,
        [nightly, weekly],
        [human_ratings_sensor, hitl_files_sensor, survey_files_sensor, source_conversations_sensor, *chain],
    )
