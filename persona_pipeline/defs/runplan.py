"""Materialise a selection as Dagster runs, one run per stage.

Dagster runs a selection in one run only when every selected asset shares one
partitions definition (or has none). Our DAG has five (none, persona, role,
trait, checkpoint), so ``make demo`` walks the asset graph in dependency order
and groups it into the fewest such stages; each stage materialises its whole
partition range in one run (single-run backfill policy, one batched model).

Each stage runs in a child process *forked* from this one, which has already
imported the definitions (torch, transformers, dagster: ~6 s) — what
``dagster asset materialize -m persona_pipeline.defs.definitions`` would import
again for every stage (~11 s of start-up per stage, a minute of the demo). The
run itself is the same: the definitions' in-process executor, the same instance,
the same partition-range tags the CLI sets, checks included. A crash in a stage
cannot touch the parent, and each stage starts with no model cached from the
last one. Where ``fork`` is missing, stages run through that CLI.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field

import dagster as dg


@dataclass
class Stage:
    partitions: dg.PartitionsDefinition | None
    keys: list[dg.AssetKey] = field(default_factory=list)

    def partition_range(self) -> str | None:
        if self.partitions is None:
            return None
        keys = self.partitions.get_partition_keys()
        return f"{keys[0]}...{keys[-1]}"

    def describe(self) -> str:
        what = ",".join(k.to_user_string() for k in self.keys)
        return f"{what} [{self.partition_range() or 'unpartitioned'}]"


def selection_of(selection: str) -> dg.AssetSelection:
    """Dagster's selection syntax (``group:data``, ``key:x+``, ``a or b``) or comma-separated keys (``a*,b``)."""
    if ":" in selection or " " in selection.strip():
        return dg.AssetSelection.from_string(selection)
    return dg.AssetSelection.from_coercible(selection.split(","))


def plan(defs: dg.Definitions, selection: str = "*") -> list[Stage]:
    """Stages in dependency order; an asset joins the earliest stage after its parents' that fits its partitions."""
    graph = defs.resolve_asset_graph()
    wanted = set(selection_of(selection).resolve(graph))
    stages: list[Stage] = []
    placed: dict[dg.AssetKey, int] = {}
    for key in graph.toposorted_asset_keys:
        if key not in wanted or not graph.get(key).is_materializable:
            continue
        pdef = graph.get(key).partitions_def
        start = max((placed[p] for p in graph.get(key).parent_keys if p in placed), default=0)
        for i in range(start, len(stages)):
            if _fits(stages[i], pdef):
                break
        else:
            stages.append(Stage(None))
            i = len(stages) - 1
        stages[i].partitions = stages[i].partitions or pdef
        stages[i].keys.append(key)
        placed[key] = i
    return stages


def _fits(stage: Stage, pdef) -> bool:
    return pdef is None or stage.partitions is None or stage.partitions == pdef


def command(stage: Stage, module: str = "persona_pipeline.defs.definitions") -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "dagster",
        "asset",
        "materialize",
        "-m",
        module,
        "--select",
        ",".join(k.to_user_string() for k in stage.keys),
    ]
    rng = stage.partition_range()
    return cmd + (["--partition-range", rng] if rng else [])


def quiet_dagster_notices() -> None:
    """Dagster's API-stability notices (beta/preview parameters we chose, the superseded CLI we call)
    are about our code, not the user's data or run."""
    for category in (dg.BetaWarning, dg.PreviewWarning, dg.SupersessionWarning):
        warnings.filterwarnings("ignore", category=category)


def quiet_env() -> dict[str, str]:
    """The stage processes' environment: library advisories off unless the user set them (logs keep the rest)."""
    env = os.environ.copy()
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")  # deprecation notices logged by transformers
    env.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    env.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # GRPO's rollout_func is "experimental" in TRL 1.x
    return env


def _execute(stage: Stage) -> bool:
    """One stage as one in-process Dagster run on the current instance (in a forked child)."""
    from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

    from persona_pipeline.defs.definitions import defs

    tags = {}
    if stage.partitions is not None:
        first, _, last = stage.partition_range().partition("...")
        tags = {ASSET_PARTITION_RANGE_START_TAG: first, ASSET_PARTITION_RANGE_END_TAG: last}
    job = defs.resolve_implicit_job_def_def_for_assets(stage.keys).get_subset(asset_selection=set(stage.keys))
    with dg.DagsterInstance.get() as instance:
        return job.execute_in_process(instance=instance, tags=tags, raise_on_error=False).success


