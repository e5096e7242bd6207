"""Batching for ``serve``: requests that arrive together run as ONE backend call.

A local model is compute-bound and must not run two ``generate`` calls at once, so
one worker thread per loaded model takes everything queued for it, groups what can
share a call, and runs each group as one batched ``complete`` (or
``next_token_logprobs``) — on 2 CPU cores 16 chats in one left-padded batch take about
a quarter of the time of 16 single calls (``bench/serve.py``). The queue is bounded: when it is full, ``submit`` raises
``Overloaded`` and the server answers 503 with ``Retry-After``.

The worker waits briefly (``max_wait_s``) for companions: requests still being validated,
and — since clients that were answered together come back together — as many requests as
the last drain held. A lone client that sends one request at a time never waits.

What shares a call: the same served model name, the same sampling parameters
(a seeded sampling request runs alone, so its seed reproduces the same text), and
compatible steering. ``add`` steering is packed per row — one ``Steer`` per
(layer, positions) slot whose vector and coefficient are [batch] tensors, zeros for
rows without it (h + 0·v is exactly h), which ``LocalBackend`` already slices per
chunk. ``ablate``/``cap`` steering only batches with identical steering.
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
import time
from collections import defaultdict, deque
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from .backends.base import Backend, Chat, SamplingParams
from .hooks import Steer


class Overloaded(Exception):
    """The model's queue is full; ``retry_after_s`` is a hint for the client."""

    def __init__(self, queued: int, retry_after_s: int):
        super().__init__(f"server busy: {queued} requests already queued for this model; retry shortly")
        self.retry_after_s = retry_after_s


@dataclass
class Job:
    """One request, validated and resolved, waiting for its model's worker."""

    backend: Backend  # the served model (a persona wrapper, a lazy loader or the local model itself)
    local: object | None  # the innermost steerable backend, when the request steers
    chat: Chat
    params: SamplingParams
    steers: list[Steer] = field(default_factory=list)  # vectors already [hidden], layers already chosen
    top_logprobs: int | None = None  # None: generate text; k: the next-token distribution's top k
    future: Future = field(default_factory=Future)

    def group_key(self) -> tuple:
        """Jobs with equal keys run in one backend call."""
        p = self.params
        seeded_sampling = p.temperature > 0 and p.seed is not None
        params = (p.max_new_tokens, p.temperature, p.top_p, tuple(p.stop), p.seed if seeded_sampling else None)
        if self.steers and any(s.mode != "add" for s in self.steers):
            steering = tuple(  # the same cached vector file → the same storage
                (s.vector.data_ptr(), s.layer, s.coef, s.mode, s.positions, s.threshold) for s in self.steers
            )
        else:
            steering = None  # none, or add-only: packed per row
        alone = id(self) if seeded_sampling else None
        return (id(self.backend), self.top_logprobs, params, steering, alone)


def packed_steers(jobs: list[Job]) -> list[Steer]:
    """Per-row ``add`` steers for a group: one [batch] slot per (layer, positions, k-th use in a request)."""
    slots: dict[tuple, dict[int, Steer]] = defaultdict(dict)
    for row, job in enumerate(jobs):
        seen: dict[tuple, int] = defaultdict(int)
        for s in job.steers:
            where = (s.layer, s.positions)
            slots[(*where, seen[where])][row] = s
            seen[where] += 1
    out = []
    for (layer, positions, _), by_row in slots.items():
        ref = next(iter(by_row.values())).vector
        vectors = torch.stack([by_row[r].vector if r in by_row else torch.zeros_like(ref) for r in range(len(jobs))])
        coefs = torch.tensor([float(by_row[r].coef) if r in by_row else 0.0 for r in range(len(jobs))])
        out.append(Steer(vectors, layer, coefs, "add", positions))
    return out


def _group_steers(jobs: list[Job]) -> list[Steer]:
    if not any(j.steers for j in jobs):
        return []
    if any(s.mode != "add" for s in jobs[0].steers):
        return jobs[0].steers  # identical across the group (part of the group key)
    return packed_steers(jobs)


def run_group(jobs: list[Job]) -> list:
    """One backend call for the whole group; results in the jobs' order."""
    first = jobs[0]
    steers = _group_steers(jobs)
    local = next((j.local for j in jobs if j.local is not None), None)
    chats = [j.chat for j in jobs]
    with local.steered(steers) if steers else contextlib.nullcontext():
        if first.top_logprobs is None:
            return first.backend.complete(chats, first.params)
        return first.backend.next_token_logprobs(chats, top_k=max(first.top_logprobs, 1))


class Batcher:
    """A bounded queue and one worker thread for one loaded model."""

    def __init__(
        self, name: str, max_queue: int = 64, max_batch: int = 32, window_s: float = 0.005, max_wait_s: float = 0.1
    ):
        self.name, self.max_batch, self.window_s, self.max_wait_s = name, max_batch, window_s, max_wait_s
        self._expected, self._count_lock = 0, threading.Lock()
        self._last_size = 0  # jobs in the last drain: closed-loop clients come back about as many
        self.queue: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self.last_batch_s = 1.0
        self.batches: deque[int] = deque(maxlen=1000)  # sizes of the latest backend calls (tests and bench read it)
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"batcher-{name}")
        self._thread.start()

    def submit(self, job: Job) -> Future:
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise Overloaded(self.queue.qsize(), max(1, math.ceil(self.last_batch_s))) from None
        return job.future

    def close(self) -> None:
        self.queue.put(None)
        self._thread.join(timeout=30)

    @contextlib.contextmanager
    def expecting(self):
        """Around a request's validation and ``submit``: the worker waits (briefly) for requests on their way."""
        with self._count_lock:
            self._expected += 1
        try:
            yield self
        finally:
            with self._count_lock:
                self._expected -= 1

    def _collect(self, first: Job) -> tuple[list[Job], bool]:
        """``first`` plus everything queued, plus what arrives within the window or is still being validated."""
        jobs, start = [first], time.monotonic()
        while len(jobs) < self.max_batch:
            now = time.monotonic()
            waiting = (
                now < start + self.window_s
                or (self._expected > 0 and now < start + self.max_wait_s)  # on their way: validated now
                or (len(jobs) < self._last_size and now < start + self.max_wait_s)  # as many clients as last time
            )
            try:
                job = self.queue.get(timeout=0.002) if waiting else self.queue.get_nowait()
            except queue.Empty:
                if waiting:
                    continue
                break
            if job is None:
                return jobs, True
            jobs.append(job)
        return jobs, False

    def _loop(self) -> None:
        stop = False
        while not stop:
            first = self.queue.get()
            if first is None:
                return
            jobs, stop = self._collect(first)
            self._last_size = len(jobs)
            groups: dict[tuple, list[Job]] = defaultdict(list)
            for job in jobs:
                if job.future.set_running_or_notify_cancel():  # a client that went away costs nothing
                    groups[job.group_key()].append(job)
            for group in groups.values():
                self._run(group)

    def _run(self, group: list[Job]) -> None:
        start = time.monotonic()
        try:
            results = run_group(group)
        except Exception as e:  # noqa: BLE001 - every waiting request gets the failure
            for job in group:
                job.future.set_exception(e)
        else:
            for job, result in zip(group, results):
                job.future.set_result(result)
        self.last_batch_s = time.monotonic() - start
        self.batches.append(len(group))
