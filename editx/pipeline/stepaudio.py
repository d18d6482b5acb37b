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
from editx.pipeline.stepaudio_lm import StepAudioLM
from editx.pipeline.types import OUTPUT_SAMPLE_RATE, PromptAudio

log = logging.getLogger(__name__)

WARMUP_TOKENS = 15  # 3 flow rows: enough for every kernel shape class
WARMUP_GROUP = (0, 0, 1024, 1024, 1024)  # one group of mixed ids (2 vq02 + 3 vq06)
AUDIO_TOKENS_PER_S = 25 + 50 / 3  # mixed prompt tokens: vq06 at 25 Hz + vq02 at 16.67 Hz
MIN_ROOM_TOKENS = 64  # a prompt must leave at least this much of the LM window for text and output


class StepAudioBackend(StepAudioLM):
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
            prompt, prefix = self._lm_prompt_or_fail(job)
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
