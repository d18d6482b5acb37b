"""The Engine: the one stateful object. Loads a backend, owns the prompt cache and a model worker.

Every public call becomes a job on a bounded queue. A single worker thread owns the models, so
concurrent callers are never interleaved on shared state; it drains up to `max_batch` waiting jobs
and runs them as one round (the editx backend decodes their LM tokens as one batch). Iterated edits
take one round per iteration, feeding each output back as the next input, as upstream does.

Long-form: a clone step whose text is longer than one segment runs one round per sentence segment,
all with the same prompt encoding (and LM voice prefix); an edit of a clip longer than the model's
window runs one round per part cut at silences. The parts are joined as they finish (pauses between
text segments, cross-fades between clip parts). Streaming requests emit the last step's audio as the
backend produces it (chunks while the LM is still generating, with the editx backend).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol

import numpy as np
import torch

from editx.config import EngineConfig
from editx.errors import CancelledError, EditxError, QueueFullError
from editx.pipeline.job import AudioStream, Job
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
from editx.telemetry.log import log_event
from editx.telemetry.metrics import get_metrics
from editx.telemetry.timing import Timeline

log = logging.getLogger(__name__)

_STOP = object()


class Backend(Protocol):
    """What the Engine needs from a model backend (editx = Step-Audio-EditX, lite = Kokoro)."""

    name: str
    feature_version: str  # bumps whenever prompt features change meaning; part of every cache key
    sample_rate: int
    native_speed: bool  # True: the clone round honours `speed` itself; False: a speed edit is appended

    def fingerprint(self) -> str: ...
    def supports_edit(self, edit_type: str) -> bool: ...
    def check(self, request: Request) -> None: ...
    def needs_prompt(self, step: Step) -> bool: ...
    def encode_prompt(self, audio: PromptAudio, timeline: Timeline | None = None) -> Any: ...
    def run_round(self, jobs: list[Job], done: Callable[[Job], None]) -> None: ...
    def warmup(self) -> None: ...


class Engine:
    """Load once, then clone/edit/stream from any thread."""

    def __init__(self, config: EngineConfig, backend: Backend, cache=None) -> None:
        self.config = config
        self.backend = backend
        self.cache = cache
        backend.cache = cache  # backends may keep memory-only attachments (LM prefix KV) there
        self._queue: queue.Queue = queue.Queue(maxsize=config.queue_size)
        self._inflight = 0
        self._lock = threading.Lock()
        self._closed = False
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
        """Queue a request; the Future resolves to a Result. Raises QueueFullError when full.

        `emit` receives the last step's audio as AudioChunks while it is made; with
        `keep_audio=False` the Result then holds no copy of it (long streams in bounded memory).
        `verify` (None: the config's default, False, True or a VerifyPolicy) checks the output and
        retries from outside this worker (editx.verify.chain), as does a request without transcript."""
        from editx.verify.chain import needs_transcript, resolve_policy, submit_checked

        policy = resolve_policy(verify, self.config)
        if policy is not None or needs_transcript(request):
            self.backend.check(request)
            return submit_checked(self, request, policy, emit=emit, keep_audio=keep_audio)
        self.backend.check(request)  # reject unsupported work before it takes a queue slot
        gen = torch.Generator().manual_seed(request.seed if request.seed is not None else _fresh_seed())
        steps = plan_steps(request, native_speed=self.backend.native_speed)
        job = Job(request=request, steps=steps, timeline=Timeline(op=request.op), future=Future(), generator=gen,
                  emit=emit, keep_audio=keep_audio or emit is None)
        job.current = job.source = request.prompt_audio if isinstance(request, CloneRequest) else request.audio
        job.future.job = job  # type: ignore[attr-defined]  # lets callers cancel
        if self._closed:
            raise EditxError("engine is closed")
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFullError(f"the request queue is full ({self.config.queue_size} waiting); retry later",
                                 retry_after_s=1.0) from None
        return job.future

    def stream(self, request: Request, *, verify=None) -> AudioStream:
        """Audio chunks as they are produced (an iterator; `.result` once it is exhausted). Nothing
        keeps a copy of the streamed audio; closing the stream early cancels the request."""
        chunks: queue.Queue = queue.Queue()
        return AudioStream(self.submit(request, emit=chunks.put, keep_audio=False, verify=verify), chunks)

    def warm_prompt(self, audio: PromptAudio) -> str:
        """Encode a prompt into the cache now (voice registration); returns the cache outcome."""
        if self.cache is None:
            return "off"
        _, _, outcome = self._call(lambda: self._cached_encoding(audio))
        return outcome

    def _cached_encoding(self, audio: PromptAudio, timeline: Timeline | None = None):
        """(key, cache entry, outcome) of `audio`'s prompt encoding: the cache, or the backend on a miss."""
        from editx.pipeline.backends import prompt_cache_key

        key = prompt_cache_key(self.backend, audio)
        entry, outcome = self.cache.get_or_compute(
            key, lambda: self.backend.to_entry(self.backend.encode_prompt(audio, timeline)))
        get_metrics().observe_cache_outcome(outcome, self.cache.tiers)
        return key, entry, outcome

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
        future.job.cancelled.set()  # type: ignore[attr-defined]

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    @property
    def alive(self) -> bool:
        """True while the model worker can take requests (not closed, its thread running)."""
        return not self._closed and self._worker.is_alive()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
            self._worker.join(timeout=30)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- worker -------------------------------------------------------------------------------
    def _call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the worker thread (model state is only touched there) and wait for it."""
        fut: Future = Future()
        self._queue.put(("call", fn, fut))
        return fut.result()

    def _run_worker(self) -> None:
        active: list[Job] = []
        while True:
            block = not active
            try:
                item = self._queue.get(block=block)
            except queue.Empty:
                item = None
            if item is _STOP:
                for job in active:
                    _fail(job, EditxError("engine closed"))
                return
            if isinstance(item, tuple):
                _, fn, fut = item
                try:
                    fut.set_result(fn())
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    fut.set_exception(exc)
                continue
            if item is not None:
                active.append(item)
            while len(active) < self.config.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP or isinstance(more, tuple):
                    self._queue.put(more)  # handle it after this round
                    break
                active.append(more)
            active = self._round(active)

    def _round(self, jobs: list[Job]) -> list[Job]:
        """Prepare every job's prompt, run one backend round, settle finished jobs."""
        ready: list[Job] = []
        for job in jobs:
            if job.cancelled.is_set():
                _fail(job, CancelledError("request cancelled by its caller"))
                continue
            try:
                if job.parts is None:
                    self._plan_parts(job)
                self._prepare(job)
                ready.append(job)
            except BaseException as exc:  # noqa: BLE001 - one bad request never stops the worker
                _fail(job, exc)
        if not ready:
            return []
        remaining: list[Job] = []
        settled: set[int] = set()

        def done(job: Job) -> None:  # the backend calls this as soon as a job's round is over
            if id(job) not in settled:
                settled.add(id(job))
                if self._advance(job):
                    remaining.append(job)

        try:
            self.backend.run_round(ready, done)
        except BaseException as exc:  # noqa: BLE001
            log.exception("backend round failed") if not isinstance(exc, EditxError) else None
            for job in ready:
                if id(job) not in settled:
                    _fail(job, exc)
            return remaining
        for job in ready:
            done(job)
        return remaining

    def _advance(self, job: Job) -> bool:
        """After a round: close the part (and the step), settle a finished request; True when the job
        has another round to run (the next part, or the next step)."""
        if job.future.done():  # the backend failed or cancelled this one alone
            return False
        try:
            job.end_part()
            if job.part + 1 < len(job.parts):  # the next text segment or clip part of this step
                job.part += 1
                self._enter_part(job)
                return True
            job.output = job.end_step()
        except BaseException as exc:  # noqa: BLE001
            _fail(job, exc)
            return False
        job.iteration += 1
        job.parts = None
        if job.iteration < len(job.steps):
            job.current = job.source = PromptAudio(job.output, self.backend.sample_rate)
            job.prompt = None
            return True
        self._finish(job)
        return False

    def _plan_parts(self, job: Job) -> None:
        from editx.pipeline.longform import plan_parts

        parts, pause = plan_parts(job.steps[job.iteration], job.source, self.config, self.backend)
        job.begin_step(parts, self.backend.sample_rate, pause)
        self._enter_part(job)

    @staticmethod
    def _enter_part(job: Job) -> None:
        """Point the job at its current part: a clip part is a new input (new prompt); a text
        segment keeps the step's input and its prompt encoding."""
        audio = job.parts[job.part][1]
        if audio is not None:
            job.current, job.prompt = audio, None
        elif job.current is not job.source:
            job.current, job.prompt = job.source, None

    def _prepare(self, job: Job) -> None:
        """Prompt encoding for this round, through the cache (first round only: later rounds'
        inputs are this request's own intermediate outputs, which nobody will ask for again)."""
        if job.prompt is not None:
            return
        if not self.backend.needs_prompt(job.step):
            return
        tl = job.timeline
        if job.iteration > 0 or self.cache is None or job.current is not job.source:
            with tl.stage("prompt_encode", cache="off" if self.cache is None else "bypass"):
                job.prompt = self.backend.encode_prompt(job.current, tl)
            return
        with tl.stage("prompt_encode") as st:
            job.cache_key, entry, outcome = self._cached_encoding(job.current, tl)
            st["cache"] = outcome
        tl.set_cache("prompt", outcome)
        job.prompt = self.backend.from_entry(entry)

    def _finish(self, job: Job) -> None:
        audio = job.output
        snap = job.timeline.finish(audio_s=job.output_samples / self.backend.sample_rate, lm_tokens=job.lm_tokens)
        timeline = snap.to_dict()
        result = Result(audio=audio, sample_rate=self.backend.sample_rate, timeline=timeline,
                        backend=self.backend.name, lm_tokens=job.lm_tokens, iterations=job.rounds)
        get_metrics().observe_timeline(timeline, backend=self.backend.name, status="ok")
        log_event(log, "request", op=job.request.op, backend=self.backend.name, status="ok",
                  audio_s=round(snap.audio_s or 0.0, 3), total_s=round(snap.total_s, 3),
                  rtf=None if snap.rtf is None else round(snap.rtf, 3), cache=dict(snap.cache),
                  lm_tokens=job.lm_tokens, rounds=len(job.rounds))
        job.future.set_result(result)


def _fail(job: Job, exc: BaseException) -> None:
    if job.future.done():
        return
    status = "cancelled" if isinstance(exc, CancelledError) else "error"
    if not isinstance(exc, EditxError):
        log.error("request failed: %s", exc, exc_info=exc)
    log_event(log, "request", op=job.request.op, status=status, error=str(exc))
    get_metrics().observe_timeline(job.timeline.finish().to_dict(), status=status)
    job.future.set_exception(exc)


def _fresh_seed() -> int:
    return int.from_bytes(np.random.default_rng().bytes(7), "little")
