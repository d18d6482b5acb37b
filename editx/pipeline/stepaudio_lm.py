"""The LM half of an `editx` backend round: one decode batch over the round's jobs, each streamed
job's flow and vocoder chunks run as its tokens arrive (in the stream scheduler's order), and new
streams joining the batch between LM steps when slots are free, so a listener who arrives while a
round runs hears audio without waiting for the round's end. Mixed into StepAudioBackend.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from editx.pipeline.rounds import RoundJobs

STREAM_SEED_SALT = 0x5EED_0F_A0D10  # a streamed round's vocoder generator: request seed ^ this


class StepAudioLM:
    """The backend's LM-round methods (it holds `lm`, `decoder`, `config`, `cache`, `text_tokenizer`)."""

    def _lm_prompt(self, job) -> tuple[list[int], tuple[list[int], object] | None]:
        """The job's LM prompt, and for clones the voice prefix with its cached KV snapshot (or None)."""
        step = job.step
        if step.op != "clone":
            return self.build_edit_prompt(job), None
        from editx.lm import prompts
        from editx.tokenizer.speech import mixed_to_string

        speaker = prompts.clone_speaker_name(step.prompt_text, job.current.samples)
        prefix, suffix = prompts.build_clone_prompt_parts(
            self.text_tokenizer, speaker_name=speaker, prompt_text=step.prompt_text,
            prompt_audio_tokens_str=mixed_to_string(job.prompt.mixed), target_text=step.text)
        snap = None
        if self.cache is not None and job.cache_key is not None:
            snap = self.cache.attachment(job.cache_key, self._prefix_name(prefix))
        return prefix + suffix, (prefix, snap)

    def _prefix_name(self, prefix: list[int]) -> str:
        import hashlib

        digest = hashlib.blake2b(np.asarray(prefix, dtype=np.int64).tobytes(), digest_size=16).hexdigest()
        return f"lm_prefix:{self.device}:{digest}"

    def _session(self):
        from editx.lm.generate import DecodeSession

        if self._decode_session is None:  # one static KV cache for the life of the backend
            self._decode_session = DecodeSession(self.lm, max_batch=self.config.max_batch,
                                                 max_length=self.config.sampling.max_length)
        return self._decode_session

    def _generate(self, jobs, prompts: list[list[int]], prefixes: list) -> list[list[int] | None]:
        """Decode every job's prompt as one batch; honours cancellation and max_new_tokens per job.
        Streams the Engine hands over between steps (`jobs.join`, a RoundJobs) join the batch while
        slots are free; `prompts`, `prefixes` and the result list grow with `jobs`."""
        if self.config.lm_loop == "naive":
            return self._generate_naive(jobs, prompts)

        session = self._session()
        owner: dict[int, int] = {}
        results: list[list[int] | None] = [None] * len(jobs)
        hit_prefix = [False] * len(jobs)
        streams = {}
        streamed: dict[int, list[np.ndarray]] = {}
        t_start = [job.timeline.elapsed() for job in jobs]
        t0 = time.perf_counter()
        t_prefill = 0.0
        fresh: dict[int, int] = {}  # slots added since the last step: their voice prefix is stored after it

        def start(i: int) -> None:
            job, prompt, pre = jobs[i], prompts[i], prefixes[i]
            if job.future.done():
                return
            try:  # a job that cannot start (stream set-up, a prompt the LM refuses) fails alone
                if job.streaming:
                    streams[i] = self._open_stream(job)
                    streamed[i] = []
                snap = pre[1] if pre is not None else None
                slot = session.add(prompt, sampling=self._sampling(job), generator=job.generator, prefix=snap)
                owner[slot] = fresh[slot] = i
                hit_prefix[i] = snap is not None
            except Exception as exc:  # noqa: BLE001
                streams.pop(i, None)
                job.fail(exc)

        def join() -> None:
            if not isinstance(jobs, RoundJobs) or not session.free_slots:
                return
            for job in jobs.join(session.free_slots):  # appended to `jobs` already
                prompt, prefix = self._lm_prompt_or_fail(job)
                prompts.append(prompt)
                prefixes.append(prefix)
                results.append(None)
                hit_prefix.append(False)
                t_start.append(job.timeline.elapsed())
                start(len(prompts) - 1)

        try:  # every slot this round takes is released when it ends, however it ends
            for i in range(len(jobs)):
                start(i)
            while owner:
                events = session.step()
                if not t_prefill:
                    t_prefill = time.perf_counter() - t0
                self._store_prefixes(session, jobs, fresh, prefixes, hit_prefix)
                fresh.clear()
                for ev in self._in_schedule_order(events, owner, jobs):
                    i = owner[ev.slot]
                    job = jobs[i]
                    job.heartbeat()
                    cap = self._sampling(job).max_new_tokens
                    done = ev.finished or (cap is not None and len(session.result(ev.slot)) >= cap)
                    try:
                        job.check_cancelled()  # a stream consumer that went away stops the work here
                        if i in streams:
                            streamed[i] += self._stream_token(job, streams[i], ev.token, done)
                    except Exception as exc:  # noqa: BLE001 - fail (or cancel) this job only
                        session.release(ev.slot)
                        del owner[ev.slot]
                        streams.pop(i, None)
                        job.fail(exc)
                        continue
                    if done:
                        results[i] = session.result(ev.slot)
                        if i in streamed:
                            job.output = np.concatenate(streamed[i])
                        session.release(ev.slot)
                        del owner[ev.slot]
                join()
        finally:
            for slot in list(owner):
                session.release(slot)
        total = time.perf_counter() - t0
        for i, job in enumerate(jobs):
            n = len(results[i] or ())
            job.timeline.add_stage("lm_prefill", t_start[i], t_prefill, batch=len(jobs),
                                   prompt_tokens=len(prompts[i]), prefix_cache="hit" if hit_prefix[i] else "miss",
                                   cached_tokens=len(prefixes[i][0]) if hit_prefix[i] else 0)
            job.timeline.add_stage("lm_decode", t_start[i] + t_prefill, max(0.0, total - t_prefill),
                                   batch=len(jobs), tokens=n)
            if prefixes[i] is not None:
                job.timeline.set_cache("lm_prefix", "memory" if hit_prefix[i] else "miss")
        return results

    def _lm_prompt_or_fail(self, job) -> tuple[list[int], tuple[list[int], object] | None]:
        try:
            return self._lm_prompt(job)
        except Exception as exc:  # noqa: BLE001 - a prompt that cannot be built fails its job alone
            job.fail(exc)
            return [], None

    def _in_schedule_order(self, events, owner: dict[int, int], jobs) -> list:
        """One LM step's tokens, in the order their flow chunks should run: a stream that has not
        started first, then the one closest to running dry (stream_schedule), then the others."""
        from editx.pipeline.stream_schedule import Candidate, plan

        mine = {ev.slot: ev for ev in events if ev.slot in owner}
        now = time.monotonic()
        cands = [Candidate(key=slot, streaming=jobs[owner[slot]].streaming, arrived_at=jobs[owner[slot]].admitted_at,
                           cost_s=0.0, first_audio_at=jobs[owner[slot]].first_audio_at,
                           delivered_s=jobs[owner[slot]].emitted_samples / self.sample_rate) for slot in mine]
        return [mine[k] for k in plan(cands, now, len(cands))]

    def _sampling(self, job):
        """The job's sampling settings; a clone's token guard scales with its (segment's) text."""
        sampling = job.request.sampling or self.config.sampling
        return sampling.for_text(job.step.text) if job.step.op == "clone" else sampling

    def _open_stream(self, job):
        """A streaming decoder for this job's round. Its vocoder noise comes from its own generator
        (seeded from the request's), so the LM draws, and hence the tokens, equal the offline run's."""
        enc = job.prompt
        gen = torch.Generator().manual_seed(job.generator.initial_seed() ^ STREAM_SEED_SALT)
        prime = self._stream_prime(job) if self.config.stream_prime else None
        return self.decoder.open_stream(enc.mixed, enc.mel, enc.spk, n_steps=self.config.flow_steps,
                                        chunk_rows=self.config.stream_chunk_rows, generator=gen,
                                        noise=self.config.stream_noise, stage=job.timeline.stage, prime=prime)

    def _stream_prime(self, job):
        """The prompt side of the flow for `job.prompt` (streams, and offline rounds with
        `offline_prime`): made once per voice and kept next to the prompt encoding in the memory tier
        (clones), or on the job for its other parts (any op)."""
        enc, tl = job.prompt, job.timeline
        if job.flow_prime is not None and job.flow_prime[0] is enc:
            return job.flow_prime[1]
        shared = self.cache is not None and job.cache_key is not None and job.step.op == "clone"
        name = f"flow_prime:{self.device}:{self.decoder.dtype}:{self.config.flow_steps}"
        prime = self.cache.attachment(job.cache_key, name) if shared else None
        if shared:
            tl.set_cache("flow_prime", "miss" if prime is None else "memory")
        if prime is None:
            with tl.stage("flow_prime", prompt_frames=int(enc.mel.shape[0]), steps=self.config.flow_steps):
                prime = self.decoder.prime_stream(enc.mixed, enc.mel, enc.spk, n_steps=self.config.flow_steps)
            if shared and prime is not None:
                self.cache.attach(job.cache_key, name, prime, prime.nbytes)
        job.flow_prime = (enc, prime)
        return prime

    @staticmethod
    def _stream_token(job, stream, token: int | None, done: bool) -> list[np.ndarray]:
        """Feed one LM token to the job's stream; hands every finished piece of audio to the job."""
        from editx.tokenizer.speech import AUDIO_TOKEN_OFFSET, MIXED_VOCAB

        ids = [token - AUDIO_TOKEN_OFFSET] if token is not None else []
        ids = [m for m in ids if 0 <= m < MIXED_VOCAB]  # non-audio ids are dropped, as offline
        pieces = [stream.finish(ids)] if done else stream.push(ids)
        for piece in pieces:
            job.feed(piece)
        return pieces

    def _generate_naive(self, jobs, prompts: list[list[int]]) -> list[list[int] | None]:
        """The benchmark baseline: one request at a time, HF-generate style (no static cache)."""
        from editx.lm.naive import generate_naive

        out: list[list[int] | None] = []
        for job, prompt in zip(jobs, prompts):
            t0 = job.timeline.elapsed()
            try:
                ids = None if job.future.done() else generate_naive(self.lm, prompt, sampling=self._sampling(job),
                                                                   generator=job.generator)
            except Exception as exc:  # noqa: BLE001 - fail this job only
                job.fail(exc)
                ids = None
            if ids is None:
                out.append(None)
                continue
            job.timeline.add_stage("lm_generate", t0, job.timeline.elapsed() - t0, loop="naive", tokens=len(ids),
                                   prompt_tokens=len(prompt))
            out.append(ids)
        return out

    def _store_prefixes(self, session, jobs, owner, prefixes, hit_prefix) -> None:
        """After prefill, keep each new voice prefix's KV next to its prompt encoding (memory tier)."""
        if self.cache is None:
            return
        for slot, i in owner.items():
            job, pre = jobs[i], prefixes[i]
            if pre is None or hit_prefix[i] or job.cache_key is None:
                continue
            snap = session.snapshot(slot, len(pre[0]))
            self.cache.attach(job.cache_key, self._prefix_name(pre[0]), snap, snap.nbytes)
