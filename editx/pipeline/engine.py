"""The Engine: the one stateful object. Loads a backend, owns the prompt cache and a model worker.

Every public call becomes a job on a bounded queue (admission.py: refused at once when full, over
the stream limit or closed; never a blocking put). A single worker thread owns the models, so
concurrent callers are never interleaved on shared state; it drains up to `max_batch` waiting jobs
and runs them as one round (the editx backend decodes their LM tokens as one batch). Iterated edits
take one round per iteration, feeding each output back as the next input, as upstream does.

Long-form: a clone step whose text is longer than one segment runs one round per sentence segment,
all with the same prompt encoding (and LM voice prefix); an edit of a clip longer than the model's
window runs one round per part cut at silences. The parts are joined as they finish (pauses between
text segments, cross-fades between clip parts). Streaming requests emit the last step's audio as the
backend produces it (chunks while the LM is still generating, with the editx backend).

Containment: a request is checked before admission (`check`), fails alone wherever it fails
(rounds.py), and gives back everything it holds; `health()` reports a stuck worker (heartbeat);
`close(grace_s)` drains admitted work, then fails what is left with a clear error.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol

import numpy as np
import torch

from editx.cache.tiered import CacheBusy
from editx.config import EngineConfig
from editx.errors import CancelledError, EngineClosedError, StreamBackpressureError, ValidationError
from editx.pipeline.admission import WorkQueue
from editx.pipeline.job import AudioStream, ChunkBuffer, Job
from editx.pipeline.rounds import Rounds
from editx.pipeline.scheduler import StreamScheduler
from editx.pipeline.types import (
    AudioChunk,
    CloneRequest,
    EditRequest,
    PromptAudio,
    Request,
    Result,
    Step,
    plan_steps,
)
from editx.telemetry.metrics import get_metrics
from editx.telemetry.timing import Timeline

log = logging.getLogger(__name__)

PARKED_POLL_S = 0.05  # how often the worker looks again when every job it holds is parked
CLOSE_MARGIN_S = 10.0  # after the grace period: time for a cancelled round to stop at its next token
STREAM_LIMIT_FACTOR = 4  # a stream more than this many times stream_buffer_s behind is cancelled


class Backend(Protocol):
    """Everything the Engine (and long-form planning) uses of a model backend (editx =
    Step-Audio-EditX, lite = Kokoro). No attribute is probed: every backend defines all of them."""

    name: str
    feature_version: str  # bumps whenever prompt features change meaning; part of every cache key
    sample_rate: int
    native_speed: bool  # True: the clone round honours `speed` itself; False: a speed edit is appended
    segments_text: bool  # True: the Engine splits long clone texts into sentence segments
    edit_window_s: float | None  # clips longer than this are edited in parts (None: any length)
    # True: a round runs one unit (e.g. a piece) of each job and sets job.yielded while more remain,
    # so the Engine picks whose unit runs next (stream_schedule); False: a round runs whole parts
    unit_rounds: bool
    unit_prior: tuple[float, float]  # (seconds per unit size before any was measured, a first unit's size)
    cache: Any  # set by the Engine: its prompt cache (backends keep memory-only attachments there)

    def fingerprint(self) -> str: ...
    def supports_edit(self, edit_type: str) -> bool: ...
    def check(self, request: Request) -> None: ...  # raise before admission for what it cannot run
    def needs_prompt(self, step: Step) -> bool: ...
    def encode_prompt(self, audio: PromptAudio, timeline: Timeline | None = None) -> Any: ...
    def to_entry(self, encoding: Any) -> Any: ...  # prompt encoding -> cache.CacheEntry
    def from_entry(self, entry: Any) -> Any: ...  # cache.CacheEntry -> prompt encoding
    # One round for every job: settle a job alone with job.fail(exc) when it fails, call done(job)
    # as each one's round is over, and job.heartbeat() / job.feed() in long loops.
    def run_round(self, jobs: list[Job], done: Callable[[Job], None]) -> None: ...
    def warmup(self) -> None: ...


class Engine:
    """Load once, then clone/edit/stream from any thread."""

    def __init__(self, config: EngineConfig, backend: Backend, cache=None) -> None:
        self.config = config
        self.backend = backend
        self.cache = cache
        backend.cache = cache  # backends may keep memory-only attachments (LM prefix KV) there
        self._q = WorkQueue(config.queue_size, config.max_streams, config.max_batch)
        self._active: list[Job] = []  # the worker's jobs, settled ones pruned after every round
        self._deadline: float | None = None  # set by close(): drain until then, then fail the rest
        joiners = None if backend.unit_rounds or config.stream_schedule != "fair" else self._joiners
        self._rounds = Rounds(config, backend, cache, self._q.beat, joiners)
        self._sched = StreamScheduler(config.stream_schedule, backend.sample_rate, *backend.unit_prior)
        self.ready = False
        self._worker = threading.Thread(target=self._run_worker, name="editx-worker", daemon=True)
        self._worker.start()

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def load(cls, config: EngineConfig | None = None) -> Engine:
        """Pick and load the backend named by the config (editx when a model dir is set, else lite)."""
        from editx.pipeline.backends import load_backend, make_cache

        config = config or EngineConfig.from_env()
        if config.threads:
            torch.set_num_threads(config.threads)
        backend = load_backend(config)
        log.info("engine loaded", extra={"backend": backend.name, "model_dir": str(config.model_dir)})
        engine = cls(config, backend, make_cache(config))
        if config.warmup:
            engine.warmup()
        engine.ready = True
        return engine

    def warmup(self) -> dict[str, Any]:
        """Run dummy work through every stage so the first real request pays no one-time costs."""
        t0 = time.perf_counter()
        self._call(self.backend.warmup)
        cost = time.perf_counter() - t0
        log.info("warm-up done", extra={"warmup_s": round(cost, 3), "backend": self.backend.name})
        self.ready = True
        return {"backend": self.backend.name, "warmup_s": cost}

    # ---- public API ---------------------------------------------------------------------------
    def clone(self, prompt_audio: PromptAudio, prompt_text: str, text: str, *, seed: int | None = None,
              sampling=None, speed: float = 1.0, edit_type: str | None = None, edit_info: str | None = None,
              iterations: int = 1) -> Result:
        """Speak `text` in the prompt's voice (optionally followed by an edit, `iterations` times)."""
        return self.run(CloneRequest(prompt_audio, prompt_text, text, seed=seed, sampling=sampling, speed=speed,
                                     edit_type=edit_type, edit_info=edit_info, iterations=iterations))

    def edit(self, audio: PromptAudio, audio_text: str, edit_type: str, info: str | None = None, *,
             text: str | None = None, iterations: int = 1, seed: int | None = None, sampling=None) -> Result:
        return self.run(EditRequest(audio, audio_text, edit_type, info, text=text, iterations=iterations,
                                    seed=seed, sampling=sampling))

    def run(self, request: Request, timeout: float | None = None, *, verify=None) -> Result:
        return self.submit(request, verify=verify).result(timeout=timeout)

    def submit(self, request: Request, emit: Callable[[AudioChunk], None] | None = None, *,
               keep_audio: bool = True, verify=None) -> Future:
        """Queue a request; the Future resolves to a Result. Refused at once, before it takes a
        queue slot: ValidationError / BackendUnsupportedError (what the request itself can be checked
        for), QueueFullError (retry after `.retry_after_s`), StreamLimitError, EngineClosedError.

        `emit` receives the last step's audio as AudioChunks while it is made (on the worker thread:
        it must not block); with `keep_audio=False` the Result then holds no copy of it.
        `verify` (None: the config's default, False, True or a VerifyPolicy) checks the output and
        retries from outside this worker (editx.verify.chain), as does a request without transcript."""
        if (checked := self._checked(request, emit, keep_audio, verify)) is not None:
            return checked
        return self._admit(request, emit, keep_audio, None).future

    def stream(self, request: Request, *, verify=None) -> AudioStream:
        """Audio chunks as they are produced (an iterator; `.result` once it is exhausted). Nothing
        keeps a copy of the streamed audio; closing the stream early cancels the request.

        Backpressure: the worker never waits for a reader. While more than `stream_buffer_s` of
        audio waits unread, the request is paused between rounds (long-form parts, iterations);
        a reader more than STREAM_LIMIT_FACTOR times that far behind within one round, or one that
        reads nothing for `stream_stall_s` while paused, gets StreamBackpressureError."""
        buffer = ChunkBuffer(self.config.stream_buffer_s, STREAM_LIMIT_FACTOR * self.config.stream_buffer_s)
        if (checked := self._checked(request, buffer.push, False, verify, buffer)) is not None:
            return AudioStream(checked, buffer)
        job = self._admit(request, buffer.push, False, buffer)
        return AudioStream(job.future, buffer)

    def _checked(self, request: Request, emit, keep_audio: bool, verify, buffer=None) -> Future | None:
        """The future of a verified (or transcript-less) request, run as a chain of ordinary
        submits by editx.verify.chain; None for a plain request."""
        from editx.verify.chain import needs_transcript, resolve_policy, submit_checked

        policy = resolve_policy(verify, self.config)
        if policy is None and not needs_transcript(request):
            return None
        self.check(request)
        return submit_checked(self, request, policy, emit=emit, keep_audio=keep_audio, buffer=buffer)

    def _admit(self, request: Request, emit, keep_audio: bool, buffer: ChunkBuffer | None) -> Job:
        self.check(request)  # everything the request can be checked for, before it takes a slot
        gen = torch.Generator().manual_seed(request.seed if request.seed is not None else _fresh_seed())
        steps = plan_steps(request, native_speed=self.backend.native_speed)
        job = Job(request=request, steps=steps, timeline=Timeline(op=request.op), future=Future(), generator=gen,
                  emit=emit, keep_audio=keep_audio or emit is None, backend=self.backend.name,
                  heartbeat=self._q.beat, buffer=buffer)
        job.current = job.source = _input_of(request)
        job.future.job = job  # type: ignore[attr-defined]  # lets callers cancel
        if buffer is not None:
            buffer.job = job
        self._q.admit(job)
        self._gauges()
        return job

    def check(self, request: Request) -> None:
        """Raise ValidationError / BackendUnsupportedError for a request this engine would refuse:
        input audio shorter than `min_prompt_s`, a clone prompt longer than `max_prompt_s`, an
        edit input longer than `max_audio_seconds`, and whatever the backend cannot run (for
        editx: a prompt too long for the LM window)."""
        audio, cfg = _input_of(request), self.config
        what = "prompt audio" if isinstance(request, CloneRequest) else "audio to edit"
        if audio.duration_s < cfg.min_prompt_s:
            raise ValidationError(f"the {what} is {audio.duration_s:.2f} s; the minimum is {cfg.min_prompt_s:g} s "
                                  "(min_prompt_s): record a longer clip")
        limit, name = ((cfg.max_prompt_s, "max_prompt_s") if isinstance(request, CloneRequest)
                       else (cfg.max_audio_seconds, "max_audio_seconds"))
        if audio.duration_s > limit:
            raise ValidationError(f"the {what} is {audio.duration_s:.1f} s; the maximum is {limit:g} s ({name}): "
                                  "use a shorter clip")
        self.backend.check(request)

    def warm_prompt(self, audio: PromptAudio) -> str:
        """Encode a prompt into the cache now (voice registration); returns the cache outcome.
        While another process computes the same entry, this waits here, on the caller's thread,
        never on the worker's (up to the cache's lock_wait_s, then computes it itself)."""
        if self.cache is None:
            return "off"
        started = time.monotonic()
        while True:
            force = time.monotonic() - started >= self.cache.lock_wait_s
            try:
                _, _, outcome = self._call(lambda force=force: self._rounds.cached_encoding(audio, force=force))
                return outcome
            except CacheBusy:
                time.sleep(self.cache.poll_s)

    def describe(self) -> dict[str, Any]:
        """What is loaded: backend, model dir, output rate (for /v1/models, the UI, logs)."""
        return {"backend": self.backend.name, "model_dir": str(self.config.model_dir or ""),
                "sample_rate": self.backend.sample_rate, "ready": self.ready}

    def edit_options(self) -> dict[str, Any]:
        """Edit types and values this backend can run (all upstream ones for editx)."""
        from editx.lm.prompts import EDIT_OPTIONS

        return {t: list(v) for t, v in EDIT_OPTIONS.items() if self.backend.supports_edit(t)}

    @staticmethod
    def cancel(future: Future) -> None:
        future.job.cancel()  # type: ignore[attr-defined]

    @property
    def queue_depth(self) -> int:
        """Requests admitted and not yet taken by the worker."""
        return self._q.depth

    def health(self) -> dict[str, Any]:
        """The worker's state for /healthz: `alive` (running, not closed, not stuck), `stuck` (no
        progress for more than `stuck_after_s` while requests are pending), `heartbeat_age_s`,
        `queue_depth` (waiting), `in_flight` (with the worker), `streams` (open streaming requests)."""
        age = time.monotonic() - self._q.beat_at
        stuck = self._q.admitted > 0 and age > self.config.stuck_after_s
        running = self._worker.is_alive()
        return {"alive": running and not self._q.closed and not stuck, "stuck": stuck, "closed": self._q.closed,
                "worker_running": running, "heartbeat_age_s": round(age, 3), "queue_depth": self._q.depth,
                "in_flight": max(0, self._q.admitted - self._q.depth), "streams": self._q.streams}

    @property
    def alive(self) -> bool:
        """True while the model worker can take requests: not closed, its thread running, not stuck."""
        return bool(self.health()["alive"])

    def close(self, grace_s: float | None = None) -> None:
        """Stop admitting at once; let admitted requests finish for up to `grace_s` seconds (default
        `close_grace_s`), then fail what is left with EngineClosedError. Returns once the worker
        stopped (or could not be stopped within CLOSE_MARGIN_S more; its requests are failed anyway)."""
        grace = self.config.close_grace_s if grace_s is None else max(0.0, grace_s)
        if self._q.close() or self._deadline is None:  # (None: the worker stopped on its own)
            self._deadline = time.monotonic() + grace
            log.info("engine closing", extra={"grace_s": grace, "pending": self._q.admitted})
        self._worker.join(timeout=max(0.0, self._deadline - time.monotonic()) + 0.1)
        if self._worker.is_alive():  # a round still runs: stop it at its next token
            for job in list(self._active):
                job.cancel(self._closed_error(grace))
            self._worker.join(timeout=CLOSE_MARGIN_S)
        if self._worker.is_alive():
            log.error("the engine's worker did not stop; failing its requests from here")
            self._fail_everything(self._closed_error(grace))

    def _closed_error(self, grace: float | None = None) -> EngineClosedError:
        g = self.config.close_grace_s if grace is None else grace
        return EngineClosedError(f"the engine closed before this request finished (grace period {g:g} s); retry")

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- worker -------------------------------------------------------------------------------
    def _call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the worker thread (model state is only touched there) and wait for it.
        Raises EngineClosedError at once on a closed engine, or if the worker stops meanwhile."""
        return self._q.call(fn).result()

    def _run_worker(self) -> None:
        error: BaseException | None = None
        try:
            while True:
                self._q.beat()
                for fn, fut in self._q.take_calls():
                    _run_call(fn, fut)
                if self._deadline is not None and (time.monotonic() >= self._deadline or
                                                   not (self._active or self._q.has_work)):
                    break
                batch = self._next_batch()
                if batch:
                    t0 = time.perf_counter()
                    self._rounds.run(batch)
                    if self.backend.unit_rounds and len(batch) == 1:
                        self._sched.measured(batch[0], time.perf_counter() - t0)
                    self._active[:] = [j for j in self._active if not j.future.done()]
                else:
                    self._q.wait(PARKED_POLL_S if self._active else None)
                self._gauges()
        except BaseException as exc:  # noqa: BLE001 - a bug in the loop: fail everything, never hang
            error = exc
            log.exception("the engine's worker stopped")
        finally:
            self._q.close()
            if error is None:
                self._fail_everything(self._closed_error())
            else:
                self._fail_everything(EngineClosedError(f"the engine's worker stopped ({error!r}); retry"))
            self._gauges()

    def _next_batch(self) -> list[Job]:
        """The jobs for the next round: a job marked solo alone; otherwise the runnable held jobs
        (not paused by their reader, not settled meanwhile) topped up from the queue to max_batch."""
        runnable = []
        for job in self._active:
            if job.future.done():
                continue
            if job.cancelled.is_set():
                job.fail(job.cancel_error or CancelledError("request cancelled by its caller"))
            elif job.buffer is not None and job.buffer.paused:
                if job.buffer.idle_s > self.config.stream_stall_s:
                    job.fail(StreamBackpressureError(
                        f"the stream's reader read nothing for {job.buffer.idle_s:.0f} s with "
                        f"{job.buffer.unread_s:.1f} s of audio waiting (stream_stall_s); the request was cancelled"))
            else:
                runnable.append(job)
        solo = next((j for j in runnable if j.solo), None)
        if solo is not None:
            return [solo]
        if self.backend.unit_rounds:  # hold every stream and up to max_batch others; run one unit
            offline = sum(j.emit is None for j in runnable)
            new = self._q.take_jobs(max(0, self.config.max_batch - offline), streams=self.config.max_streams)
            self._active.extend(new)
            return self._sched.order(runnable + new, 1)
        batch = self._sched.order(runnable, self.config.max_batch)
        new = self._q.take_jobs(self.config.max_batch - len(batch))
        self._active.extend(new)
        return batch + new

    def _joiners(self, n: int) -> list[Job]:
        """Up to `n` streams waiting in the queue, to join the round under way (a backend that
        decodes step by step asks between steps): a new listener need not wait for the round's end."""
        if self._deadline is not None:  # closing: admitted work drains round by round
            return []
        new = self._q.take_jobs(0, streams=n)
        self._active.extend(new)
        return new

    def _fail_everything(self, exc: EngineClosedError) -> None:
        jobs, calls = self._q.drain()
        for job in list(self._active) + jobs:
            job.fail(exc)
        for _fn, fut in calls:
            if not fut.done():
                fut.set_exception(exc)

    def _gauges(self) -> None:
        m = get_metrics()
        m.queue_depth.set(self._q.depth)
        m.in_flight.set(max(0, self._q.admitted - self._q.depth))

def _run_call(fn: Callable[[], Any], fut: Future) -> None:
    try:
        fut.set_result(fn())
    except BaseException as exc:  # noqa: BLE001 - handed to the caller
        fut.set_exception(exc)


def _input_of(request: Request) -> PromptAudio:
    return request.prompt_audio if isinstance(request, CloneRequest) else request.audio


def _fresh_seed() -> int:
    return int.from_bytes(np.random.default_rng().bytes(7), "little")
