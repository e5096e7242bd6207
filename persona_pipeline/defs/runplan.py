"""Materialise a selection through the real ``dagster asset materialize`` CLI, one run per stage.

Dagster's CLI runs a selection in one run only when every selected asset shares
one partitions definition (or has none). Our DAG has five (none, persona, role,
trait, checkpoint), so ``make demo`` walks the asset graph in dependency order
and groups it into the fewest such stages; each stage materialises its whole
partition range in one run (single-run backfill policy, one batched model).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
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


def run(selection: str = "*", dry_run: bool = False, log=print) -> list[dict]:
    """Run every stage; stop at the first failure. Returns per-stage wall times."""
    from persona_pipeline.defs.definitions import defs

    timings = []
    for n, stage in enumerate(plan(defs, selection), 1):
        log(f"stage {n}: {stage.describe()}")
        if dry_run:
            continue
        start = time.perf_counter()
        subprocess.run(command(stage), check=True, env=os.environ.copy())
        timings.append(
            {
                "stage": n,
                "assets": [k.to_user_string() for k in stage.keys],
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
    return timings
