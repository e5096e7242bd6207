"""Crash-safe, concurrency-safe artifact writes: nothing half-written is ever visible under its final name.

Every artifact (a file or a whole folder) is written to a private temporary
sibling, flushed to disk (``fsync`` of every file and folder), then swapped into
place in one rename, so a run killed at any moment leaves either the old
artifact or the new one. A per-target lock serialises writers of the same path
across threads and processes: a second run waits for the first instead of
deleting its temporary folder. A folder that several files make up (an
activation tensor and its index, a page and its key, one vector file per trait)
is staged and swapped as one: readers see the old set or the new set, never a mix.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

LOCK_TIMEOUT_S = 1800.0  # a model folder can take minutes to write; a writer stuck longer than this is an error


class ArtifactLockError(RuntimeError):
    """Another run kept an artifact locked for longer than the wait allowed; the message names it and the holder."""


# --- the per-target lock ---------------------------------------------------------------------------


def _lock_file(final: Path) -> Path:
    """Where the lock of ``final`` lives: outside the artifact tree (so listings stay clean), per user.

    Keyed by the real path, so two spellings of one target (symlinked parents, ``..``) share a lock.
    """
    real = final.parent.resolve() / final.name
    folder = Path(tempfile.gettempdir()) / f"persona-pipeline-locks-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder / (hashlib.sha256(str(real).encode()).hexdigest()[:32] + ".lock")


@contextlib.contextmanager
def target_lock(final: Path, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the exclusive write lock of one artifact path (file or folder) across threads and processes.

    ``flock`` locks belong to an open file description, so two threads of one
    process exclude each other as two processes do, and the kernel releases the
    lock when its holder dies (a SIGKILLed run never blocks the next one). Lock
    files are never deleted: deleting one would let two writers lock different inodes.
    """
    final = Path(final)
    lock = _lock_file(final)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown holder"
                    raise ArtifactLockError(
                        f"{final}: still being written by another run ({holder}) after waiting {timeout_s:g} s"
                    ) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


# --- flushing and swapping -------------------------------------------------------------------------


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    """fsync every file and folder under ``path`` (and ``path`` itself), so a power cut cannot tear them."""
    if not path.is_dir():
        _fsync_path(path)
        return
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            if not os.path.islink(os.path.join(root, name)):
                _fsync_path(Path(root, name))
        _fsync_path(Path(root))


_RENAME_EXCHANGE, _AT_FDCWD = 2, -100
_renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


_PREVIOUS = ".previous"  # inside a stage folder: the old artifact, moved aside where no atomic swap exists


def _swap_in(new: Path, final: Path) -> None:
    """Put ``new`` at ``final`` in one step; the old artifact ends up inside ``new``'s stage folder."""
    if not final.exists() and not final.is_symlink():
        os.rename(new, final)
    elif not new.is_dir() and not final.is_dir():
        os.replace(new, final)  # file over file: atomic everywhere
    elif not _exchange(new, final):  # a folder is involved: swap the two names atomically
        os.rename(final, new.parent / _PREVIOUS)  # fallback: for an instant ``final`` is absent;
        os.rename(new, final)  # a kill here is undone by _sweep, which restores the old artifact


def _stage_pattern(final: Path) -> re.Pattern:
    # exactly the names tempfile.mkdtemp(prefix=".<name>.", suffix=".tmp") makes: never another target's stage
    return re.compile(re.escape(f".{final.name}.") + r"[a-z0-9_]{8}\.tmp")


def _sweep(final: Path) -> None:
    """Remove stage folders left by killed writers of ``final`` (call with its lock held: none is live)."""
    pattern = _stage_pattern(final)
    for stale in final.parent.iterdir():
        if not pattern.fullmatch(stale.name):
            continue
        previous = stale / _PREVIOUS
        if previous.exists() and not final.exists():
            os.rename(previous, final)  # killed between the two renames of the fallback swap
        shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(final: Path, lock_timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[Path]:
    """Yield a private temp path for ``final``; on success flush it and swap it into place in one step.

    Works for files and folders: the caller writes whichever it likes to the
    yielded path, and an existing ``final`` is replaced whole. The target's lock
    is held throughout, so a concurrent writer of the same path waits (up to
    ``lock_timeout_s``, then :class:`ArtifactLockError`) rather than racing;
    stage folders left by killed writers are swept under that lock.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with target_lock(final, lock_timeout_s):
        _sweep(final)
        stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
        tmp = stage / final.name
        try:
            yield tmp
            if not tmp.exists():
                raise FileNotFoundError(f"{final}: the writer left nothing at {tmp}; the old artifact is kept")
            _fsync_tree(tmp)
            _swap_in(tmp, final)
            _fsync_path(final.parent)  # the rename itself survives a power cut
        finally:
            shutil.rmtree(stage, ignore_errors=True)


def _hidden(_folder: str, names: list[str]) -> list[str]:
    return [n for n in names if n.startswith(".")]


def update_folder(
    folder: Path, writers: Mapping[str, Callable[[Path], object]], lock_timeout_s: float = LOCK_TIMEOUT_S
) -> dict[str, Path]:
    """Replace some files of ``folder`` and keep the others, as one atomic swap of the whole folder.

    For a folder that runs fill a few files at a time (one vector file per trait
    partition): ``writers`` maps each file name to a function that writes that
    file at the path it is given. The other files are carried over (hard links,
    so nothing is copied); a writer that fails or a kill leaves the old folder
    exactly as it was. Returns ``{name: final path}``.
    """
    folder = Path(folder)
    for name in writers:
        if not name or name != Path(name).name or name.startswith("."):
            raise ValueError(f"{folder}: {name!r} is not a plain file name")
    with atomic_path(folder, lock_timeout_s) as tmp:
        if folder.is_dir():  # carry over every visible file this update does not replace
            shutil.copytree(
                folder,
                tmp,
                copy_function=os.link,
                ignore=lambda d, names: (
                    _hidden(d, names) + ([n for n in names if n in writers] if d == str(folder) else [])
                ),
            )
        else:
            tmp.mkdir()
        for name, write in writers.items():
            write(tmp / name)
            if not (tmp / name).exists():
                raise FileNotFoundError(f"{folder / name}: its writer wrote nothing; the old folder is kept")
    return {name: folder / name for name in writers}


# --- typed writers ---------------------------------------------------------------------------------


def json_text(obj) -> str:
    """How every JSON artifact is serialised (indented, UTF-8, anything unknown as ``str``)."""
    return json.dumps(obj, indent=2, ensure_ascii=False, default=str)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: Path, obj) -> None:
    write_text(path, json_text(obj))


def records_table(records: list[dict]) -> pa.Table:
    """Records as an Arrow table; columns are the union of every record's keys (pyarrow keeps only the first's)."""
    columns = list(dict.fromkeys(k for r in records for k in r))
    return pa.Table.from_pylist([{k: r.get(k) for k in columns} for r in records]) if records else pa.table({})


def write_records(path: Path, records: list[dict]) -> None:
    """Write records as Parquet; an empty list still gets a readable file."""
    table = records_table(records)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_records(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()
