"""Small helpers shared by the asset modules: partitions and metadata."""

from collections import Counter
from pathlib import Path
from typing import ClassVar, Literal

import dagster as dg

from persona_pipeline.defs.executors import gpu_tags
from persona_pipeline.layout import layout
from persona_pipeline.plots import markdown_image, save_png
from persona_pipeline.settings import data_root, profile
from persona_pipeline.storage import update_folder


def _stems(folder: str, skip: tuple[str, ...] = ()) -> list[str]:
    from persona_pipeline.loaders import partition_ids  # every layout; editor lock files never become partitions

    return partition_ids(data_root() / folder, skip)


# Partition keys come from the file names in data_assets/, so adding a persona
# file adds a partition when the code location reloads.
persona_partitions = dg.StaticPartitionsDefinition(_stems("personas"))
role_partitions = dg.StaticPartitionsDefinition(_stems("roles", skip=("questions",)))
trait_partitions = dg.StaticPartitionsDefinition(_stems("traits"))


def extra_checkpoints() -> dict[str, str]:
    """``PERSONA_PIPELINE_CHECKPOINTS="sft7b=allenai/OLMo-2-7B-SFT,dpo=org/model@rev"``: more models to capture."""
    import os

    from persona_pipeline.loaders import checkpoint_names

    return checkpoint_names(os.environ.get("PERSONA_PIPELINE_CHECKPOINTS", ""))


checkpoint_partitions = dg.StaticPartitionsDefinition(["base", "sft", "rl", *extra_checkpoints()])
ALL = dg.AllPartitionMapping()

SINGLE_RUN = dg.BackfillPolicy.single_run()

# Model steps: the `gpu` concurrency pool (dagster.yaml) and, under dagster-k8s, a GPU pod.
GPU = {"pool": "gpu", "op_tags": gpu_tags()}


def pick(value, name: str):
    """The one rule for sizes: a run-config value, or — where it is None — the active profile's ``name``."""
    return value if value is not None else getattr(profile(), name)


# Fixed choices, typed so Dagster rejects a bad value at launch and the launchpad lists the options.
FilterJudge = Literal["auto", "embedding", "logprob"]  # trait / coherence / role judges (``judging.choose``)
PersonaJudge = Literal["auto", "embedding", "logprob", "json"]  # reward and search-fitness judges
Quantize = Literal["auto", "nf4", "none"]  # auto: NF4 (QLoRA) on CUDA, full precision on CPU
OnOff = Literal["auto", "on", "off"]


class ProfileConfig(dg.Config):
    """Run config whose ``None`` fields take the active profile's value, filled once when the config is built
    (TRL's ``__post_init__`` habit), so an asset body never sees a ``None`` size. ``PROFILE`` maps each such
    field to its ``Profile`` attribute; 0 or an empty list given in run config is kept, never replaced."""

    PROFILE: ClassVar[dict[str, str]] = {}

    def __init__(self, **config):
        super().__init__(**{**config, **{f: pick(config.get(f), name) for f, name in self.PROFILE.items()}})


STEERING_INS = {
    "steering_sweep": dg.AssetIn(partition_mapping=ALL),
    "persona_vectors": dg.AssetIn(partition_mapping=ALL),
    "cmaes_steering": dg.AssetIn(partition_mapping=ALL),
}


def md_table(rows: list[dict], limit: int = 30) -> dg.MetadataValue:
    if not rows:
        return dg.MetadataValue.md("_empty_")
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows[:limit]:
        lines.append("| " + " | ".join(str(r.get(c, "")).replace("|", "/").replace("\n", " ") for c in cols) + " |")
    if len(rows) > limit:
        lines.append(f"\n_{len(rows) - limit} more rows_")
    return dg.MetadataValue.md("\n".join(lines))


def counts(values) -> dg.MetadataValue:
    return md_table([{"value": k, "count": v} for k, v in Counter(values).most_common()])


# Plots of assets whose value is a table (no room for paths in it): one name shared by the asset that
# draws the plot and by ``eval_report``, which fails when the file is missing.
TABLE_PLOTS = {
    "finetuning_shift": "finetuning_shift",
    "judge_scores": "consistency_by_turn",
    "drift_monitor": "drift_monitor",
}


def sweep_plot(trait: str, what: str) -> str:
    """The name of one trait's sweep plot (``what``: ``trait`` or ``coherence``)."""
    return f"sweep_{trait}_{what}"


# PNGs an asset step drew, by (run id, step key): written together once the step's value is stored
# (``ArtifactIOManager.handle_output``), so a failed or killed step changes no plot on disk.
_STAGED_PLOTS: dict[tuple[str, str], dict[Path, bytes]] = {}


def _running_step() -> tuple[str, str] | None:
    """(run id, step key) of the asset body running now; None outside a Dagster step (a direct call)."""
    try:
        ctx = dg.AssetExecutionContext.get()
    except dg.DagsterInvariantViolationError:
        return None
    return ctx.run_id, ctx.get_step_execution_context().step.key


def commit_plots(run_id: str, step_key: str) -> list[Path]:
    """Write the plots staged by one step: one atomic folder swap per folder they go to."""
    staged = _STAGED_PLOTS.pop((run_id, step_key), {})
    by_folder: dict[Path, dict[str, bytes]] = {}
    for path, png in staged.items():
        by_folder.setdefault(path.parent, {})[path.name] = png
    for folder, pngs in by_folder.items():
        update_folder(folder, {name: (lambda dst, png=png: dst.write_bytes(png)) for name, png in pngs.items()})
    return list(staged)


def png_meta(png: bytes, name: str, alt: str, path=None, plots: dict | None = None) -> dict:
    """A plot as inline markdown (renders in the UI) plus its PNG on disk (default ``plots/<name>.png``).

    In a Dagster step the PNG is staged and written with the step's other plots after its value is
    stored (:func:`commit_plots`); called directly, it is written at once.
    ``plots``, when given, gets ``name → path``: the asset returns it so ``eval_report`` reads its
    plots from its inputs (a renamed or missing plot fails the report instead of vanishing from it)."""
    path = Path(path or layout().plot(name))
    step = _running_step()
    if step is None:
        save_png(png, path)
    else:
        _STAGED_PLOTS.setdefault(step, {})[path] = png
    if plots is not None:
        plots[name] = str(path)
    return {alt: dg.MetadataValue.md(markdown_image(png, alt)), f"{alt}_png": dg.MetadataValue.path(str(path))}


def persona_judge(choice: str, judge, persona_specs: list[dict], surveys: dict | None = None, purpose: str = "reward"):
    """(judge, method) for persona scores, as ``judging.choose`` picks them for ``purpose``."""
    from persona_pipeline.judging import choose

    return (
        choose.persona_judge(purpose, judge, persona_specs, surveys, choice),
        choose.method(purpose, judge, choice),
    )
