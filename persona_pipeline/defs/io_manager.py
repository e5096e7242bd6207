"""Store asset values under the artifacts root: record lists as Parquet, documents as JSON.

Partitioned assets return ``{partition_key: value}`` (a single-run backfill
materialises several partitions at once); each partition lands in its own
file, written atomically. Unpartitioned consumers get all partitions merged.
"""

import json
from pathlib import Path

import dagster as dg

from persona_pipeline.layout import layout
from persona_pipeline.storage import read_records, write_json, write_records


class ArtifactIOManager(dg.ConfigurableIOManager):
    root: str = ""

    def _base(self) -> Path:
        return Path(self.root) if self.root else layout().assets

    def _path(self, key: dg.AssetKey, partition: str | None, suffix: str) -> Path:
        name = "/".join(key.path)
        return self._base() / name / f"{partition}{suffix}" if partition else self._base() / f"{name}{suffix}"

    def _write(self, key, partition, value) -> Path:
        if isinstance(value, list):
            path = self._path(key, partition, ".parquet")
            write_records(path, value)
        else:
            path = self._path(key, partition, ".json")
            write_json(path, value)
        return path

    def _read(self, key, partition):
        pq_path = self._path(key, partition, ".parquet")
        if pq_path.exists():
            return read_records(pq_path)
        js_path = self._path(key, partition, ".json")
        if js_path.exists():
            return json.loads(js_path.read_text())
        raise FileNotFoundError(
            f"{pq_path.with_suffix('')}: asset {key.to_user_string()} has no stored value; materialise it first"
        )

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        self._store(context, obj)
        # the step's plots only after its value: a step that fails before this point changes none
        from persona_pipeline.defs.assets._common import commit_plots

        commit_plots(context.run_id, context.step_key)

    def _store(self, context: dg.OutputContext, obj) -> None:
        if obj is None:
            return
        if not context.has_asset_partitions:
            path = self._write(context.asset_key, None, obj)
            context.add_output_metadata({"path": dg.MetadataValue.path(str(path))})
            return
        keys = context.asset_partition_keys
        if not isinstance(obj, dict) or not set(keys) <= set(obj):
            raise TypeError(
                f"partitioned asset {context.asset_key.to_user_string()} must return {{partition_key: value}} for {keys}"
            )
        for k in keys:
            self._write(context.asset_key, k, obj[k])

    def load_input(self, context: dg.InputContext):
        key = context.asset_key
        if not context.has_asset_partitions:
            return self._read(key, None)
        parts = {k: self._read(key, k) for k in context.asset_partition_keys}
        if all(isinstance(v, list) for v in parts.values()):
            return [row for k in sorted(parts) for row in parts[k]]
        return parts
