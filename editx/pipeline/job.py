"""A request in flight: its plan of rounds, its state between rounds, and how its audio leaves.

The Engine's worker owns every Job; backends read the current step and input from it and hand
audio back through it (`output` after a round, or `feed` while streaming). The job joins the parts
of a long-form step (StreamJoiner) and, for a streaming request, emits the last step's audio as
AudioChunks as soon as it is final; an AudioStream hands those chunks to their consumer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from editx.audio.stretch import time_stretch
from editx.errors import CancelledError, EditxError, StreamBackpressureError
from editx.pipeline.splice import StreamJoiner
from editx.pipeline.types import AudioChunk, PromptAudio, Request, Result, Step
from editx.telemetry.log import log_event
from editx.telemetry.metrics import get_metrics
from editx.telemetry.timing import Timeline

log = logging.getLogger(__name__)


def _nothing() -> None:
    pass


@dataclass
class Job:
    """One request in flight. Only the worker thread touches its mutable fields."""

    request: Request
    steps: tuple[Step, ...]
    timeline: Timeline
    future: Future
    generator: torch.Generator
    emit: Callable[[AudioChunk], None] | None = None  # set for streaming requests
    keep_audio: bool = True  # False: a streamed last step keeps no copy of its audio (memory stays bounded)
    cancelled: threading.Event = field(default_factory=threading.Event)
    cancel_error: EditxError | None = None  # why it was cancelled, when not by its caller
    backend: str = "unknown"  # the backend's name, for the request's log line and metrics
    heartbeat: Callable[[], None] = _nothing  # the Engine's: backends' long loops call it as they progress
    buffer: ChunkBuffer | None = None  # an AudioStream's unread chunks (backpressure between rounds)
    solo: bool = False  # run alone next round (its batch failed as a whole; this finds out whose fault)
    cache_wait_since: float | None = None  # parked: another process is computing its prompt encoding
    iteration: int = 0
    current: PromptAudio | None = None  # the input of the current round (the whole clip, or a part of it)
    source: PromptAudio | None = None  # the input of the current step
    prompt: Any = None  # the backend's prompt encoding for `current`
    cache_key: str | None = None  # prompt-cache key of the first round's input
    output: np.ndarray | None = None  # the output of the latest finished round
    lm_tokens: int = 0
    rounds: list[dict[str, Any]] = field(default_factory=list)
    enqueued_at: float = field(default_factory=time.perf_counter)
    admitted_at: float = field(default_factory=time.monotonic)
    # long-form: the current step cut into parts (text segments or clip parts), one round each
    parts: list[tuple[Step, PromptAudio | None]] | None = None
    part: int = 0
    sample_rate: int = 0
    fed: bool = False  # the backend already fed this round's audio (streamed it)
    flow_prime: tuple[Any, Any] | None = None  # (prompt encoding, the backend's streaming prime for it)
    chunks: int = 0  # AudioChunks emitted so far
    emitted_samples: int = 0  # samples in those chunks
    # unit-by-unit rounds (a backend with `unit_rounds`; the Engine's scheduler picks whose unit runs)
    units: Any = None  # the backend's state of the current part between units (None: not started)
    yielded: bool = False  # the last round ran one unit of the part and more remain
    next_unit: tuple[str, float] | None = None  # (kind, size) of the next unit, when the backend knows it
    ran_unit: tuple[str, float] | None = None  # (kind, size) of the unit the last round ran
    unit_share: int = 1  # new streams starting together: a first unit is cut this many times smaller
    first_audio_at: float | None = None  # monotonic time its first streamed audio went out
    last_unit_at: float | None = None  # monotonic time its last round ended
    _joiner: StreamJoiner | None = None
    _joined: list[np.ndarray] = field(default_factory=list)

    @property
    def step(self) -> Step:
        if self.parts:
            return self.parts[self.part][0]
        return self.steps[self.iteration]

    @property
    def streaming(self) -> bool:
        """True while this job's audio goes to a stream consumer (the last step of a streaming request)."""
        return self.emit is not None and self.iteration == len(self.steps) - 1

    def check_cancelled(self) -> None:
        if self.cancelled.is_set():
            raise self.cancel_error or CancelledError("request cancelled by its caller")

    def cancel(self, error: EditxError | None = None) -> None:
        """Stop this request at its next check (any thread); `error` says why (default: its caller)."""
        if error is not None and self.cancel_error is None:
            self.cancel_error = error
        self.cancelled.set()

    def fail(self, exc: BaseException) -> None:
        """Settle this request with `exc`: logged once and counted once, wherever it failed (the
        Engine, a backend's round, an emit to the consumer). A settled request is left alone."""
        if self.future.done():
            return
        status = "cancelled" if isinstance(exc, CancelledError) else "error"
        if not isinstance(exc, EditxError):
            log.error("request failed: %s", exc, exc_info=exc)
        log_event(log, "request", op=self.request.op, backend=self.backend, status=status,
                  error=str(exc), error_type=type(exc).__name__)
        get_metrics().observe_timeline(self.timeline.finish().to_dict(), backend=self.backend, status=status)
        try:
            self.future.set_exception(exc)
        except Exception:  # noqa: BLE001 - settled by another thread in between (close after its grace)
            pass

    def begin_step(self, parts: list[tuple[Step, PromptAudio | None]], sample_rate: int, pause_s: float) -> None:
        self.parts, self.part, self.sample_rate = parts, 0, sample_rate
        self._joiner, self._joined = StreamJoiner(sample_rate, pause_s=pause_s), []

    def feed(self, samples: np.ndarray) -> None:
        """The next final samples of this round's output (backends call this to stream)."""
        self.fed = True
        self.heartbeat()
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if self.step.stretch != 1.0 and samples.size:
            # the part of OpenAI `speed` the backend's own synthesis cannot reach (types.split_speed)
            samples = time_stretch(samples, self.sample_rate, self.step.stretch)
        self._out(self._joiner.feed(samples))

    def end_part(self) -> None:
        if not self.fed:
            self.feed(self.output)
        self._out(self._joiner.end_part())
        self.fed = False

    def end_step(self) -> np.ndarray:
        """Close the step; returns its whole (joined) output."""
        self._out(self._joiner.finish(), final=True)
        out = np.concatenate(self._joined) if self._joined else np.zeros(0, np.float32)
        self._joined, self._joiner = [], None
        return out

    def _out(self, samples: np.ndarray, final: bool = False) -> None:
        if samples.size and (self.keep_audio or not self.streaming):
            self._joined.append(samples)
        if self.streaming and (samples.size or final):
            if self.chunks == 0:
                self.timeline.mark("first_audio")
                self.first_audio_at = time.monotonic()
            self.emit(AudioChunk(samples, self.sample_rate, index=self.chunks, final=final))
            self.chunks += 1
            self.emitted_samples += samples.size

    @property
    def output_samples(self) -> int:
        """Samples of the request's final output, kept or streamed away."""
        return self.output.size if self.output is not None and self.output.size else self.emitted_samples


