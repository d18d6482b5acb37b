"""Verified requests: run → check on the verification thread → regenerate with a new seed → best attempt.

This wraps the Engine from outside its worker: each attempt is an ordinary `Engine.submit` of the
request with another seed; when one settles, its output is transcribed and its voice embedded on a
small verification thread (never the model worker), and the next attempt, if any, is queued from
there. The caller holds one Future for the whole chain, cancellable like any Engine future.

A request without its transcript (`prompt_text` / `audio_text` None) first has its input clip
transcribed by the same ASR; the transcript is returned in `Result.input_transcript`.

Streams are checked after the fact: their audio has reached the listener before it can be
scored, so a stream gets one attempt, its scores arrive with its Result (the SSE done event), and
time to first audio is unchanged (docs/PERFORMANCE.md measures it).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import numpy as np

from editx.errors import CancelledError, EditxError, QueueFullError, ValidationError
from editx.pipeline.types import MAX_SEED, AudioChunk, CloneRequest, EditRequest, PromptAudio, Request, Result
from editx.verify.models import VerifyModels
from editx.verify.policy import AttemptScore, Verification, VerifyPolicy
from editx.verify.text import allowed_insertions, error_rate, language_of

log = logging.getLogger(__name__)

_SEED_STRIDE = 0x9E3779B97F4A7C15  # attempt k's seed: the first one plus k strides (reproducible retries)


class Verifier:
    """One Engine's verification models (loaded on first use, once) and its checking thread."""

    def __init__(self, config, models: VerifyModels | None = None) -> None:
        self.config, self._models = config, models
        self._lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="editx-verify")

    def models(self) -> VerifyModels:
        with self._lock:
            if self._models is None:
                device = "cuda" if str(self.config.device).startswith("cuda") else "cpu"
                self._models = VerifyModels.load(self.config.asr_model_dir, threads=self.config.threads or 2,
                                                 device=device)
            return self._models


_verifiers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_verifiers_lock = threading.Lock()


def verifier_of(engine) -> Verifier:
    with _verifiers_lock:
        if engine not in _verifiers:
            _verifiers[engine] = Verifier(engine.config)
        return _verifiers[engine]


def preload(engine) -> None:
    """Load the verification models now when `engine` verifies every request by default (EDITX_VERIFY),
    so the first request does not pay for it."""
    if engine.config.verify:
        verifier_of(engine).models()


def install_verifier(engine, models: VerifyModels) -> Verifier:
    """Use these models for `engine`'s checks (other ASR / speaker models, tests)."""
    with _verifiers_lock:
        _verifiers[engine] = Verifier(engine.config, models)
        return _verifiers[engine]


def transcribe_with(models: VerifyModels, audio: PromptAudio, language: str | None = None) -> tuple[str, str]:
    """(transcript, language) of an input clip that came without one; an error when nothing was heard."""
    text, detected = models.transcribe(audio.samples, audio.sample_rate, language)
    if not text.strip():
        raise ValidationError("no transcript was given and the ASR heard no words in the audio; "
                              "send its transcript (prompt_text / audio_text)")
    from editx.verify.metrics import count_transcription

    count_transcription()
    return text.strip(), detected


def transcribe(engine, audio: PromptAudio, language: str | None = None) -> str:
    """What `engine`'s ASR hears in `audio` (e.g. a voice registered without its transcript)."""
    return transcribe_with(verifier_of(engine).models(), audio, language)[0]


def resolve_policy(verify: Any, config) -> VerifyPolicy | None:
    """`verify` of Engine.submit → a policy or None: None = the engine default (EDITX_VERIFY),
    False = off, True = the default thresholds, a VerifyPolicy as given."""
    if verify is None:
        verify = bool(getattr(config, "verify", False))
    if verify is False:
        return None
    if verify is True:
        return VerifyPolicy.from_config(config)
    if isinstance(verify, VerifyPolicy):
        return verify
    raise TypeError(f"verify must be None, a bool or a VerifyPolicy, got {type(verify).__name__}")


def needs_transcript(request: Request) -> bool:
    if isinstance(request, CloneRequest):
        return request.prompt_text is None
    return request.audio_text is None


def submit_checked(engine, request: Request, policy: VerifyPolicy | None, *, emit=None,
                   keep_audio: bool = True, buffer=None) -> Future:
    """The Future of a verified (or transcript-filled) request; see the module docstring. `buffer`:
    a stream's ChunkBuffer (its `emit` pushes there), handed to each attempt's job for backpressure."""
    run = _Run(engine, verifier_of(engine), request, policy, emit, keep_audio)
    run.buffer = buffer
    run.start()
    return run.future


