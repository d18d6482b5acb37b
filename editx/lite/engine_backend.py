"""The `lite` backend behind the Engine protocol: Kokoro synthesis with a matched voice blend.

The voice blend is lite's prompt encoding, so it goes through the same prompt cache as the real
backend's tokens. Speed and vad edits run for real; other edits are rejected before queueing.
Long texts are split by the lite backend itself (its phoneme pieces); a streaming clone hands each
piece over as soon as it is rendered, giving the same audio as the whole-clip call.
"""

from __future__ import annotations

import logging

import numpy as np

from editx.config import EngineConfig
from editx.errors import BackendUnsupportedError
from editx.pipeline.types import PromptAudio, Request

log = logging.getLogger(__name__)

LITE_EDITS = ("speed", "vad")


class LiteEngineBackend:
    name = "lite"
    native_speed = True
    segments_text = False  # LiteBackend splits long texts itself (its phoneme pieces)
    edit_window_s = None  # its edits (speed, vad) take clips of any length

    def __init__(self, config: EngineConfig, lite) -> None:
        from editx.lite.voice import FEATURE_VERSION

        self.config, self.lite = config, lite
        self.sample_rate = lite.sample_rate
        # The search's probe count changes the encoding: voices matched with another count are not reused.
        self.feature_version = f"{FEATURE_VERSION}-search{lite.search_probes}"
        self.cache = None

    @classmethod
    def load(cls, config: EngineConfig) -> LiteEngineBackend:
        from editx.lite.backend import LiteBackend

        threads = config.threads or 2
        log.info("loading the lite backend (Kokoro-82M int8 + voice matching)", extra={"threads": threads})
        return cls(config, LiteBackend.load(threads=threads, search_probes=config.lite_search_probes,
                                            search_budget_s=config.lite_search_budget_s))

    def fingerprint(self) -> str:
        return self.lite.fingerprint

    def supports_edit(self, edit_type: str) -> bool:
        return edit_type in LITE_EDITS

    def check(self, request: Request) -> None:
        for edit_type in (e.edit_type for e in request.chain):
            if edit_type not in LITE_EDITS:
                raise BackendUnsupportedError(
                    f"the {edit_type} edit needs the Step-Audio-EditX weights (start editx with --model-dir); "
                    f"the offline lite backend can do: {', '.join(LITE_EDITS)}")

    def needs_prompt(self, step) -> bool:
        return step.op == "clone"  # edits work on the samples themselves

    def encode_prompt(self, audio: PromptAudio, timeline=None):
        if timeline is None:
            return self.lite.encode_voice(audio.samples, audio.sample_rate)
        with timeline.stage("voice_match") as stage:
            enc = self.lite.encode_voice(audio.samples, audio.sample_rate)
            # The timeline says how the match went; out_of_time: the search's time budget ended it and
            # this is the best voice found so far.
            stage.update(similarity=round(float(enc.similarity), 4), search_probes=enc.search_probes,
                         out_of_time=enc.out_of_time)
            return enc

    @staticmethod
    def to_entry(enc):
        from editx.cache import CacheEntry

        tensors, meta = enc.to_tensors()
        return CacheEntry(tensors=tensors, meta={**meta, "kind": "lite"})

    @staticmethod
    def from_entry(entry):
        from editx.lite.voice import VoiceEncoding

        meta = {k: v for k, v in entry.meta.items() if k != "kind"}
        return VoiceEncoding.from_tensors(entry.tensors, meta)

    def run_round(self, jobs, done=None) -> None:
        """One job after the other; `done(job)` as each finishes, so the Engine settles it at once."""
        for job in jobs:
            try:
                job.check_cancelled()
                self._run(job)
            except Exception as exc:  # noqa: BLE001 - fail this job only
                job.fail(exc)
            if done is not None:
                done(job)

    def _run(self, job) -> None:
        step, tl = job.step, job.timeline
        if step.op == "clone" and job.streaming:
            audio = self._stream_clone(job)
        elif step.op == "clone":
            with tl.stage("synthesize", chars=len(step.text), speed=step.speed):
                audio = self.lite.synthesize(step.text, job.prompt, speed=step.speed)
        else:
            with tl.stage("edit", edit_type=step.edit_type, edit_info=step.edit_info):
                audio = self.lite.edit(job.current.samples, job.current.sample_rate, step.edit_type, step.edit_info)
        job.output = np.asarray(audio, dtype=np.float32).reshape(-1)
        job.rounds.append({"step": step.op, "edit_type": step.edit_type, "edit_info": step.edit_info,
                           "lm_tokens": 0, "audio_s": job.output.size / self.sample_rate})

    def _stream_clone(self, job) -> np.ndarray:
        """LiteBackend.iter_synthesize: each piece goes to the job as soon as it is rendered (the
        same audio as `synthesize`); a consumer that went away stops it before the next piece."""
        step, tl = job.step, job.timeline
        out = []
        t0 = tl.elapsed()
        for k, (piece, audio) in enumerate(self.lite.iter_synthesize(step.text, job.prompt, speed=step.speed)):
            tl.add_stage("synthesize", t0, tl.elapsed() - t0, chars=len(piece), speed=step.speed, piece=k)
            job.feed(audio)
            out.append(audio)
            job.check_cancelled()
            t0 = tl.elapsed()
        return np.concatenate(out)

    def warmup(self) -> None:
        self.lite.warmup()
        self.lite.synthesize("Warm up.", self.lite.voice())
