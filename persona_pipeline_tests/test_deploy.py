"""The scale-out profile: executor choice, GPU pod tags and the files under deploy/.

Nothing here talks to a cluster: the instance file is checked against Dagster's
own schema and the classes it names, the manifests against what the pipeline
needs (GPU, LoRA rank, env-var names the resources accept).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from persona_pipeline.defs import executors
from persona_pipeline.defs.executors import GPU_RESOURCE, K8S_CONFIG_TAG, STEP_K8S_CONFIG, executor_from_env, gpu_tags

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
RL_ADAPTER_RANK = 48  # the GRPO adapter is the SFT adapter (r 32) concatenated with a r 16 delta


def load(name: str):
    return yaml.safe_load((DEPLOY / name).read_text(encoding="utf-8"))


def load_all(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text(encoding="utf-8")) if d]


def user_deployment() -> dict:
    (dep,) = load("values.yaml")["dagster-user-deployments"]["deployments"]
    return dep


def deployment_env() -> dict[str, str]:
    return {e["name"]: e["value"] for e in user_deployment()["env"]}


# -- executors -----------------------------------------------------------------


def test_k8s_executor_from_env_in_a_fresh_process():
    pytest.importorskip("dagster_k8s", reason="dagster-k8s is not installed (pip install 'dagster-k8s==0.29.*')")
    code = (
        "import json\n"
        "from persona_pipeline.defs.executors import executor_from_env\n"
        "from dagster_k8s import k8s_job_executor\n"
        "e = executor_from_env()\n"
        "cfg = e.config_schema.resolve_config({})\n"
        "print(json.dumps({'name': e.name, 'same_fn': e.executor_creation_fn is k8s_job_executor.executor_creation_fn,\n"
        "                  'ok': cfg.success, 'config': cfg.value['config'] if cfg.success else str(cfg.errors)}))\n"
    )
    env = {**os.environ, "PERSONA_PIPELINE_EXECUTOR": "k8s", "PERSONA_PIPELINE_MAX_CONCURRENT": "3"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["name"] == "k8s" and got["same_fn"], got
    assert got["ok"], got["config"]  # the configured values pass dagster-k8s's own executor schema
    cfg = got["config"]
    assert cfg["max_concurrent"] == 3
    assert cfg["enable_owner_references"] is True
    assert cfg["step_k8s_config"]["container_config"] == STEP_K8S_CONFIG["container_config"]


def test_executor_choice(monkeypatch):
    monkeypatch.delenv("PERSONA_PIPELINE_EXECUTOR", raising=False)
    monkeypatch.delenv("PERSONA_PIPELINE_MAX_CONCURRENT", raising=False)
    assert executor_from_env() is dg.in_process_executor
    monkeypatch.setenv("PERSONA_PIPELINE_EXECUTOR", "in-process")
    assert executor_from_env() is dg.in_process_executor
    monkeypatch.setenv("PERSONA_PIPELINE_EXECUTOR", "multiprocess")
    assert executor_from_env() is dg.multiprocess_executor
    monkeypatch.setenv("PERSONA_PIPELINE_MAX_CONCURRENT", "2")
    e = executor_from_env()
    assert e.name == "multiprocess"
    assert e.config_schema.resolve_config({}).value["config"]["max_concurrent"] == 2
    monkeypatch.setenv("PERSONA_PIPELINE_MAX_CONCURRENT", "two")
    with pytest.raises(ValueError, match="PERSONA_PIPELINE_MAX_CONCURRENT"):
        executor_from_env()
    monkeypatch.delenv("PERSONA_PIPELINE_MAX_CONCURRENT")
    monkeypatch.setenv("PERSONA_PIPELINE_EXECUTOR", "celery")
    with pytest.raises(ValueError, match="in_process.*multiprocess.*k8s"):
        executor_from_env()


def test_executors_module_does_not_import_dagster_k8s():
    code = (
        "import sys, persona_pipeline.defs.executors as e; e.executor_from_env(); print('dagster_k8s' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PERSONA_PIPELINE_EXECUTOR"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


# -- GPU pod tags --------------------------------------------------------------


def test_gpu_tags_shape():
    tags = gpu_tags(2)
    assert list(tags) == ["dagster-k8s/config"] == [K8S_CONFIG_TAG]
    resources = tags[K8S_CONFIG_TAG]["container_config"]["resources"]
    assert resources == {"limits": {GPU_RESOURCE: 2}, "requests": {GPU_RESOURCE: 2}}
    assert GPU_RESOURCE == "nvidia.com/gpu"
    assert gpu_tags()[K8S_CONFIG_TAG]["container_config"]["resources"]["limits"] == {"nvidia.com/gpu": 1}
    for bad in (0, -1, 1.5, True, "1"):
        with pytest.raises(ValueError):
            gpu_tags(bad)


def test_gpu_tags_reach_the_step_pod_spec():
    """Through dagster-k8s's own code path: op tag → validated config → merged with the
    executor's step config → the Kubernetes Job the step handler would create."""
    pytest.importorskip("dagster_k8s", reason="dagster-k8s is not installed")
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import (
        USER_DEFINED_K8S_CONFIG_KEY,
        DagsterK8sJobConfig,
        UserDefinedDagsterK8sConfig,
        construct_dagster_k8s_job,
        get_user_defined_k8s_config,
    )

    assert USER_DEFINED_K8S_CONFIG_KEY == K8S_CONFIG_TAG

    @dg.asset(pool="gpu", op_tags=gpu_tags(2))
    def gpu_asset() -> int:
        return 1

    op_tags = gpu_asset.op.tags  # dagster stores the dict as a JSON string
    user_config = get_user_defined_k8s_config(op_tags)  # raises if the tag fails dagster-k8s's schema
    context = K8sContainerContext(run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(STEP_K8S_CONFIG)).merge(
        K8sContainerContext(run_k8s_config=user_config)
    )
    job = construct_dagster_k8s_job(
        DagsterK8sJobConfig(
            job_image="persona-pipeline:test",
            dagster_home="/opt/dagster/dagster_home",
            instance_config_map="dagster-instance",
        ),
        ["dagster", "api", "execute_step"],
        "dagster-step-test",
        context.run_k8s_config,
    )
    pod = job.spec.template.spec
    resources = pod.containers[0].resources
    assert resources.limits[GPU_RESOURCE] == "2" and resources.requests[GPU_RESOURCE] == "2"
    assert resources.requests["cpu"] == "1" and resources.requests["memory"] == "4Gi"  # deep-merged, not replaced
    assert any(t.key == GPU_RESOURCE and t.effect == "NoSchedule" for t in pod.tolerations)

    @dg.asset
    def cpu_asset() -> int:
        return 1

    cpu_job = construct_dagster_k8s_job(
        DagsterK8sJobConfig(
            job_image="persona-pipeline:test",
            dagster_home="/opt/dagster/dagster_home",
            instance_config_map="dagster-instance",
        ),
        ["dagster"],
        "dagster-step-cpu",
        K8sContainerContext(run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(STEP_K8S_CONFIG))
        .merge(K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(cpu_asset.op.tags)))
        .run_k8s_config,
    )
    cpu_resources = cpu_job.spec.template.spec.containers[0].resources
    assert GPU_RESOURCE not in (cpu_resources.limits or {}) and GPU_RESOURCE not in (cpu_resources.requests or {})


