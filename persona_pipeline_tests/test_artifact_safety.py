"""Artifacts survive concurrent writers, failures and SIGKILL: the old complete set or the new one, never a mix.

* Two writers of one target (threads, and separate processes) take turns under
  the target's lock; neither deletes the other's work in progress.
* A multi-file output (vector files of several traits, activations + their
  index, the human-eval page + its blind key) killed with SIGKILL half-way, or
  failing half-way, leaves the previous set exactly as it was; the next write
  sweeps the debris and lands whole.
* Every committed file and folder is fsynced, the parent folder too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from persona_pipeline import storage
from persona_pipeline.storage import ArtifactLockError, atomic_path, update_folder, write_text

REPO = Path(__file__).resolve().parent.parent


def stages(folder: Path, name: str) -> list[Path]:
    return sorted(folder.glob(f".{name}.*.tmp"))


def listing(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


# --- concurrent writers ---------------------------------------------------------------------------------


def test_a_second_writer_waits_for_the_first_instead_of_deleting_its_work(tmp_path):
    target = tmp_path / "out"
    a_inside, release_a, errors = threading.Event(), threading.Event(), []

    def writer(tag: str, pause: bool):
        try:
            with atomic_path(target) as tmp:
                tmp.mkdir()
                (tmp / "part1").write_text(tag)
                if pause:
                    a_inside.set()
                    assert release_a.wait(10)
                (tmp / "part2").write_text(tag)
        except Exception as e:  # noqa: BLE001 — reported below
            errors.append(f"{tag}: {type(e).__name__}: {e}")

    a = threading.Thread(target=writer, args=("A", True))
    a.start()
    assert a_inside.wait(10)
    b = threading.Thread(target=writer, args=("B", False))
    b.start()
    time.sleep(0.5)
    assert b.is_alive(), "the second writer did not wait for the first"
    (a_stage,) = stages(tmp_path, "out")
    assert (a_stage / "out" / "part1").read_text() == "A", "the first writer's work in progress was touched"
    release_a.set()
    a.join(10)
    b.join(10)
    assert not errors, errors
    assert listing(target) == {"part1": "B", "part2": "B"}
    assert not stages(tmp_path, "out")


def test_sweeping_one_target_never_touches_another_targets_stage(tmp_path):
    """``.a.*.tmp`` also matches the stage of a target named ``a.b``: only exact stage names are swept."""
    inside, release, errors = threading.Event(), threading.Event(), []

    def slow_writer():
        try:
            with atomic_path(tmp_path / "a.b") as tmp:
                tmp.write_text("first")
                inside.set()
                assert release.wait(10)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=slow_writer)
    t.start()
    assert inside.wait(10)
    write_text(tmp_path / "a", "other")
    assert len(stages(tmp_path, "a.b")) == 1, "writing 'a' swept the live stage of 'a.b'"
    release.set()
    t.join(10)
    assert not errors
    assert (tmp_path / "a.b").read_text() == "first" and (tmp_path / "a").read_text() == "other"


def test_a_writer_that_holds_the_lock_too_long_is_a_clear_error(tmp_path):
    target, inside, release = tmp_path / "model", threading.Event(), threading.Event()

    def holder():
        with storage.target_lock(target):
            inside.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    assert inside.wait(10)
    try:
        with (
            pytest.raises(
                ArtifactLockError, match=rf"{target}: still being written by another run \(pid {os.getpid()}"
            ),
            atomic_path(target, lock_timeout_s=0.3) as tmp,
        ):
            tmp.write_text("late")
    finally:
        release.set()
        t.join(10)
    assert not target.exists()


WRITER = """
import os, sys
from pathlib import Path
from persona_pipeline.storage import update_folder
folder, me, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for i in range(n):
    def pair(path, i=i):
        path.write_text(f"{me}:{i}")
    update_folder(folder, {"a": pair, "b": pair, f"only_{me}": pair})
"""


@pytest.mark.timeout(120)
def test_two_processes_updating_one_folder_lose_nothing_and_never_crash(tmp_path):
    folder, n = tmp_path / "persona_vectors", 25
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(folder), tag, str(n)], cwd=REPO, stderr=subprocess.PIPE)
        for tag in ("p", "q")
    ]
    for p in procs:
        _, err = p.communicate(timeout=100)
        assert p.returncode == 0, err.decode()[-2000:]
    files = listing(folder)
    assert files["a"] == files["b"], "the two files of one update come from different writers"
    assert files["only_p"] == f"p:{n - 1}" and files["only_q"] == f"q:{n - 1}", "one writer's files were lost"
    assert not stages(tmp_path, "persona_vectors")


# --- SIGKILL in the middle of a multi-file write ------------------------------------------------------

KILLED = """
import sys, time
from pathlib import Path
from persona_pipeline import storage
folder, ready, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]

