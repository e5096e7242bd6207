"""Small helpers shared by the asset modules: partitions and metadata."""

from collections import Counter

import dagster as dg

from ..settings import data_root


def _stems(folder: str, skip: tuple[str, ...] = ()) -> list[str]:
    path = data_root() / folder
    return sorted(p.stem for p in path.glob("*.yaml") if p.stem not in skip) if path.exists() else []


# Partition keys come from the file names in data_assets/, so adding a persona
# file adds a partition when the code location reloads.
persona_partitions = dg.StaticPartitionsDefinition(_stems("personas"))

SINGLE_RUN = dg.BackfillPolicy.single_run()


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