def _forked(stage: Stage, out_fd: int | None) -> int:
    """Fork; the child runs ``stage`` with stdout/stderr on ``out_fd`` (None: this terminal). Returns the pid."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        if out_fd is not None:
            os.dup2(out_fd, 1)
            os.dup2(out_fd, 2)
        code = 0 if _execute(stage) else 1
    except Exception:  # noqa: BLE001 — printed on the stage's output; the parent sees the exit code
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _wait(pid: int, stage: Stage, log_path=None) -> None:
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise subprocess.CalledProcessError(
            os.waitstatus_to_exitcode(status), command(stage), output=f"see {log_path}" if log_path else None
        )


def _run_forked(stage: Stage, log_path, show) -> None:
    """``_run_stage`` with a forked child instead of the CLI."""
    from persona_pipeline.run_summary import StageView

    view = StageView()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    read, write = os.pipe()
    pid = _forked(stage, write)
    os.close(write)
    with open(log_path, "w", encoding="utf-8") as log_file, os.fdopen(read, encoding="utf-8", errors="replace") as f:
        for line in f:
            log_file.write(line)
            shown = view.show(line)
            if shown is not None:
                show(shown)
    _wait(pid, stage, log_path)


def _run_stage(cmd: list[str], log_path, show) -> None:
    """Run one stage; every line goes to ``log_path``, the filtered view to ``show``. Raises on failure."""
    from persona_pipeline.run_summary import StageView

    view = StageView()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", encoding="utf-8") as log_file:
        proc = subprocess.Popen(
            cmd, env=quiet_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        for line in proc.stdout:
            log_file.write(line)
            shown = view.show(line)
            if shown is not None:
                show(shown)
    if proc.wait() != 0:
        raise subprocess.CalledProcessError(proc.returncode, cmd, output=f"see {log_path}")


def run(selection: str = "*", dry_run: bool = False, log=print, log_dir=None) -> list[dict]:
    """Run every stage; stop at the first failure. Returns per-stage wall times.

    With ``log_dir``, each stage's full output goes to ``stage-<n>.log`` there and ``log``
    gets the filtered view (``run_summary.StageView``); without it, output passes through.
    """
    quiet_dagster_notices()
    fork = hasattr(os, "fork")
    if fork:  # the forked stages inherit this environment, so it must hold before transformers is imported
        os.environ.update(quiet_env())
    from persona_pipeline.defs.definitions import defs

    timings = []
    stages = plan(defs, selection)
    for n, stage in enumerate(stages, 1):
        log(f"stage {n}: {stage.describe()} ({n} of {len(stages)})")
        if dry_run:
            continue
        start = time.perf_counter()
        if fork and log_dir is None:
            _wait(_forked(stage, None), stage)
        elif fork:
            _run_forked(stage, log_dir / f"stage-{n}.log", log)
        elif log_dir is None:
            subprocess.run(command(stage), check=True, env=os.environ.copy())
        else:
            _run_stage(command(stage), log_dir / f"stage-{n}.log", log)
        timings.append(
            {
                "stage": n,
                "assets": [k.to_user_string() for k in stage.keys],
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
        log(f"  done in {timings[-1]['seconds']:.0f} s")
    return timings


def check_results() -> list[dict]:
    """The latest evaluation of every asset check on the current instance: passed / failed / warned / errored."""
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

    from persona_pipeline.defs.definitions import defs

    keys = list(defs.resolve_asset_graph().asset_check_keys)
    out = []
    with dg.DagsterInstance.get() as instance:
        latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(keys)
    for key, rec in sorted(latest.items(), key=lambda kv: kv[0].to_user_string()):
        if rec.status == AssetCheckExecutionRecordStatus.PLANNED:
            continue
        evaluation = rec.event.dagster_event.event_specific_data if rec.event and rec.event.dagster_event else None
        if not hasattr(evaluation, "passed"):  # only the planned event: the check step itself failed
            status, detail = "errored", "the check itself raised (see the run's logs)"
        elif evaluation.passed:
            status, detail = "passed", ""
        else:
            status = "warned" if evaluation.severity == dg.AssetCheckSeverity.WARN else "failed"
            detail = evaluation.description or ""
        out.append({"asset": key.asset_key.to_user_string(), "name": key.name, "status": status, "detail": detail})
    return out
