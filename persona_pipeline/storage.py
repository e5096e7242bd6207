"""Crash-safe file writes: nothing half-written is ever visible under its final name.

Every artifact is written to a temporary sibling and renamed into place, so a
run killed mid-write leaves either the old artifact or none.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temp path next to ``final``; move it into place only on success.

    Works for files and folders: the caller writes whichever it likes to the
    yielded path. An existing ``final`` is replaced. One writer per path is
    assumed (model steps share the ``gpu`` pool), so temp folders left by a
    killed run are swept away here.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.*.tmp"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)) / final.name
    try:
        yield tmp
        if final.is_dir():
            shutil.rmtree(final)
        elif final.exists():
            final.unlink()
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str))


def write_records(path: Path, records: list[dict]) -> None:
    """Write records as Parquet; an empty list still gets a readable file."""
    # Columns are the union of every record's keys (pyarrow would keep only the first record's).
    columns = list(dict.fromkeys(k for r in records for k in r))
    table = pa.Table.from_pylist([{k: r.get(k) for k in columns} for r in records]) if records else pa.table({})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_records(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def append_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """Append complete lines and fsync, so a kill loses at most the line being written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        f.flush()
        os.fsync(f.fileno())


def read_jsonl_tolerant(path: Path) -> list[dict]:
    """Read a work log; a torn last line (killed mid-append) is dropped."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows
