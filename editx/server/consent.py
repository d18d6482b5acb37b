"""Voice consent, as OpenAI's custom voices do it: a recording of the speaker agreeing, checked twice.

1. When the consent recording is uploaded and an ASR covers its language (Whisper tiny.en from the
   quality extra: English), it must say CONSENT_PHRASE (word error rate at most PHRASE_MAX_WER).
2. A voice is created from a sample only if the sample's speaker is the consent recording's speaker:
   GE2E cosine similarity (Resemblyzer's weights, editx.lite.speaker) at least SAME_SPEAKER_THRESHOLD.

The threshold is measured, not guessed (scripts/measure_consent_threshold.py; numbers in
docs/OPENAI.md): different sentences by the same synthetic speaker against sentences by other
speakers. Consents are kept per server in SQLite under the data dir, recordings as float32 WAV.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from editx.audio.io import float_wav_bytes
from editx.errors import ModelFilesError, ValidationError
from editx.pipeline.types import PromptAudio
from editx.server.voices import ThreadConnections, is_our_id

log = logging.getLogger(__name__)

CONSENT_PHRASE = "I am the owner of this voice and I consent to editx using it to create a synthetic voice."
PHRASE_MAX_WER = 0.35  # tiny.en mishears a word or two of clean speech; a different sentence scores far above
SAME_SPEAKER_THRESHOLD = 0.88  # measured: docs/OPENAI.md "The same-speaker threshold, measured"
ASR_LANGUAGES = ("en",)  # Whisper tiny.en


class UnknownConsentError(ValidationError):
    """No consent with that id."""


@dataclass(frozen=True)
class Consent:
    id: str
    name: str
    language: str
    created_at: float
    transcript: str | None  # what the ASR heard (None: no ASR for this language)

    def to_openai(self) -> dict:
        return {"object": "audio.voice_consent", "id": self.id, "name": self.name, "language": self.language,
                "created_at": int(self.created_at)}

    def to_dict(self) -> dict:
        return {**self.to_openai(), "phrase_checked": self.transcript is not None, "transcript": self.transcript}


def _check_id(consent_id: str) -> str:
    if not is_our_id(consent_id, "cons_"):
        raise UnknownConsentError(f"unknown consent {str(consent_id)[:60]!r}; list them with GET /v1/audio/voice_consents")
    return consent_id


class ConsentStore:
    """SQLite metadata + recordings under the data dir (threads of one process, several processes)."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = Path(data_dir) / "consents"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._db = Path(data_dir) / "consents.sqlite3"
        self._conns = ThreadConnections(self._db)
        self._conn().execute("CREATE TABLE IF NOT EXISTS consents (id TEXT PRIMARY KEY, name TEXT NOT NULL, "
                             "language TEXT NOT NULL, created_at REAL NOT NULL, transcript TEXT)")

    def _conn(self) -> sqlite3.Connection:
        return self._conns.get()

    def close(self) -> None:
        """Close every thread's connection (at shutdown)."""
        self._conns.close()

    def add(self, name: str, language: str, audio: PromptAudio, transcript: str | None) -> Consent:
        c = Consent("cons_" + secrets.token_hex(8), name, language, time.time(), transcript)
        path = self.dir / f"{c.id}.wav"
        path.with_suffix(".tmp").write_bytes(float_wav_bytes(audio.samples, audio.sample_rate))
        path.with_suffix(".tmp").replace(path)
        self._conn().execute("INSERT INTO consents VALUES (?,?,?,?,?)", tuple(asdict(c).values()))
        return c

    def get(self, consent_id: str) -> Consent:
        row = self._conn().execute("SELECT * FROM consents WHERE id=?", (_check_id(consent_id),)).fetchone()
        if row is None:
            raise UnknownConsentError(f"unknown consent {consent_id!r}; list them with GET /v1/audio/voice_consents")
        return Consent(*row)

    def list(self) -> list[Consent]:
        return [Consent(*r) for r in self._conn().execute("SELECT * FROM consents ORDER BY created_at, id")]

    def rename(self, consent_id: str, name: str) -> Consent:
        self.get(consent_id)
        self._conn().execute("UPDATE consents SET name=? WHERE id=?", (name, consent_id))
        return self.get(consent_id)

    def delete(self, consent_id: str) -> None:
        self.get(consent_id)
        self._conn().execute("DELETE FROM consents WHERE id=?", (consent_id,))
        (self.dir / f"{consent_id}.wav").unlink(missing_ok=True)

    def audio(self, consent_id: str) -> PromptAudio:
        self.get(consent_id)
        samples, sr = sf.read(self.dir / f"{consent_id}.wav", dtype="float32", always_2d=False)
        return PromptAudio(np.ascontiguousarray(samples, np.float32), int(sr))


class ConsentChecker:
    """The speaker encoder and (when installed) the ASR, loaded on first use and shared."""

    def __init__(self, threshold: float = SAME_SPEAKER_THRESHOLD) -> None:
        self.threshold = threshold
        self._lock = threading.Lock()
        self._speaker = None
        self._oracle = None
        self._asr_missing: str | None = None

    def _encoder(self):
        with self._lock:
            if self._speaker is None:
                from editx.lite.speaker import SpeakerEncoder

                self._speaker = SpeakerEncoder.load()
            return self._speaker

    def asr(self):
        with self._lock:
            if self._oracle is None and self._asr_missing is None:
                from editx.quality import QualityOracle

                try:
                    self._oracle = QualityOracle(threads=2)
                except ModelFilesError as exc:
                    self._asr_missing = str(exc)
                    log.warning("consent phrases are not checked: %s", exc)
            return self._oracle

    def check_phrase(self, audio: PromptAudio, language: str) -> str | None:
        """The transcript when an ASR covers `language` (raises if it is not the consent phrase), else None."""
        if language.split("-")[0].lower() not in ASR_LANGUAGES or (oracle := self.asr()) is None:
            return None
        from editx.quality import word_error_rate

        heard = oracle.transcribe(audio.samples, audio.sample_rate)
        score = word_error_rate(CONSENT_PHRASE, heard)
        if score > PHRASE_MAX_WER:
            raise ValidationError(f"the consent recording must say the consent phrase {CONSENT_PHRASE!r}; "
                                  f"it was heard as {heard[:200]!r}")
        return heard

    def check_same_speaker(self, consent: PromptAudio, sample: PromptAudio) -> float:
        """GE2E similarity of the two clips; raises unless it is at least the threshold."""
        enc = self._encoder()
        sim = float(np.dot(enc.embed(consent.samples, consent.sample_rate),
                           enc.embed(sample.samples, sample.sample_rate)))
        if sim < self.threshold:
            raise ValidationError(f"the audio sample and the consent recording are from different speakers "
                                  f"(speaker similarity {sim:.2f}, at least {self.threshold:.2f} is needed): "
                                  "record the consent phrase with the voice you want to create")
        return sim
