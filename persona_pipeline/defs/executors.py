"""Which Dagster executor runs the steps, and the pod spec GPU steps get.

Dagster's own executors, chosen by ``PERSONA_PIPELINE_EXECUTOR``:

- ``in_process`` (default): every step in one process, no start-up cost per
  step; right for a laptop and the test suite.
- ``multiprocess``: one process per step on this machine.
- ``k8s``: one Kubernetes Job (pod) per step via ``dagster-k8s``; steps that
  carry :func:`gpu_tags` get GPU pods. ``dagster-k8s`` is imported only here.

``PERSONA_PIPELINE_MAX_CONCURRENT`` (optional, an int) caps the steps running
at once within one run for ``multiprocess`` and ``k8s``; across runs, GPU
steps are bounded by the instance's ``gpu`` concurrency pool.
"""

from __future__ import annotations

import os

import dagster as dg

EXECUTOR_ENV = "PERSONA_PIPELINE_EXECUTOR"
MAX_CONCURRENT_ENV = "PERSONA_PIPELINE_MAX_CONCURRENT"
EXECUTORS = ("in_process", "multiprocess", "k8s")

K8S_CONFIG_TAG = "dagster-k8s/config"  # dagster_k8s.job.USER_DEFINED_K8S_CONFIG_KEY
GPU_RESOURCE = "nvidia.com/gpu"  # the NVIDIA device plugin's extended resource

# Every step pod (CPU steps included) asks for this much; GPU steps add their
# GPUs on top (dagster-k8s deep-merges op tags over this config).
STEP_K8S_CONFIG = {
    "container_config": {
        "resources": {"requests": {"cpu": "1", "memory": "4Gi"}},
    },
}


def _max_concurrent() -> int | None:
    raw = os.environ.get(MAX_CONCURRENT_ENV, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{MAX_CONCURRENT_ENV}={raw!r} is not an integer") from None
    if value < 1:
        raise ValueError(f"{MAX_CONCURRENT_ENV}={raw!r} must be ≥ 1")
    return value


def k8s_executor() -> dg.ExecutorDefinition:
    """``dagster_k8s.k8s_job_executor``: each step runs as its own Kubernetes Job.

    Image, namespace, env, secrets and volumes come from the K8sRunLauncher and
    the user-code deployment (the Helm chart passes them on to launched runs);
    this adds default step requests, and owner references so step Jobs are
    garbage-collected with their run pod.
    """
    try:
        from dagster_k8s import k8s_job_executor
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"{EXECUTOR_ENV}=k8s needs the dagster-k8s package: pip install 'dagster-k8s==0.29.*'") from e
    config: dict = {"step_k8s_config": STEP_K8S_CONFIG, "enable_owner_references": True}
    if (n := _max_concurrent()) is not None:
        config["max_concurrent"] = n
    return k8s_job_executor.configured(config, name="k8s")


def executor_from_env() -> dg.ExecutorDefinition:
    """The executor named by ``PERSONA_PIPELINE_EXECUTOR`` (default ``in_process``)."""
    name = os.environ.get(EXECUTOR_ENV, "").strip().lower().replace("-", "_") or "in_process"
    if name == "in_process":
        return dg.in_process_executor
    if name == "multiprocess":
        n = _max_concurrent()
        return (
            dg.multiprocess_executor
            if n is None
            else dg.multiprocess_executor.configured({"max_concurrent": n}, name="multiprocess")
        )
    if name == "k8s":
        return k8s_executor()
    raise ValueError(f"{EXECUTOR_ENV}={os.environ[EXECUTOR_ENV]!r} is not one of {list(EXECUTORS)}")


def gpu_tags(n: int = 1) -> dict:
    """Op tags for a step that needs ``n`` GPUs when it runs as a pod (``k8s`` executor).

    Use as ``@dg.asset(pool="gpu", op_tags=gpu_tags())``. Other executors ignore
    the tag. Requests equal limits (Kubernetes requires that for GPUs), and the
    pod tolerates the usual ``nvidia.com/gpu`` taint on GPU node pools.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"gpu_tags: n must be a positive int, got {n!r}")
    return {
        K8S_CONFIG_TAG: {
            "container_config": {
                "resources": {"limits": {GPU_RESOURCE: n}, "requests": {GPU_RESOURCE: n}},
            },
            "pod_spec_config": {
                "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
            },
        }
    }
