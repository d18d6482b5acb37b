"""What waits for the Engine's worker: admitted jobs and calls, behind one condition variable.

No blocking put anywhere: callers append (or are refused at once with a clear error: queue full,
too many streams, engine closed) and the worker takes. Calls (`Engine._call`: warm-up, prompt
warming) have their own deque, so a job the worker takes while batching is never handed back.
The queue also keeps the worker's heartbeat and the numbers `Engine.health()` reports.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from editx.errors import EngineClosedError, QueueFullError, StreamLimitError
from editx.pipeline.job import Job

REQUEST_S_PRIOR = 2.0  # a first guess of one request's time, before any finished (Retry-After)
RETRY_AFTER_MAX_S = 60.0


class WorkQueue:
    def __init__(self, max_jobs: int, max_streams: int, max_batch: int) -> None:
        self.max_jobs, self.max_streams, self.max_batch = max_jobs, max_streams, max_batch
        self._cv = threading.Condition()
        self._jobs: deque[Job] = deque()
        self._calls: deque[tuple[Callable[[], Any], Future]] = deque()
        self.closed = False
        self.admitted = 0  # jobs admitted and not settled yet (waiting or with the worker)
        self.streams = 0  # streaming jobs admitted and not settled yet
        self.beat_at = time.monotonic()
        self._request_s = REQUEST_S_PRIOR  # moving average of settled requests' time (Retry-After)

    # ---- callers ------------------------------------------------------------------------------
    def admit(self, job: Job) -> None:
        """Queue `job`, or raise at once: EngineClosedError, StreamLimitError, QueueFullError."""
        streaming = job.emit is not None
        with self._cv:
            if self.closed:
                raise EngineClosedError("the engine is closed; it takes no new requests")
            if len(self._jobs) >= self.max_jobs:
                raise QueueFullError(f"the request queue is full ({self.max_jobs} waiting); retry later",
                                     retry_after_s=self.retry_after_s())
            if streaming and self.streams >= self.max_streams:
                raise StreamLimitError(f"{self.streams} streams are open, the limit is {self.max_streams} "
                                       "(max_streams); retry later or use a non-streaming request",
                                       retry_after_s=self.retry_after_s())
            self._jobs.append(job)
            self.admitted += 1
            self.streams += streaming
            self._cv.notify_all()
        t0 = time.monotonic()
        job.future.add_done_callback(lambda _f: self._settled(streaming, time.monotonic() - t0))

    def _settled(self, streaming: bool, seconds: float) -> None:
        with self._cv:
            self.admitted -= 1
            self.streams -= streaming
            self._request_s += 0.2 * (seconds - self._request_s)

    def retry_after_s(self) -> float:
        """When a refused caller may try again: the waiting jobs' share of worker time, 1..60 s."""
        rounds = (len(self._jobs) + self.max_batch - 1) // self.max_batch
        return float(min(RETRY_AFTER_MAX_S, max(1.0, rounds * self._request_s)))

    def call(self, fn: Callable[[], Any]) -> Future:
        """Queue `fn` to run on the worker thread; refused at once when the engine is closed."""
        fut: Future = Future()
        with self._cv:
            if self.closed:
                raise EngineClosedError("the engine is closed; it runs nothing more")
            self._calls.append((fn, fut))
            self._cv.notify_all()
        return fut

    def close(self) -> bool:
        """Stop admitting; False when it was closed already."""
        with self._cv:
            was, self.closed = self.closed, True
            self._cv.notify_all()
        return not was

    # ---- the worker ---------------------------------------------------------------------------
    def beat(self) -> None:
        self.beat_at = time.monotonic()

    def take_calls(self) -> list[tuple[Callable[[], Any], Future]]:
        with self._cv:
            calls, self._calls = list(self._calls), deque()
        return calls

    def take_jobs(self, n: int, streams: int = 0) -> list[Job]:
        """Up to `n` waiting jobs in admission order and, besides them, up to `streams` streaming
        jobs from anywhere in the queue (a scheduler that interleaves streams holds them all)."""
        with self._cv:
            taken, kept = [], deque()
            for job in self._jobs:
                if streams > 0 and job.emit is not None:
                    streams -= 1
                    taken.append(job)
                elif n > 0:
                    n -= 1
                    taken.append(job)
                else:
                    kept.append(job)
            self._jobs = kept
            return taken

    def wait(self, timeout: float | None) -> None:
        """Sleep until there is something to take, the queue closes, or `timeout` passes."""
        with self._cv:
            if not self._jobs and not self._calls and not self.closed:
                self._cv.wait(timeout)

    def drain(self) -> tuple[list[Job], list[tuple[Callable[[], Any], Future]]]:
        """Everything still waiting (the engine is stopping: it fails them)."""
        with self._cv:
            jobs, self._jobs = list(self._jobs), deque()
            calls, self._calls = list(self._calls), deque()
        return jobs, calls

    @property
    def depth(self) -> int:
        return len(self._jobs)

    @property
    def has_work(self) -> bool:
        return bool(self._jobs or self._calls)