class ChunkBuffer:
    """A stream's chunks between the worker (push, never blocks) and its consumer (get).

    Bounded in seconds of audio: the Engine pauses a request between rounds while more than
    `pause_s` of its audio waits unread; a push that would leave more than `limit_s` unread (the
    consumer fell that far behind within one round) cancels the request with a clear error
    instead of buffering without bound. `listener` (optional) is called after every push and at the
    end, from the producing thread, so an event loop can wait without holding a thread per stream.
    """

    def __init__(self, pause_s: float, limit_s: float) -> None:
        self.pause_s, self.limit_s = pause_s, limit_s
        self._items: deque = deque()
        self._cv = threading.Condition()
        self._unread = 0.0  # seconds of audio pushed and not read yet
        self._read_at = time.monotonic()
        self._ended = False
        self.listener: Callable[[], None] | None = None
        self.job: Job | None = None

    def push(self, chunk: AudioChunk) -> None:
        seconds = chunk.samples.size / chunk.sample_rate
        with self._cv:
            if self._unread + seconds > self.limit_s and self.job is not None:
                over = self._unread + seconds
                self.job.cancel(StreamBackpressureError(
                    f"the stream's reader fell {over:.1f} s of audio behind (the limit is {self.limit_s:.0f} s); "
                    "read the stream faster or use a non-streaming request"))
                return
            self._items.append(chunk)
            self._unread += seconds
            self._cv.notify_all()
        self._notify()

    def end(self) -> None:
        with self._cv:
            self._ended = True
            self._cv.notify_all()
        self._notify()

    def _notify(self) -> None:
        if self.listener is not None:
            self.listener()

    def get(self, timeout: float | None = None) -> AudioChunk | None | object:
        """The next chunk; `_END` once the request is settled and every chunk was read; None when
        nothing came within `timeout` (0: do not wait)."""
        with self._cv:
            if not self._items and not self._ended and timeout != 0:
                self._cv.wait_for(lambda: self._items or self._ended, timeout)
            self._read_at = time.monotonic()
            if self._items:
                chunk = self._items.popleft()
                self._unread = max(0.0, self._unread - chunk.samples.size / chunk.sample_rate)
                return chunk
            return _END if self._ended else None

    @property
    def unread_s(self) -> float:
        return self._unread

    @property
    def paused(self) -> bool:
        """True while the reader is more than `pause_s` of audio behind."""
        return self._unread > self.pause_s

    @property
    def idle_s(self) -> float:
        """Seconds since the reader last asked for a chunk."""
        return time.monotonic() - self._read_at


_END = object()  # a ChunkBuffer's answer once its request is settled and every chunk was read


class AudioStream(Iterator[AudioChunk]):
    """A streaming request's AudioChunks in order. When they are exhausted, `result` holds the
    request's Result (timeline, duration; its `audio` is empty), or iterating raises its error.
    `close()` (or leaving a `with` block) before the end cancels the request at its next token.

    Blocking iteration suits a thread; an event loop can instead set `on_ready(callback)` (called
    from the worker thread on every chunk and at the end) and read with `next_nowait()`."""

    def __init__(self, future: Future, buffer: ChunkBuffer) -> None:
        self.future, self._buffer = future, buffer
        self.result: Result | None = None
        future.add_done_callback(lambda _f: buffer.end())

    def __next__(self) -> AudioChunk:
        return self._take(None)

    def next_nowait(self) -> AudioChunk | None:
        """The next chunk if one is waiting, None if not yet; StopIteration (or the request's error)
        at the end, as `next()`."""
        return self._take(0)

    def on_ready(self, callback: Callable[[], None]) -> None:
        self._buffer.listener = callback
        if self.future.done() or self._buffer.unread_s:
            callback()

    def _take(self, timeout: float | None) -> AudioChunk | None:
        if self.result is not None:
            raise StopIteration
        item = self._buffer.get(timeout)
        if item is _END:
            self.result = self.future.result()  # the request's error, if any
            raise StopIteration
        return item

    def close(self) -> None:
        if not self.future.done():
            self.future.job.cancel()  # type: ignore[attr-defined]

    def __enter__(self) -> AudioStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # a consumer that dropped the stream went away
        self.close()