# -- deploy/dagster.yaml -------------------------------------------------------


def test_instance_yaml_is_valid_dagster_instance_config(tmp_path, monkeypatch):
    pytest.importorskip("dagster_k8s", reason="dagster-k8s is not installed")
    pytest.importorskip("dagster_postgres", reason="dagster-postgres is not installed")
    import importlib

    from dagster._config import process_config, validate_config
    from dagster._core.instance.config import dagster_instance_config
    from dagster._core.instance.ref import InstanceRef
    from dagster_postgres import DagsterPostgresStorage
    from dagster_postgres.utils import pg_url_from_config

    shutil.copy(DEPLOY / "dagster.yaml", tmp_path / "dagster.yaml")
    config, custom_class = dagster_instance_config(str(tmp_path))  # raises DagsterInvalidConfigError if invalid
    assert custom_class is None
    assert config["telemetry"] == {"enabled": False}

    # the classes the instance would load, each with its config checked against the class's schema
    ref = InstanceRef.from_dir(str(tmp_path))
    loaded = {
        "storage": ref.storage_data,
        "run_storage": ref.run_storage_data,
        "event_log": ref.event_storage_data,
        "schedule": ref.schedule_storage_data,
        "run_launcher": ref.run_launcher_data,
        "run_coordinator": ref.run_coordinator_data,
    }
    for role, data in loaded.items():
        cls = getattr(importlib.import_module(data.module_name), data.class_name)
        result = validate_config(cls.config_type(), data.config_dict)
        assert result.success, (role, data.class_name, result.errors)
    assert (ref.storage_data.module_name, ref.storage_data.class_name) == ("dagster_postgres", "DagsterPostgresStorage")
    assert (ref.run_launcher_data.module_name, ref.run_launcher_data.class_name) == ("dagster_k8s", "K8sRunLauncher")
    assert ref.run_coordinator_data.class_name == "QueuedRunCoordinator"

    # credentials come from env vars only, never literal values
    pg = config["storage"]["postgres"]["postgres_db"]
    for key in ("username", "password", "hostname", "db_name"):
        assert isinstance(pg[key], dict) and set(pg[key]) == {"env"}, key
    for k, v in {
        "DAGSTER_PG_USERNAME": "u",
        "DAGSTER_PG_PASSWORD": "p@ss",
        "DAGSTER_PG_HOST": "db",
        "DAGSTER_PG_DB": "dagster",
    }.items():
        monkeypatch.setenv(k, v)
    resolved = process_config(DagsterPostgresStorage.config_type(), config["storage"]["postgres"])
    assert resolved.success, resolved.errors
    assert pg_url_from_config(resolved.value) == "postgresql://u:p%40ss@db:5432/dagster"

    # the gpu pool: one slot per GPU, enforced per step
    pools = config["concurrency"]["pools"]
    assert pools["default_limit"] >= 1 and pools["granularity"] == "op"


