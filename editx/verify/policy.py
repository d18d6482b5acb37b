"""What a verified request asks for (thresholds, attempts) and what it got (scores per attempt)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from editx.errors import ValidationError

MAX_ATTEMPTS = 5  # each attempt is a whole regeneration; more than a few rarely pays
DEFAULT_ATTEMPTS = 3
# Whisper tiny.en on clean TTS English scores WER 0-0.1; a dropped clause or hallucinated words
# push it past 0.2. Resemblyzer: same voice 0.92-0.98, different voices 0.41-0.73; lite's blended
# clones of the bundled voice score ~0.8 (docs/PERFORMANCE.md).
DEFAULT_MAX_WER = 0.2
DEFAULT_MIN_SPEAKER_SIM = 0.65
WER_RANGE = (0.0, 1.0)
SIM_RANGE = (0.0, 1.0)


def _in_range(name: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise ValidationError(f"{name} must be a number in [{lo:g}, {hi:g}], got {value!r}")
    return float(value)


@dataclass(frozen=True)
class VerifyPolicy:
    """Check the output's words (WER, or CER for Chinese/Japanese) and voice; below the thresholds,
    regenerate with a new seed, up to `attempts` generations in all, and return the best one.

    `language`: the Whisper code of the text (None: from its script, see editx.verify.text.language_of).
    `min_speaker_sim=0` turns the voice check off; `max_wer=1` accepts any words."""

    max_wer: float = DEFAULT_MAX_WER
    min_speaker_sim: float = DEFAULT_MIN_SPEAKER_SIM
    attempts: int = DEFAULT_ATTEMPTS
    language: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_wer", _in_range("max_wer", self.max_wer, *WER_RANGE))
        object.__setattr__(self, "min_speaker_sim", _in_range("min_speaker_sim", self.min_speaker_sim, *SIM_RANGE))
        a = self.attempts
        if isinstance(a, bool) or not isinstance(a, int) or not 1 <= a <= MAX_ATTEMPTS:
            raise ValidationError(f"attempts must be an integer in [1, {MAX_ATTEMPTS}], got {a!r}")
        if self.language is not None and (not isinstance(self.language, str) or not 2 <= len(self.language) <= 8
                                          or not self.language.isalpha()):
            raise ValidationError(f"language must be a Whisper language code such as 'en' or 'zh', "
                                  f"got {self.language!r}")

    @classmethod
    def from_config(cls, config) -> VerifyPolicy:
        """The Engine's default policy (EngineConfig verify_* fields, EDITX_VERIFY_* variables)."""
        return cls(max_wer=config.verify_max_wer, min_speaker_sim=config.verify_min_speaker_sim,
                   attempts=config.verify_attempts)

    def with_(self, **changes: Any) -> VerifyPolicy:
        """This policy with the non-None `changes` (a request's own thresholds over the server default)."""
        return VerifyPolicy(**{**asdict(self), **{k: v for k, v in changes.items() if v is not None}})

    def passes(self, error_rate: float, speaker_sim: float | None) -> bool:
        ok_words = error_rate <= self.max_wer
        ok_voice = self.min_speaker_sim <= 0.0 or (speaker_sim is not None and speaker_sim >= self.min_speaker_sim)
        return ok_words and ok_voice


@dataclass(frozen=True)
class AttemptScore:
    """One generation's scores."""

    attempt: int  # 1-based
    seed: int | None
    error_rate: float
    speaker_sim: float | None
    passed: bool
    transcript: str  # what the ASR heard in the output
    verify_s: float  # time the check took

    def rank(self) -> tuple[bool, float, float]:
        """Sort key, best first when sorted descending: passing, fewest errors, closest voice."""
        return self.passed, -self.error_rate, self.speaker_sim if self.speaker_sim is not None else -1.0


@dataclass(frozen=True)
class Verification:
    """The check of a request's output: the returned attempt's scores, and every attempt's."""

    verified: bool
    metric: str  # "wer" or "cer"
    error_rate: float
    speaker_sim: float | None  # None when the voice check was off
    transcript: str
    language: str
    attempt: int  # which attempt was returned (1-based)
    attempts: tuple[AttemptScore, ...] = field(default_factory=tuple)
    reference: str = ""  # the words the output had to say (after tags were taken out)
    retried: bool = False  # False also when retries were not possible (streams)
    note: str | None = None  # why checking stopped early, if it did

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["attempts"] = [asdict(a) for a in self.attempts]
        return d

    def summary(self) -> str:
        """One line for the CLI and logs: 'verified wer=0.000 speaker_sim=0.812 attempt 1/3'."""
        state = "verified" if self.verified else "NOT verified"
        sim = "off" if self.speaker_sim is None else f"{self.speaker_sim:.3f}"
        return (f"{state} {self.metric}={self.error_rate:.3f} speaker_sim={sim} "
                f"attempt {self.attempt}/{len(self.attempts)}")
