"""Every folder under the artifacts home, known in one place (like nanochat's stage → folder map).

``PERSONA_PIPELINE_HOME`` (default ``./.persona_home``) holds what the pipeline makes that is not a
table: models and adapters, tensors, plots, reports, resumable work files. Assets, the CLI, ``serve``
and the exporters all ask :func:`layout` where a thing lives instead of joining path strings, so a
folder is named once and every reader agrees with every writer.

::

    assets/                      IO-manager values (Parquet / JSON), one file per asset (and partition)
    models/base/                 the policy base as an HF folder (embedded: converted SmolLM2)
    models/<kind>_adapter/       PEFT adapters (sft, rl); training curves beside them
    models/trait_finetunes/<trait>/<variant>/   LoRA per trait fine-tune set (+ preventative-steering variants)
    trait_finetune_sets/<trait>/<set>.jsonl     teacher-written normal / misaligned_1 / misaligned_2 sets
    activations/<checkpoint>/    activations.safetensors + index.parquet
    persona_space/               assistant_axis.safetensors (axis per layer, PCs, standardisation)
    persona_vectors/<trait>.safetensors   mean-diff and SVD vectors [layers × hidden]
    cmaes_steering/<persona>.safetensors  the persona's CMA-ES steering vector [hidden]
    plots/<name>.png             every plot an asset draws
    reports/eval_report.html     the HTML report
    human_eval/                  the blind rating page and its key
    work/<asset>/                resumable generation (JSONL per fingerprint)
    exports/                     datasets (JSONL + Parquet), customjson
    runs/                        `persona-pipeline materialize` logs and timings
    simulations/                 `persona-pipeline simulate` transcripts
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def assets(self) -> Path:
        return self.root / "assets"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def base_model(self) -> Path:
        return self.models / "base"

    def adapter(self, kind: str) -> Path:
        """The pipeline's own adapter of ``kind`` (``sft`` or ``rl``)."""
        return self.models / f"{kind}_adapter"

    def trait_finetune(self, trait: str, variant: str) -> Path:
        """One trait fine-tune's adapter (``variant``: a set name, or ``<set>+add`` / ``<set>+ablate``)."""
        return self.models / "trait_finetunes" / trait / variant

    @property
    def trait_finetune_sets(self) -> Path:
        return self.root / "trait_finetune_sets"

    def training_plot(self, name: str) -> Path:
        """A training curve, kept beside the adapters (``models/<name>.png``)."""
        return self.models / f"{name}.png"

    def activations(self, checkpoint: str) -> Path:
        return self.root / "activations" / checkpoint

    @property
    def persona_space(self) -> Path:
        return self.root / "persona_space"

    @property
    def assistant_axis(self) -> Path:
        return self.persona_space / "assistant_axis.safetensors"

    @property
    def persona_vectors(self) -> Path:
        return self.root / "persona_vectors"

    def persona_vector(self, trait: str) -> Path:
        return self.persona_vectors / f"{trait}.safetensors"

    @property
    def cmaes_steering(self) -> Path:
        return self.root / "cmaes_steering"

    def cmaes_vector(self, persona_id: str) -> Path:
        return self.cmaes_steering / f"{persona_id}.safetensors"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    def plot(self, name: str) -> Path:
        return self.plots / f"{name}.png"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def eval_report(self) -> Path:
        return self.reports / "eval_report.html"

    @property
    def human_eval(self) -> Path:
        return self.root / "human_eval"

    def work(self, asset: str) -> Path:
        return self.root / "work" / asset

    @property
    def exports(self) -> Path:
        return self.root / "exports"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def simulations(self) -> Path:
        return self.root / "simulations"


def layout(root: Path | str | None = None) -> Layout:
    """The layout under ``root``, or under the artifacts home (``PERSONA_PIPELINE_HOME``) when None."""
    from .settings import home

    return Layout(Path(root) if root is not None else home())