class _Run:
    """One verified request's chain of attempts (its state is touched by one thread at a time)."""

    def __init__(self, engine, verifier: Verifier, request: Request, policy: VerifyPolicy | None,
                 emit, keep_audio: bool) -> None:
        self.engine, self.verifier, self.request, self.policy = engine, verifier, request, policy
        self.user_emit, self.keep_audio = emit, keep_audio
        self.buffer = None
        self.streaming = emit is not None
        self.models = verifier.models()  # a missing ASR is the caller's error, before anything is queued
        self.future: Future = Future()
        self.future.job = self  # type: ignore[attr-defined]  # Engine.cancel / AudioStream.close
        self.cancelled = threading.Event()
        self.current: Future | None = None
        self.t0 = time.perf_counter()
        self.base_seed = request.seed if request.seed is not None else _fresh_seed()
        self.stages: list[dict[str, Any]] = []
        self.offsets: list[float] = []
        self.scores: list[AttemptScore] = []
        self.best: tuple[AttemptScore, Result] | None = None
        self.input_transcript: str | None = None
        self.note: str | None = None
        self._heard: list[np.ndarray] = []
        self._digests: dict[bytes, int] = {}  # audio hash -> the attempt that made it
        self.reference, self.free, self.language = "", frozenset(), None
        if not needs_transcript(request):
            self._set_reference()

    def cancel(self, error: EditxError | None = None) -> None:
        """Cancel the attempt in flight and stop retrying (`job.cancel` of an Engine future)."""
        self.cancelled.set()
        if self.current is not None:
            self.current.job.cancel(error)

    # ---- setup ----------------------------------------------------------------------------------
    def _set_reference(self, detected: str | None = None) -> None:
        """The words the output must say, and the language they are checked in."""
        req = self.request
        if isinstance(req, EditRequest):
            text = req.text if req.edit_type == "paralinguistic" and req.text else req.audio_text
        else:
            text = req.text
        self.reference, self.free = text, allowed_insertions(text)
        if self.policy is not None:
            self.language = self.policy.language or detected or language_of(text)
            self.models.require_language(self.language, "verification")

    def start(self) -> None:
        if needs_transcript(self.request):
            self.verifier.pool.submit(self._guarded, self._transcribe_input)
        else:
            self._attempt(0)  # a full queue is the caller's error at once (429), as without verification

    def _transcribe_input(self) -> None:
        req = self.request
        audio = req.prompt_audio if isinstance(req, CloneRequest) else req.audio
        language = self.policy.language if self.policy is not None else None
        if language is not None:
            self.models.require_language(language, "an automatic transcript")
        t = time.perf_counter()
        text, detected = transcribe_with(self.models, audio, language)
        self.stages.append(_stage("transcribe_input", t - self.t0, time.perf_counter() - t, language=detected))
        self.input_transcript = text
        field = "prompt_text" if isinstance(req, CloneRequest) else "audio_text"
        self.request = replace(req, **{field: text})
        self._set_reference(detected)
        self._attempt(0)

    # ---- attempts ---------------------------------------------------------------------------------
    def _seed(self, k: int) -> int:
        return (self.base_seed + k * _SEED_STRIDE) % (MAX_SEED + 1)

    def _attempt(self, k: int) -> None:
        emit = self._hear if self.streaming else None
        self.offsets.append(time.perf_counter() - self.t0)
        req = replace(self.request, seed=self._seed(k))
        fut = self.engine.submit(req, emit, keep_audio=self.keep_audio, verify=False)
        self.current = fut
        if self.buffer is not None:  # the stream's backpressure acts on the attempt in flight
            self.buffer.job, fut.job.buffer = fut.job, self.buffer
        if self.cancelled.is_set():
            fut.job.cancel()
        fut.add_done_callback(lambda f: self.verifier.pool.submit(self._guarded, self._check, k, f))

    def _hear(self, chunk: AudioChunk) -> None:
        """A streamed chunk: on to the listener at once, and a copy kept for the check."""
        if self.policy is not None and chunk.samples.size:
            self._heard.append(np.array(chunk.samples, dtype=np.float32, copy=True))
        self.user_emit(chunk)

    def _guarded(self, fn, *args) -> None:
        try:
            fn(*args)
        except BaseException as exc:  # noqa: BLE001 - the chain's failure is its request's alone
            if not isinstance(exc, EditxError):
                log.error("verification failed: %s", exc, exc_info=exc)
            self._settle_error(exc)

    def _check(self, k: int, fut: Future) -> None:
        exc = fut.exception()
        if exc is not None:
            if self.best is None or isinstance(exc, CancelledError) or self.cancelled.is_set():
                raise exc
            self.note = f"attempt {k + 1} failed: {exc}"  # keep the best so far
            self._finish()
            return
        result: Result = fut.result()
        if self.policy is None:  # transcript only
            self.best = (None, result)  # type: ignore[assignment]
            self._finish()
            return
        score = self._score(k, result)
        self.scores.append(score)
        if self.best is None or score.rank() > self.best[0].rank():
            self.best = (score, result)
        from editx.verify.metrics import count_check

        count_check(score.passed, result.backend, self.request.op, score.verify_s)
        last = k + 1 >= self.policy.attempts or self.streaming
        digest = hashlib.blake2b(np.ascontiguousarray(result.audio).tobytes(), digest_size=16).digest()
        if result.audio.size and digest in self._digests and not score.passed:
            # the backend gave the same audio for another seed (lite is deterministic): retrying cannot help
            self.note, last = f"attempt {k + 1} gave the same audio as attempt {self._digests[digest]}: " \
                              "this backend's output does not depend on the seed", True
        self._digests.setdefault(digest, k + 1)
        if score.passed or last or self.cancelled.is_set():
            self._finish()
            return
        from editx.verify.metrics import count_retry

        count_retry(result.backend, self.request.op)
        log.info("verification failed; regenerating", extra={"attempt": k + 1, "error_rate": score.error_rate,
                                                             "speaker_sim": score.speaker_sim})
        try:
            self._attempt(k + 1)
        except QueueFullError as full:
            self.note = f"no retry: {full}"
            self._finish()

    def _score(self, k: int, result: Result) -> AttemptScore:
        t = time.perf_counter()
        audio = result.audio if result.audio.size else (np.concatenate(self._heard) if self._heard else result.audio)
        self._heard = []
        heard, rate, sim = "", 1.0, None
        if audio.size:
            heard, _ = self.models.transcribe(audio, result.sample_rate, self.language)
            rate, _ = error_rate(self.reference, heard, free=self.free)
        if self.policy.min_speaker_sim > 0:
            src = self.request.prompt_audio if isinstance(self.request, CloneRequest) else self.request.audio
            try:
                sim = self.models.similarity(audio, result.sample_rate, src.samples, src.sample_rate)
            except EditxError:  # silence or a clip too short to carry a voice
                sim = 0.0
        dt = time.perf_counter() - t
        self.stages.append(_stage("verify", t - self.t0, dt, attempt=k + 1, error_rate=round(rate, 4),
                                  speaker_sim=None if sim is None else round(sim, 4)))
        return AttemptScore(k + 1, self._seed(k), rate, sim, self.policy.passes(rate, sim), heard, dt)

    # ---- settling -------------------------------------------------------------------------------
    def _finish(self) -> None:
        score, result = self.best
        verification = None
        if self.policy is not None:
            _, metric = error_rate(self.reference, "")
            verification = Verification(
                verified=score.passed, metric=metric, error_rate=score.error_rate, speaker_sim=score.speaker_sim,
                transcript=score.transcript, language=self.language, attempt=score.attempt,
                attempts=tuple(self.scores), reference=self.reference, retried=len(self.scores) > 1,
                note=self.note or ("streams are checked once, after the audio was sent"
                                   if self.streaming and not score.passed else None))
            if not score.passed:
                from editx.verify.metrics import count_unverified

                count_unverified(result.backend, self.request.op)
                log.warning("returning an unverified result", extra={"summary": verification.summary()})
        chosen = score.attempt - 1 if score is not None else len(self.offsets) - 1
        out = replace(result, timeline=self._timeline(result, chosen), verification=verification,
                      input_transcript=self.input_transcript)
        if not self.future.done():
            self.future.set_result(out)

    def _timeline(self, result: Result, chosen: int) -> dict[str, Any]:
        """The returned attempt's timeline, shifted to the chain's clock, with the checks, the input
        transcription and the discarded attempts as stages; total and RTF cover the whole chain."""
        tl = dict(result.timeline)
        off = self.offsets[chosen]
        stages = [{**s, "start_s": s["start_s"] + off} for s in tl.get("stages", ())]
        for k, score in enumerate(self.scores):
            if k != chosen:
                start = self.offsets[k]
                end = self.offsets[k + 1] if k + 1 < len(self.offsets) else start
                stages.append(_stage("discarded_attempt", start, max(0.0, end - start - score.verify_s),
                                     attempt=k + 1))
        stages = sorted(stages + self.stages, key=lambda s: s["start_s"])
        total = time.perf_counter() - self.t0
        audio_s = tl.get("audio_s")
        tl.update(stages=stages, total_s=total, rtf=total / audio_s if audio_s else None,
                  attempts=len(self.offsets))
        if tl.get("ttfa_s") is not None:
            tl["ttfa_s"] = tl["ttfa_s"] + off
        return tl

    def _settle_error(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


def _stage(name: str, start_s: float, duration_s: float, **attrs: Any) -> dict[str, Any]:
    return {"name": name, "start_s": start_s, "duration_s": duration_s, **attrs}


def _fresh_seed() -> int:
    return int.from_bytes(np.random.default_rng().bytes(7), "little")
