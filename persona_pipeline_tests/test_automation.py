"""Jobs, schedules and sensors: what runs when, evaluated with Dagster's own contexts."""

import json

import dagster as dg
import pytest

from persona_pipeline.defs.definitions import defs


def test_jobs_named_for_what_people_run_and_each_fits_one_partition_set():
    names = {j.name for j in defs.jobs}
    assert {
        "data",
        "train",
        "evaluate",
        "representations_roles",
        "representations_traits",
        "representations_checkpoints",
        "representations_vectors",
        "representations_personas",
    } <= names
    covered = set()
    for name in names:
        job = defs.resolve_job_def(name)  # resolving fails if a job mixed partition sets
        covered |= set(job.asset_layer.executable_asset_keys)
    graph = defs.resolve_asset_graph()
    assert covered == {k for k in graph.get_all_asset_keys() if graph.get(k).is_executable}  # together: everything


def test_schedules_are_off_unless_enabled_by_config(monkeypatch):
    from persona_pipeline.defs import automation

    sched = {s.name: s for s in defs.schedules}
    assert set(sched) == {"nightly_evaluation", "weekly_full_rebuild"}
    assert all(s.default_status == dg.DefaultScheduleStatus.STOPPED for s in sched.values())
    monkeypatch.setenv("PERSONA_PIPELINE_SCHEDULES", "on")
    assert automation.schedules_enabled() == dg.DefaultScheduleStatus.RUNNING
    request = sched["weekly_full_rebuild"].evaluate_tick(dg.build_schedule_context()).run_requests[0]
    assert request.tags["persona-pipeline/chain"] == "everything"
    assert request.tags["dagster/asset_partition_range_start"] == "anxious"


def test_ratings_sensor_fires_once_per_new_state_of_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("PERSONA_PIPELINE_RATINGS", str(tmp_path))
    sensor = next(s for s in defs.sensors if s.name == "human_ratings_sensor")
    with dg.instance_for_test() as instance:
        ctx = dg.build_sensor_context(instance=instance, definitions=defs)
        first = sensor.evaluate_tick(ctx)
        assert not first.run_requests and first.cursor  # the first tick only records a baseline
        again = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=first.cursor, definitions=defs))
        assert not again.run_requests  # nothing new
        (tmp_path / "r1.json").write_text(json.dumps({"ratings": []}))
        new = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=first.cursor, definitions=defs))
        assert len(new.run_requests) == 1 and new.cursor != first.cursor
        assert new.run_requests[0].asset_selection == [dg.AssetKey("human_ratings")]


@pytest.mark.parametrize("chain_tag, fires", [("everything", True), (None, False)])
def test_the_full_rebuild_chain_only_follows_its_own_runs(chain_tag, fires):
    sensor = next(s for s in defs.sensors if s.name == "after_train_run_representations_roles")
    tags = {"persona-pipeline/chain": chain_tag} if chain_tag else {}
    with dg.instance_for_test() as instance:
        run = instance.create_run_for_job(defs.resolve_job_def("train"), tags=tags)
        event = dg.DagsterEvent(event_type_value="PIPELINE_SUCCESS", job_name="train")
        ctx = dg.build_run_status_sensor_context(
            sensor_name=sensor.name, dagster_event=event, dagster_instance=instance, dagster_run=run
        )
        result = sensor(ctx)
    if fires:
        assert result[0].job_name == "representations_roles"
        assert result[0].tags["dagster/asset_partition_range_start"] == "conspiracy_theorist"
    else:
        assert isinstance(result, dg.SkipReason)


def test_materialize_plan_is_printed_without_running(capsys):
    from persona_pipeline.cli import main

    assert main(["materialize", "--dry-run", "--select", "persona_vectors*"]) == 0
    err = capsys.readouterr().err
    assert "stage 1: persona_vectors" in err and "eval_report" in err


@pytest.mark.parametrize(
    "sensor_name, root", [("hitl_files_sensor", "hitl_conversations"), ("survey_files_sensor", "surveys")]
)
def test_data_folder_sensors_request_exactly_what_one_run_can_refresh(sensor_name, root):
    """The root and its downstream, stopping where a partitioned asset (or anything above one) begins."""
    sensor = next(s for s in defs.sensors if s.name == sensor_name)
    graph = defs.resolve_asset_graph()
    with dg.instance_for_test() as instance:
        request = sensor.evaluate_tick(
            dg.build_sensor_context(instance=instance, definitions=defs, cursor="old")
        ).run_requests[0]
    keys = {k.to_user_string() for k in request.asset_selection}
    assert root in keys and {"conversations", "sft_pairs", "sft_adapter", "rl_adapter"} <= keys
    assert not keys & {"activations", "persona_vectors", "judge_scores", "eval_report"}  # beyond partitioned stages
    assert all(graph.get(dg.AssetKey(k)).partitions_def is None for k in keys)
    downstream = {k.to_user_string() for k in dg.AssetSelection.assets(root).downstream().resolve(graph)}
    assert keys <= downstream


def test_every_asset_says_what_it_is():
    """Description, kinds and a group for every asset: what the UI shows people first."""
    specs = list(defs.resolve_all_asset_specs())
    assert len(specs) >= 29
    bad = [s.key.to_user_string() for s in specs if not (s.description and s.kinds and s.group_name)]
    assert not bad, bad
    assert {s.group_name for s in specs} == {"specs", "data", "models", "representations", "evaluation"}


def test_persona_sensor_observes_versions_and_requests_only_edited_personas(tmp_path, monkeypatch):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(defs_data_root() / "personas", data / "personas")
    monkeypatch.setenv("PERSONA_PIPELINE_DATA", str(data))
    sensor = next(s for s in defs.sensors if s.name == "persona_files_sensor")
    with dg.instance_for_test() as instance:
        first = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, definitions=defs))
        assert not first.run_requests and len(first.asset_events) == len(list((data / "personas").glob("*.yaml")))
        spec = data / "personas" / "parent.yaml"
        spec.write_text(spec.read_text() + "\n# edited\n")
        second = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=first.cursor, definitions=defs))
    assert [r.partition_key for r in second.run_requests] == ["parent"]
    assert [e.partition for e in second.asset_events] == ["parent"]


def defs_data_root():
    from persona_pipeline.settings import data_root

    return data_root()


@pytest.mark.parametrize(
    "job, first, last",
    [
        ("data", "persona_specs", "sft_pairs"),
        ("representations", "role_transcripts", "cmaes_steering"),
        ("everything", "base_model", "eval_report"),
    ],
)
def test_named_jobs_plan_their_stages(capsys, job, first, last):
    """`materialize --job NAME` — what people run, by name — plans one run per partition set, in order."""
    from persona_pipeline.cli import main

    assert main(["materialize", "--job", job, "--profile", "ci", "--dry-run"]) == 0
    stages = [line for line in capsys.readouterr().err.splitlines() if line.startswith("stage ")]
    assert stages[0].startswith("stage 1: ") and first in stages[0] and last in stages[-1]
    if job == "representations":  # four partition sets and no asset from another group
        assert len(stages) == 5 and not any(k in "".join(stages) for k in ("sft_adapter", "judge_scores"))
