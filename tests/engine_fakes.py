"""A model-free Backend for the Engine's queue, batching and failure-isolation tests.

Its output is a pure function of the request's text and its generator draws, so a request gives
the same audio alone or in any batch; a request fails where its text says (`fail:<where>`), and
the backend counts the slots it holds, so a test can see every one of them given back.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from editx.cache import CacheEntry
from editx.errors import ValidationError
from editx.pipeline.types import PromptAudio

SR = 1000  # output samples per second
PREPARE_FAULT_SR = 8123  # a prompt at this rate fails its encoding


def fault_of(text: str) -> str | None:
    """`fail:round`, `fail:job`, `fail:emit` (the test's emit raises), `fail:check`; a prepare fault is a
    prompt at PREPARE_FAULT_SR."""
    for word in text.split():
        if word.startswith("fail:"):
            return word[5:]
    return None


class FakeBackend:
    name = "fake"
    feature_version = "fake-1"
    sample_rate = SR
    native_speed = True
    segments_text = False
    unit_rounds = False  # a round runs whole parts
    unit_prior = (0.25, 1.0)
    edit_window_s = None

    def __init__(self, *, seconds_per_job: float = 0.25, gate: threading.Event | None = None,
                 segments_text: bool = False) -> None:
        self.cache = None
        self.seconds_per_job = seconds_per_job
        self.gate = gate  # when set, every round waits for it (a stuck or slow model)
        self.segments_text = segments_text
        self.slots = 0  # held now; must be 0 between rounds
        self.max_slots = 0
        self.rounds = 0
        self._lock = threading.Lock()

    def fingerprint(self) -> str:
        return "fake-fingerprint"

    def supports_edit(self, edit_type: str) -> bool:
        return True

    def check(self, request) -> None:
        if fault_of(request.text or "") == "check":
            raise ValidationError(f"refused by check: {request.text}")

    def needs_prompt(self, step) -> bool:
        return step.op == "clone"

    def encode_prompt(self, audio: PromptAudio, timeline=None):
        if audio.sample_rate == PREPARE_FAULT_SR:
            raise RuntimeError("prompt encoding failed")
        return np.array([float(np.abs(audio.samples).sum()), audio.samples.size], dtype=np.float64)

    def to_entry(self, encoding) -> CacheEntry:
        return CacheEntry(tensors={"enc": torch.from_numpy(encoding)}, meta={"kind": "fake"})

    def from_entry(self, entry: CacheEntry):
        return entry.tensors["enc"].numpy()

    def run_round(self, jobs, done) -> None:
        self.rounds += 1
        if self.gate is not None:
            self.gate.wait()
        with self._lock:
            self.slots += len(jobs)
            self.max_slots = max(self.max_slots, self.slots)
        try:
            for job in jobs:  # a fault that takes the whole batched round down (like a failed LM step)
                if fault_of(job.step.text) == "round":
                    raise RuntimeError(f"the round failed because of {job.step.text!r}")
            for job in jobs:
                try:
                    self._run(job)
                except Exception as exc:  # noqa: BLE001 - this job alone
                    job.fail(exc)
                done(job)
        finally:
            with self._lock:
                self.slots -= len(jobs)

    def _run(self, job) -> None:
        text = job.step.text
        if fault_of(text) == "job":
            raise RuntimeError(f"job failed: {text}")
        n = max(1, int(self.seconds_per_job * SR))
        draws = torch.rand(n, generator=job.generator).numpy().astype(np.float32)
        base = (sum(map(ord, text)) % 97) / 97.0
        enc = float(job.prompt[0]) % 1.0 if job.prompt is not None else 0.0
        audio = (0.5 * draws + 0.25 * base + 0.25 * enc).astype(np.float32)
        job.check_cancelled()
        if job.streaming:
            half = n // 2
            job.feed(audio[:half])
            job.feed(audio[half:])
        job.output = audio
        job.rounds.append({"step": job.step.op, "lm_tokens": 0, "audio_s": n / SR})

    def warmup(self) -> None:
        pass


def tone(seconds: float = 1.0, sr: int = 16000, seed: int = 0) -> PromptAudio:
    rng = np.random.default_rng(seed)
    return PromptAudio((0.1 * rng.standard_normal(int(seconds * sr))).astype(np.float32), sr)