def test_instance_yaml_and_helm_values_agree():
    instance, values = load("dagster.yaml"), load("values.yaml")
    assert values["telemetry"]["enabled"] is False and instance["telemetry"]["enabled"] is False
    pools, runs = values["concurrency"]["pools"], values["concurrency"]["runs"]
    assert values["concurrency"]["enabled"] is True
    assert pools["defaultLimit"] == instance["concurrency"]["pools"]["default_limit"]
    assert pools["granularity"] == instance["concurrency"]["pools"]["granularity"]
    assert runs["maxConcurrentRuns"] == instance["concurrency"]["runs"]["max_concurrent_runs"]
    assert values["runLauncher"]["type"] == instance["run_launcher"]["class"] == "K8sRunLauncher"
    assert (
        values["dagsterDaemon"]["runCoordinator"]["type"]
        == instance["run_coordinator"]["class"]
        == "QueuedRunCoordinator"
    )
    launcher = instance["run_launcher"]["config"]
    assert launcher["postgres_password_secret"] == values["global"]["postgresqlSecretName"]
    assert launcher["service_account_name"] == values["global"]["serviceAccountName"]
    dep = user_deployment()
    assert [s["name"] for s in dep["envSecrets"]] == launcher["env_secrets"]
    assert (
        dep["volumes"][0]["persistentVolumeClaim"]["claimName"]
        == launcher["volumes"][0]["persistentVolumeClaim"]["claimName"]
    )
    assert (
        dep["volumeMounts"][0]["mountPath"]
        == launcher["volume_mounts"][0]["mount_path"]
        == deployment_env()["PERSONA_PIPELINE_HOME"]
    )


# -- deploy/values.yaml --------------------------------------------------------


