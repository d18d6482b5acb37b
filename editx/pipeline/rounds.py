"""One Engine round: plan each job's parts, encode its prompt (through the cache), run the backend
over the batch, then advance or settle each job. Runs on the Engine's worker thread only.

Each job fails alone: in planning or prompt encoding here, in the backend (which settles it with
job.fail), or when its audio goes out. A job whose prompt another process is encoding right now is
parked (it stays with the worker; the next loop looks again) so the cross-process cache wait never
stalls a batch. If the backend's round raises as a whole (e.g. the batched LM step), its unsettled
jobs run again one by one from the generator state they had, so the request that caused it fails
alone and the others give exactly their solo result.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from editx.cache.tiered import CacheBusy
from editx.config import EngineConfig
from editx.pipeline.job import Job
from editx.pipeline.types import PromptAudio, Result
from editx.telemetry.log import log_event
from editx.telemetry.metrics import get_metrics
from editx.telemetry.timing import Timeline

log = logging.getLogger(__name__)


class RoundJobs(list):
    """The jobs of one backend round. A backend that decodes step by step may call `join(n)` between
    steps: up to n more jobs (streams waiting to start), prepared and appended to this list."""

    def __init__(self, jobs, join: Callable[[int], list[Job]] | None = None) -> None:
        super().__init__(jobs)
        self._join = join

    def join(self, n: int) -> list[Job]:
        return self._join(n) if self._join is not None and n > 0 else []


class Rounds:
    def __init__(self, config: EngineConfig, backend, cache, beat: Callable[[], None],
                 joiners: Callable[[int], list[Job]] | None = None) -> None:
        self.config, self.backend, self.cache, self.beat = config, backend, cache, beat
        self.joiners = joiners  # up to n more jobs that may join a round under way (the Engine's streams)

    def cached_encoding(self, audio: PromptAudio, timeline: Timeline | None = None, *, force: bool = False,
                         key: str | None = None):
        """(key, cache entry, outcome) of `audio`'s prompt encoding: the cache, or the backend on a miss.
        Raises CacheBusy while another process computes it (never waits: this runs on the worker),
        unless `force`: then it computes the entry itself, as the cache does after its wait."""
        from editx.pipeline.backends import prompt_cache_key

        key = key or prompt_cache_key(self.backend, audio)
        entry, outcome = self.cache.get_or_compute(
            key, lambda: self.backend.to_entry(self.backend.encode_prompt(audio, timeline)), wait=False, force=force)
        get_metrics().observe_cache_outcome(outcome, self.cache.tiers)
        return key, entry, outcome

    def run(self, jobs: list[Job]) -> None:
        """Prepare every job's prompt, run one backend round, advance or settle each job.

        Each job fails alone: in planning or prompt encoding here, in the backend (which settles
        it with job.fail), or when its audio goes out (`_advance`). A job whose prompt another
        process is encoding is parked (it stays held; the next loop looks again). If the backend's
        round raises as a whole, its unsettled jobs are retried one by one (solo), from the
        generator state they had, so whoever caused it fails alone and the others give exactly
        their solo result; a job that already streamed audio this round cannot be retried and fails."""
        saved: dict[int, tuple] = {}

        def prepared(candidates: list[Job]) -> list[Job]:
            out = []
            for job in candidates:
                try:
                    if job.parts is None:
                        self._plan_parts(job)
                    self._prepare(job)
                    job.cache_wait_since = None
                    out.append(job)
                    saved[id(job)] = (job.generator.get_state(), job.lm_tokens, len(job.rounds), job.chunks,
                                      job.output)
                except CacheBusy:
                    job.cache_wait_since = job.cache_wait_since or time.monotonic()
                except BaseException as exc:  # noqa: BLE001 - one bad request never stops the worker
                    job.fail(exc)
            return out

        def join(n: int) -> list[Job]:  # streams joining mid-round (a parked one waits for the next round)
            joined = prepared(self.joiners(n)) if self.joiners is not None else []
            ready.extend(joined)
            return joined

        ready = RoundJobs(prepared(jobs), join)
        if not ready:
            return
        settled: set[int] = set()

        def done(job: Job) -> None:  # the backend calls this as soon as a job's round is over
            self.beat()
            if id(job) not in settled:
                settled.add(id(job))
                job.solo = False
                self._advance(job)

        try:
            self.backend.run_round(ready, done)
        except BaseException as exc:  # noqa: BLE001
            left = [j for j in ready if id(j) not in settled and not j.future.done()]
            if len(left) > 1:  # each job's own failure is logged once, by job.fail
                log.warning("a backend round failed as a whole (%s); its %d jobs run again one by one",
                            type(exc).__name__, len(left))
            for job in left:
                state, tokens, n_rounds, chunks, output = saved[id(job)]
                if len(left) == 1 or job.solo or job.fed or job.chunks != chunks:
                    job.fail(exc)
                    continue
                job.generator.set_state(state)
                job.lm_tokens, job.output, job.solo = tokens, output, True
                del job.rounds[n_rounds:]
            return
        for job in ready:
            if not job.yielded:  # (a yielded job ran one unit of its part; more remain)
                done(job)

    def _advance(self, job: Job) -> None:
        """After a round: close the part (and the step), settle a finished request, or point the job
        at its next round (the next part, or the next step)."""
        if job.future.done():  # the backend failed or cancelled this one alone
            return
        try:
            job.end_part()
            if job.part + 1 < len(job.parts):  # the next text segment or clip part of this step
                job.part += 1
                self._enter_part(job)
                return
            job.output = job.end_step()
            job.iteration += 1
            job.parts = None
            if job.iteration < len(job.steps):
                job.current = job.source = PromptAudio(job.output, self.backend.sample_rate)
                job.prompt = None
                return
            self._finish(job)
        except BaseException as exc:  # noqa: BLE001 - e.g. the consumer's emit raised: this job alone
            job.fail(exc)

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
        from editx.pipeline.backends import prompt_cache_key

        job.cache_key = job.cache_key or prompt_cache_key(self.backend, job.current)
        parked = job.cache_wait_since is not None
        force = parked and time.monotonic() - job.cache_wait_since >= self.cache.lock_wait_s
        if parked and not force and self.cache.busy(job.cache_key):
            raise CacheBusy(job.cache_key)  # still being computed elsewhere: stay parked, record nothing
        with tl.stage("prompt_encode") as st:
            _, entry, outcome = self.cached_encoding(job.current, tl, force=force, key=job.cache_key)
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


