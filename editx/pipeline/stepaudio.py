"""The `editx` backend: Step-Audio-EditX proper (tokenizer → Step1 LM → CosyVoice flow → HiFT).

Holds the loaded models and runs one Engine round for a batch of jobs: build each job's LM prompt
(clone or edit), decode all of them as one batch, then run the flow decoder and vocoder per job.
Holds no per-request state: everything request-specific lives on the Engine's Job objects.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch

from editx.config import EngineConfig, resolve_device, resolve_dtype
from editx.errors import EditxError, ValidationError
from editx.pipeline.prompt import FEATURE_VERSION, PromptEncoding, encode_prompt
from editx.pipeline.types import OUTPUT_SAMPLE_RATE, PromptAudio

log = logging.getLogger(__name__)

WARMUP_TOKENS = 15  # 3 flow rows: enough for every kernel shape class
WARMUP_GROUP = (0, 0, 1024, 1024, 1024)  # one group of mixed ids (2 vq02 + 3 vq06)
STREAM_SEED_SALT = 0x5EED_0F_A0D10  # a streamed round's vocoder generator: request seed ^ this
AUDIO_TOKENS_PER_S = 25 + 50 / 3  # mixed prompt tokens: vq06 at 25 Hz + vq02 at 16.67 Hz
MIN_ROOM_TOKENS = 64  # a prompt must leave at least this much of the LM window for text and output


class StepAudioBackend:
    name = "editx"
    feature_version = FEATURE_VERSION
    sample_rate = OUTPUT_SAMPLE_RATE
    native_speed = False
    segments_text = True  # the Engine splits long texts into sentence segments for this LM
    unit_rounds = False  # a round decodes its batch's LM tokens together; streams' flow chunks run as they fill
    unit_prior = (0.05, 1.0)  # (unused: whole rounds are not timed per unit)

    def __init__(self, config: EngineConfig, paths, tokenizer, lm, text_tokenizer, decoder, device) -> None:
        self.config, self.paths = config, paths
        self.tokenizer, self.lm, self.text_tokenizer, self.decoder = tokenizer, lm, text_tokenizer, decoder
        self.device = device
        self.cache = None  # set by the Engine: voice-prefix KV snapshots live in its memory tier
        self._fingerprint: str | None = None
        self._decode_session = None

    @classmethod
    def load(cls, config: EngineConfig) -> StepAudioBackend:
        from editx.decoder import load_decoder
        from editx.doctor import require_loadable
        from editx.hub import resolve_model_dir
        from editx.lm.loader import load_step1
        from editx.lm.text_tokenizer import TextTokenizer
        from editx.tokenizer import StepAudioTokenizer

        if config.model_dir is None:
            raise EditxError("the editx backend needs --model-dir (or EDITX_MODEL_DIR)")
        require_loadable(config.model_dir)  # header-only checks: refuse with `editx doctor`'s lines
        paths = resolve_model_dir(config.model_dir)
        device = resolve_device(config.device)
        dtype = resolve_dtype(config.dtype, device)
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = config.allow_tf32
            torch.backends.cudnn.allow_tf32 = config.allow_tf32
        log.info("loading Step-Audio-EditX", extra={"model_dir": str(paths.root), "device": str(device),
                                                    "dtype": str(dtype), "quantize": config.quantize,
                                                    "onnx_threads": config.onnx_threads,
                                                    "torch_threads": torch.get_num_threads()})
        tokenizer = StepAudioTokenizer.load(paths.tokenizer_dir, device=device, onnx_threads=config.onnx_threads,
                                            onnx_providers=config.onnx_providers)
        lm = load_step1(paths.lm_dir, device=device, dtype=dtype, quantize=config.quantize)
        text_tok = TextTokenizer.load(paths.lm_dir)
        decoder = load_decoder(paths.cosyvoice_dir, device=device, dtype=dtype, onnx_threads=config.onnx_threads,
                               providers=config.onnx_providers)
        return cls(config, paths, tokenizer, lm, text_tok, decoder, device)

    @property
    def edit_window_s(self) -> float:
        """Clips longer than this are edited in parts cut at silences (upstream keeps inputs under 30 s)."""
        return self.config.edit_window_s

    # ---- Engine protocol ------------------------------------------------------------------------
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            from editx.cache.keys import fingerprint_files

            self._fingerprint = fingerprint_files([self.paths.tokenizer_dir, self.paths.lm_dir])
        return self._fingerprint

    def supports_edit(self, edit_type: str) -> bool:
        return True

    def check(self, request) -> None:
        """Everything the upstream model does is supported; a clone prompt must leave room in the LM
        window (prompt audio tokens alone, an upper bound: silence is trimmed before tokenizing)."""
        from editx.pipeline.types import CloneRequest

        if not isinstance(request, CloneRequest):
            return  # long clips are edited in parts of edit_window_s
        window = (request.sampling or self.config.sampling).max_length
        seconds = request.prompt_audio.duration_s
        tokens = math.ceil(seconds * AUDIO_TOKENS_PER_S)
        if tokens >= window - MIN_ROOM_TOKENS:
            limit = (window - MIN_ROOM_TOKENS) / AUDIO_TOKENS_PER_S
            raise ValidationError(
                f"the prompt audio is {seconds:.1f} s, about {tokens} LM tokens; the LM window holds {window} "
                f"(max_length), so a prompt must stay under {limit:.0f} s: use a shorter clip (10-30 s is plenty)")

    def needs_prompt(self, step) -> bool:
        return True  # every clone and edit round conditions on its input's encoding

    def encode_prompt(self, audio: PromptAudio, timeline=None) -> PromptEncoding:
        return encode_prompt(self.tokenizer, self.decoder, audio, timeline)

    @staticmethod
    def to_entry(enc: PromptEncoding):
        from editx.cache import CacheEntry

        return CacheEntry(tensors=enc.to_tensors(), meta={"kind": "stepaudio", "version": FEATURE_VERSION})

    @staticmethod
    def from_entry(entry) -> PromptEncoding:
        return PromptEncoding.from_tensors(entry.tensors)

    def build_edit_prompt(self, job) -> list[int]:
        """LM prompt ids for an edit step (upstream `_encode_audio_edit_prompt`)."""
        from editx.lm import prompts
        from editx.tokenizer.speech import mixed_to_string

        step = job.step
        return prompts.build_edit_prompt(self.text_tokenizer, edit_type=step.edit_type, edit_info=step.edit_info,
                                         audio_text=step.text, audio_tokens_str=mixed_to_string(job.prompt.mixed),
                                         new_text=step.new_text)

    def run_round(self, jobs, done=None) -> None:
        """One LM batch for all jobs, then one batched flow solve for the round's offline jobs and
        the vocoder per job; `done(job)` as each one's audio is ready, so the Engine settles it
        without waiting for the rest of the batch."""
        prompts: list[list[int]] = []
        prefixes: list = []
        for job in jobs:  # a prompt that cannot be built fails its job alone
            try:
                prompt, prefix = self._lm_prompt(job)
            except Exception as exc:  # noqa: BLE001
                job.fail(exc)
                prompt, prefix = [], None
            prompts.append(prompt)
            prefixes.append(prefix)
        outputs = self._generate(jobs, prompts, prefixes)
        finished = [(job, ids) for job, ids in zip(jobs, outputs) if ids is not None]  # None: failed or cancelled
        mels = self._flow_round([job for job, _ in finished], [ids for _, ids in finished])
        for (job, ids), mel in zip(finished, mels):
            try:
                if isinstance(mel, Exception):
                    raise mel
                self._decode(job, ids, mel)
            except Exception as exc:  # noqa: BLE001 - fail this job only
                job.fail(exc)
            if done is not None:
                done(job)

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
        """Decode every job's prompt as one batch; honours cancellation and max_new_tokens per job."""
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
        first_step, t_prefill = True, 0.0
        try:  # every slot this round takes is released when it ends, however it ends
            for i, (job, prompt, pre) in enumerate(zip(jobs, prompts, prefixes)):
                if job.future.done():
                    continue
                try:  # a job that cannot start (stream set-up, a prompt the LM refuses) fails alone
                    if job.streaming:
                        streams[i] = self._open_stream(job)
                        streamed[i] = []
                    snap = pre[1] if pre is not None else None
                    owner[session.add(prompt, sampling=self._sampling(job), generator=job.generator,
                                      prefix=snap)] = i
                    hit_prefix[i] = snap is not None
                except Exception as exc:  # noqa: BLE001
                    streams.pop(i, None)
                    job.fail(exc)
            while owner:
                events = session.step()
                if first_step:
                    t_prefill, first_step = time.perf_counter() - t0, False
                    self._store_prefixes(session, jobs, owner, prefixes, hit_prefix)
                for ev in events:
                    i = owner.get(ev.slot)
                    if i is None:
                        continue
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

    def _flow_round(self, jobs, outputs) -> list:
        """The flow mel of every offline job of a round (None for a streamed one, which has its
        audio), or the exception that failed it. Jobs share each Euler step's DiT call (batched by
        length, editx.decoder.batch); if the shared solve fails, each job is solved alone so that a
        failure stays with the job that caused it."""
        from editx.tokenizer.speech import lm_ids_to_mixed

        mels: list = [None] * len(jobs)
        work = []  # (index, FlowJob, start on the job's timeline, attrs)
        for i, (job, ids) in enumerate(zip(jobs, outputs)):
            if job.fed:
                continue
            try:
                mixed = lm_ids_to_mixed(ids, drop_invalid=True)
                # a clone's prime is shared by its voice's requests (an edit's input is new each time)
                use_prime = self.config.offline_prime and job.step.op == "clone" and mixed.size
                prime = self._offline_prime(job) if use_prime else None  # its own stage on a miss
                enc, t0 = job.prompt, job.timeline.elapsed()
                fj = self.decoder.flow_job(enc.mixed, enc.mel, enc.spk, mixed, primed=prime,
                                           n_steps=self.config.flow_steps)
                work.append((i, fj, t0, {"tokens": int(mixed.size), "primed": prime is not None}))
            except Exception as exc:  # noqa: BLE001 - fail this job only
                mels[i] = exc
        if not work:
            return mels
        steps, t0 = self.config.flow_steps, time.perf_counter()
        try:
            solved = self.decoder.solve_flow_jobs([fj for _, fj, _, _ in work], n_steps=steps)
        except Exception:  # noqa: BLE001 - retry alone: the failure belongs to one job, not the round
            log.warning("batched flow failed; solving the round's %d jobs one by one", len(work), exc_info=True)
            solved = [self._solve_alone(fj, steps) for _, fj, _, _ in work]
        solve_s = time.perf_counter() - t0
        for (i, fj, start, attrs), mel in zip(work, solved):
            tl = jobs[i].timeline  # from this job's encoder work to the end of the shared solve
            tl.add_stage("flow", start, max(0.0, tl.elapsed() - start), steps=steps, batch=len(work),
                         frames=fj.frames, cached_frames=fj.cached, solve_s=round(solve_s, 6), **attrs)
            mels[i] = mel
        return mels

    def _offline_prime(self, job):
        """The voice's prime for an offline clone, or None (the exact one pass) when making it
        failed: the prime only saves work, so its failure must not fail the request."""
        try:
            return self._stream_prime(job)
        except Exception:  # noqa: BLE001 - fall back to upstream's one pass
            log.warning("flow prime failed; decoding this clone in one pass", exc_info=True)
            return None

    def _solve_alone(self, fj, steps: int):
        try:
            return self.decoder.solve_flow_jobs([fj], n_steps=steps)[0]
        except Exception as exc:  # noqa: BLE001 - this job's own failure
            return exc

    def _decode(self, job, ids: list[int], mel) -> None:
        """Vocoder for a finished round's flow mel (a streamed round already has its audio)."""
        job.lm_tokens += len(ids)
        if not job.fed:
            with job.timeline.stage("vocoder", frames=int(mel.shape[-1])):
                audio = self.decoder.mel2wav(mel, generator=job.generator)
            job.output = np.asarray(audio, dtype=np.float32).reshape(-1)
        record = {"step": job.step.op, "edit_type": job.step.edit_type, "edit_info": job.step.edit_info,
                  "lm_tokens": len(ids), "audio_s": job.output.size / self.sample_rate}
        if len(job.parts or ()) > 1:
            record["part"] = job.part
        job.rounds.append(record)

    def warmup(self) -> None:
        """A short synthetic clip through every stage (tokenizer, LM prefill + decode, flow, vocoder)."""
        from concurrent.futures import Future
        from dataclasses import replace

        from editx.pipeline.engine import Job
        from editx.pipeline.types import CloneRequest, plan_steps
        from editx.telemetry.timing import Timeline

        t = np.arange(int(1.5 * 16000), dtype=np.float32) / 16000
        samples = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
        # a few tokens are enough to touch every kernel; random or real weights alike
        sampling = replace(self.config.sampling, max_new_tokens=WARMUP_TOKENS)
        req = CloneRequest(PromptAudio(samples, 16000), "warm up", "warm up", seed=0, sampling=sampling)
        job = Job(request=req, steps=plan_steps(req, native_speed=False), timeline=Timeline(op="warmup"),
                  future=Future(), generator=torch.Generator().manual_seed(0), backend=self.name)
        job.current = req.prompt_audio
        job.prompt = self.encode_prompt(job.current)
        self.run_round([job], lambda _job: None)
        if job.future.done():
            job.future.result()  # surface a warm-up failure
        # the streaming decode too: its setup and chunk shapes differ from the offline flow's
        enc = job.prompt
        prime = None
        if self.config.stream_prime:  # the offline round above made it already when offline_prime is on
            made = job.flow_prime[1] if job.flow_prime is not None and job.flow_prime[0] is enc else None
            prime = made or self.decoder.prime_stream(enc.mixed, enc.mel, enc.spk, n_steps=self.config.flow_steps)
        stream = self.decoder.open_stream(enc.mixed, enc.mel, enc.spk, n_steps=self.config.flow_steps,
                                          chunk_rows=self.config.stream_chunk_rows, prime=prime)
        stream.finish(WARMUP_GROUP)  # the prompt side, then one last chunk: the smallest stream