def test_helm_values_user_code_and_env(monkeypatch):
    dep = user_deployment()
    assert dep["dagsterApiGrpcArgs"] == ["-m", "persona_pipeline.defs.definitions"]
    assert dep["includeConfigInLaunchedRuns"]["enabled"] is True  # env, secrets, volume reach run and step pods
    env = deployment_env()
    assert env["PERSONA_PIPELINE_EXECUTOR"] == "k8s"
    assert env["PERSONA_PIPELINE_PROFILE"] == "full"
    for role in ("TEACHER", "JUDGE"):
        assert env[f"PERSONA_{role}_KIND"] == "openai"
        assert env[f"PERSONA_{role}_BASE_URL"] == "http://vllm:8000/v1"
        assert env[f"PERSONA_{role}_MODEL"]
    # no secret values in the values file: keys arrive from a Secret referenced by name
    assert not [k for k in env if "KEY" in k and not k.endswith("_API_KEY_ENV")]
    assert {s["name"] for s in dep["envSecrets"]} == {"persona-pipeline-secrets"}
    assert "postgresqlPassword" not in values_postgres()

    # the env is exactly what the code reads: resources accept it, the profile exists
    from persona_pipeline.defs.resources import model_resource_from_env
    from persona_pipeline.settings import profile

    for k in [k for k in os.environ if k.startswith("PERSONA_")]:
        monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert profile().name == "full"
    for role in ("teacher", "assistant", "judge", "policy"):
        res = model_resource_from_env(role)  # raises on any PERSONA_<ROLE>_* name it does not know
        if role != "policy":
            assert res.kind == "openai" and res.base_url == "http://vllm:8000/v1"
            assert res.api_key_env in {"VLLM_API_KEY"}


def values_postgres() -> dict:
    return load("values.yaml")["postgresql"]


# -- deploy/vllm.yaml ----------------------------------------------------------


def test_vllm_manifest_requests_a_gpu_and_serves_our_adapters():
    docs = load_all("vllm.yaml")
    kinds = {d["kind"]: d for d in docs}
    assert {"Deployment", "Service", "PersistentVolumeClaim"} <= set(kinds)
    (container,) = kinds["Deployment"]["spec"]["template"]["spec"]["containers"]
    for part in ("requests", "limits"):
        assert int(container["resources"][part]["nvidia.com/gpu"]) >= 1
    argv = [str(a) for a in container.get("command", [])] + [str(a) for a in container["args"]]
    assert argv[:2] == ["vllm", "serve"]
    assert "meta-llama/Llama-3.1-8B-Instruct" in argv
    assert "--enable-lora" in argv

    def flag(name: str) -> str:
        for i, a in enumerate(argv):
            if a == name:
                return argv[i + 1]
            if a.startswith(name + "="):
                return a.split("=", 1)[1]
        raise AssertionError(f"{name} not in {argv}")

    assert int(flag("--max-lora-rank")) >= RL_ADAPTER_RANK
    # the Service is what PERSONA_<ROLE>_BASE_URL points at
    svc = kinds["Service"]
    assert svc["metadata"]["name"] == "vllm"
    assert any(p["port"] == 8000 for p in svc["spec"]["ports"])
    assert deployment_env()["PERSONA_JUDGE_MODEL"] in argv  # the served name is the model id
    # the API key comes from the Secret the pipeline also reads; never inline
    key_env = {e["name"]: e for e in container["env"]}["VLLM_API_KEY"]
    assert key_env["valueFrom"]["secretKeyRef"]["name"] == "persona-pipeline-secrets"
    # the shared artifacts volume is the one Dagster pods mount
    pvc = kinds["PersistentVolumeClaim"]
    assert pvc["metadata"]["name"] == user_deployment()["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]


# -- deploy/accelerate.yaml ----------------------------------------------------


def test_accelerate_config_is_multi_gpu_bf16():
    cfg = load("accelerate.yaml")
    assert cfg["distributed_type"] == "MULTI_GPU" and cfg["mixed_precision"] == "bf16"
    assert cfg["num_processes"] >= 2 and cfg["use_cpu"] is False
    config_args = pytest.importorskip("accelerate.commands.config.config_args")
    parsed = config_args.load_config_from_file(str(DEPLOY / "accelerate.yaml"))  # accelerate's own loader
    assert parsed.distributed_type.value == "MULTI_GPU" and parsed.mixed_precision == "bf16"


def test_deploy_readme_names_the_real_files_and_env_vars():
    text = (DEPLOY / "README.md").read_text(encoding="utf-8")
    for needle in (
        "helm",
        "deploy/values.yaml",
        "deploy/vllm.yaml",
        "deploy/accelerate.yaml",
        "accelerate launch",
        "PERSONA_PIPELINE_EXECUTOR",
        "gpu_tags",
        "persona-pipeline-secrets",
        "dagster-postgresql-secret",
    ):
        assert needle in text, needle
    assert executors.EXECUTOR_ENV in text
