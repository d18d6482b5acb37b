"""A request in flight: its plan of rounds, its state between rounds, and how its audio leaves.

The Engine's worker owns every Job; backends read the current step and input from it and hand
audio back through it (`output` after a round, or `feed` while streaming). The job joins the parts
of a long-form step (StreamJoiner) and, for a streaming request, emits the last step's audio as
AudioChunks as soon as it is final; an AudioStream hands those chunks to their consumer.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from editx.audio.stretch import time_stretch
from editx.errors import CancelledError
from editx.pipeline.splice import StreamJoiner
from editx.pipeline.types import AudioChunk, PromptAudio, Request, Result, Step
from editx.telemetry.timing import Timeline


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
    iteration: int = 0
    current: PromptAudio | None = None  # the input of the current round (the whole clip, or a part of it)
    source: PromptAudio | None = None  # the input of the current step
    prompt: Any = None  # the backend's prompt encoding for `current`
    cache_key: str | None = None  # prompt-cache key of the first round's input
    output: np.ndarray | None = None  # the output of the latest finished round
    lm_tokens: int = 0
    rounds: list[dict[str, Any]] = field(default_factory=list)
    enqueued_at: float = field(default_factory=time.perf_counter)
    # long-form: the current step cut into parts (text segments or clip parts), one round each
    parts: list[tuple[Step, PromptAudio | None]] | None = None
    part: int = 0
    sample_rate: int = 0
    fed: bool = False  # the backend already fed this round's audio (streamed it)
    flow_prime: tuple[Any, Any] | None = None  # (prompt encoding, the backend's streaming prime for it)
    chunks: int = 0  # AudioChunks emitted so far
    emitted_samples: int = 0  # samples in those chunks
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
            raise CancelledError("request cancelled by its caller")

    def begin_step(self, parts: list[tuple[Step, PromptAudio | None]], sample_rate: int, pause_s: float) -> None:
        self.parts, self.part, self.sample_rate = parts, 0, sample_rate
        self._joiner, self._joined = StreamJoiner(sample_rate, pause_s=pause_s), []

    def feed(self, samples: np.ndarray) -> None:
        """The next final samples of this round's output (backends call this to stream)."""
        self.fed = True
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
            self.emit(AudioChunk(samples, self.sample_rate, index=self.chunks, final=final))
            self.chunks += 1
            self.emitted_samples += samples.size

    @property
    def output_samples(self) -> int:
        """Samples of the request's final output, kept or streamed away."""
        return self.output.size if self.output is not None and self.output.size else self.emitted_samples


_END = object()  # put on an AudioStream's queue once its request is settled


class AudioStream(Iterator[AudioChunk]):
    """A streaming request's AudioChunks in order. When they are exhausted, `result` holds the
    request's Result (timeline, duration; its `audio` is empty), or iterating raises its error.
    `close()` (or leaving a `with` block) before the end cancels the request at its next token."""

    def __init__(self, future: Future, chunks: queue.Queue) -> None:
        """`chunks` is the queue the request's `emit` puts its AudioChunks on."""
        self.future, self._chunks = future, chunks
        self.result: Result | None = None
        future.add_done_callback(lambda _f: chunks.put(_END))

    def __next__(self) -> AudioChunk:
        if self.result is not None:
            raise StopIteration
        item = self._chunks.get()
        if item is _END:
            self.result = self.future.result()  # the request's error, if any
            raise StopIteration
        return item

    def close(self) -> None:
        if not self.future.done():
            self.future.job.cancelled.set()  # type: ignore[attr-defined]

    def __enter__(self) -> AudioStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # a consumer that dropped the stream went away
        self.close()