def hang(*_):
    ready.write_text("in the middle")
    time.sleep(120)

if mode == "mid-write":  # the second file of the set is being written
    def first(path):
        path.write_text("new a")
    def second(path):
        path.write_text("new b, half")
        hang()
    storage.update_folder(folder, {"a": first, "b": second})
else:  # every file written, killed while flushing, just before the swap
    storage._fsync_tree = hang
    if mode == "vectors":
        import torch
        from persona_pipeline import vectors
        vectors.save_tensor_files(folder, {"a": {"v": torch.ones(3)}, "b": {"v": torch.ones(3)}})
    elif mode == "activations":
        import torch
        from persona_pipeline import activations
        activations.save(folder, {"response_avg": torch.ones(2, 1, 3)}, [{"i": 0}, {"i": 1}])
    elif mode == "page":
        from persona_pipeline import human_eval
        items = [{"id": "n1", "persona_id": "p", "reference": "o", "candidates": {"m1": "new 1", "m2": "new 2"}}]
        human_eval.write_page(folder, items, seed=2)
"""


def _kill_mid_write(folder: Path, mode: str, tmp_path: Path) -> None:
    ready = tmp_path / f"ready-{mode}"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED, str(folder), str(ready), mode], cwd=REPO, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 90
        while not ready.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the writer never reached the middle of its write"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc.stderr.close()


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", ["mid-write", "vectors", "activations", "page"])
def test_sigkill_mid_multi_file_write_leaves_the_old_set_whole(tmp_path, mode):
    folder = tmp_path / "out"
    _write_old_set(folder, mode)
    before = _snapshot(folder)
    _kill_mid_write(folder, mode, tmp_path)
    assert _snapshot(folder) == before, "a killed write changed the published set"
    assert len(stages(tmp_path, "out")) == 1  # the killed writer's debris, private until swept

    update_folder(folder, {"a": lambda p: p.write_text("next a")})  # the next writer sweeps it and lands whole
    assert not stages(tmp_path, "out")
    assert (folder / "a").read_text() == "next a"


def _write_old_set(folder: Path, mode: str) -> None:
    if mode == "mid-write":
        update_folder(folder, {"a": lambda p: p.write_text("old a"), "b": lambda p: p.write_text("old b")})
    elif mode == "vectors":
        import torch

        from persona_pipeline import vectors

        vectors.save_tensor_files(folder, {"a": {"v": torch.zeros(3)}, "b": {"v": torch.zeros(3)}})
    elif mode == "activations":
        import torch

        from persona_pipeline import activations

        activations.save(folder, {"response_avg": torch.zeros(3, 1, 3)}, [{"i": 0}, {"i": 1}, {"i": 2}])
    else:
        from persona_pipeline import human_eval

        items = [{"id": "o1", "persona_id": "p", "reference": "o", "candidates": {"m1": "x", "m2": "y"}}]
        human_eval.write_page(folder, items, seed=1)


# --- failures part-way ------------------------------------------------------------------------------


def test_a_page_write_that_fails_half_way_keeps_the_old_page_and_its_key(tmp_path, monkeypatch):
    from persona_pipeline import human_eval

    folder = tmp_path / "human_eval"
    items = [{"id": "o1", "persona_id": "p", "reference": "o", "candidates": {"m1": "x", "m2": "y"}}]
    old = human_eval.write_page(folder, items, seed=1)
    before = _snapshot(folder)
    real = Path.write_text

    def disk_full_on_page(self, data, *a, **kw):
        if self.name == human_eval.PAGE_FILE:
            real(self, data[:50], *a, **kw)
            raise OSError(28, "No space left on device")
        return real(self, data, *a, **kw)

    monkeypatch.setattr(Path, "write_text", disk_full_on_page)
    with pytest.raises(OSError, match="No space left"):
        human_eval.write_page(folder, [{**items[0], "id": "n1"}], seed=2)
    monkeypatch.undo()
    assert _snapshot(folder) == before
    assert json.loads((folder / human_eval.KEY_FILE).read_text())["page_id"] == old["page_id"]
    assert not stages(tmp_path, "human_eval")


def test_an_activations_save_that_fails_keeps_the_old_tensors_and_index(tmp_path, monkeypatch):
    import pyarrow.parquet as pq
    import torch

    from persona_pipeline import activations

    folder = tmp_path / "activations" / "base"
    activations.save(folder, {"response_avg": torch.zeros(2, 1, 3)}, [{"i": 0}, {"i": 1}])
    before = _snapshot(folder)

    def broken(*a, **kw):
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", broken)
    with pytest.raises(OSError, match="disk full"):
        activations.save(folder, {"response_avg": torch.ones(5, 1, 3)}, [{"i": k} for k in range(5)])
    monkeypatch.undo()
    assert _snapshot(folder) == before
    tensors, index = activations.load(folder)
    assert tensors["response_avg"].shape[0] == len(index) == 2


def test_vector_files_update_keeps_other_traits_and_never_edits_the_old_files(tmp_path):
    import torch

    from persona_pipeline import vectors

    folder = tmp_path / "persona_vectors"
    vectors.save_tensor_files(folder, {"calm": {"v": torch.zeros(4)}, "curious": {"v": torch.zeros(4)}})
    old_calm = os.open(folder / "calm.safetensors", os.O_RDONLY)  # a reader holding the old file
    try:
        paths = vectors.save_tensor_files(folder, {"calm": {"v": torch.ones(4)}})
        assert paths == {"calm": folder / "calm.safetensors"}
        assert torch.equal(vectors.load_tensors(folder / "calm.safetensors")["v"], torch.ones(4))
        assert torch.equal(vectors.load_tensors(folder / "curious.safetensors")["v"], torch.zeros(4))
        with os.fdopen(os.dup(old_calm), "rb") as f:
            from safetensors.torch import load

            assert torch.equal(load(f.read())["v"], torch.zeros(4)), "the old version's file was modified in place"
    finally:
        os.close(old_calm)
    with pytest.raises(ValueError, match="not a plain file name"):
        vectors.save_tensor_files(folder, {"../escape": {"v": torch.zeros(1)}})


def test_a_png_write_that_dies_keeps_the_old_plot(tmp_path, monkeypatch):
    from persona_pipeline.plots import save_png

    path = tmp_path / "plots" / "curve.png"
    save_png(b"\x89PNG old", path)
    monkeypatch.setattr(storage, "_fsync_tree", lambda p: (_ for _ in ()).throw(OSError("I/O error")))
    with pytest.raises(OSError, match="I/O error"):
        save_png(b"\x89PNG new and longer", path)
    assert path.read_bytes() == b"\x89PNG old"
    assert sorted(p.name for p in path.parent.iterdir()) == ["curve.png"]


# --- fsync and the swap ----------------------------------------------------------------------------


def _spy_fsync(monkeypatch) -> list[str]:
    synced, real = [], os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return synced


def test_commit_fsyncs_every_file_the_folder_and_its_parent(tmp_path, monkeypatch):
    synced = _spy_fsync(monkeypatch)
    write_text(tmp_path / "report.html", "<p>hi</p>")
    assert any(s.endswith("/report.html") and "/.report.html." in s for s in synced), synced  # the staged file
    assert synced[-1] == str(tmp_path), "the parent folder (the rename) was not flushed"

    synced.clear()
    update_folder(tmp_path / "set", {"a": lambda p: p.write_text("1"), "b": lambda p: p.write_text("2")})
    staged = [s for s in synced if "/.set." in s]
    assert {Path(s).name for s in staged} >= {"a", "b", "set"}, synced  # both files and the folder itself
    assert synced[-1] == str(tmp_path)


def test_without_an_atomic_exchange_a_kill_between_the_two_renames_is_undone(tmp_path, monkeypatch):
    folder = tmp_path / "human_eval"
    update_folder(folder, {"a": lambda p: p.write_text("old")})
    monkeypatch.setattr(storage, "_renameat2", None)  # e.g. a filesystem without RENAME_EXCHANGE
    update_folder(folder, {"a": lambda p: p.write_text("new")})
    assert listing(folder) == {"a": "new"}

    # what a kill between "move the old folder aside" and "move the new one in" leaves behind:
    stage = tmp_path / ".human_eval.abcd1234.tmp"
    stage.mkdir()
    os.rename(folder, stage / storage._PREVIOUS)
    assert not folder.exists()
    update_folder(folder, {"b": lambda p: p.write_text("added")})
    assert listing(folder) == {"a": "new", "b": "added"}, "the old folder was not restored before the update"
    assert not stages(tmp_path, "human_eval")


def test_a_writer_that_writes_nothing_keeps_the_old_artifact(tmp_path):
    write_text(tmp_path / "x.json", "{}")
    with pytest.raises(FileNotFoundError, match="the writer left nothing"), atomic_path(tmp_path / "x.json"):
        pass
    assert (tmp_path / "x.json").read_text() == "{}"
