"""Immutable requests, results and audio chunks, validated in one place."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from editx.config import SamplingConfig
from editx.errors import ValidationError

OUTPUT_SAMPLE_RATE = 24_000  # HiFT / Kokoro output rate
MAX_TEXT_CHARS = 20_000  # long-form splitting handles anything below this
MAX_ITERATIONS = 10  # upstream UI offers 1..5 iterated edits; more is rarely useful and costs linearly
MAX_SEED = 2**63 - 1
MIN_SPEED, MAX_SPEED = 0.25, 4.0  # OpenAI's `speed` range
# What a backend's own synthesis covers: Kokoro's duration scale (editx.lite.kokoro.SPEED_RANGE) for a
# native-speed backend, the upstream speed edits ("more slower" .. "more faster", editx.lite.edits
# SPEED_FACTORS) otherwise. The rest of a requested speed is a WSOLA time-stretch of the result.
NATIVE_SPEED_RANGE = (0.5, 2.0)
EDIT_SPEED_RANGE = (0.67, 1.5)


def _check_text(name: str, value: str | None, *, required: bool) -> str | None:
    if value is None:
        if required:
            raise ValidationError(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise ValidationError(f"{name} must be a string, got {type(value).__name__}")
    value = value.strip()
    if required and not value:
        raise ValidationError(f"{name} must not be empty")
    if len(value) > MAX_TEXT_CHARS:
        raise ValidationError(f"{name} is {len(value)} characters; the limit is {MAX_TEXT_CHARS}")
    return value


def _check_seed(seed: int | None) -> None:
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED):
        raise ValidationError(f"seed must be an integer in [0, 2**63-1], got {seed!r}")


def _check_iterations(n: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_ITERATIONS:
        raise ValidationError(f"iterations must be an integer in 1..{MAX_ITERATIONS}, got {n!r}")


def normalize_edit(edit_type: str, edit_info: str | None, text: str | None) -> tuple[str, str | None]:
    """Validate an edit against the upstream option lists; returns the canonical (type, info)."""
    from editx.lm.prompts import validate_edit

    return validate_edit(edit_type, edit_info, text)


@dataclass(frozen=True)
class PromptAudio:
    """Decoded mono float32 audio (the output of editx.audio.io.load_audio)."""

    samples: np.ndarray
    sample_rate: int

    def __post_init__(self) -> None:
        s = self.samples
        if not isinstance(s, np.ndarray) or s.ndim != 1 or s.dtype != np.float32:
            raise ValidationError("audio samples must be a 1-D float32 numpy array (decode with load_audio)")
        if s.size == 0:
            raise ValidationError("audio is empty")
        if not (1000 <= int(self.sample_rate) <= 384_000):
            raise ValidationError(f"audio sample rate {self.sample_rate} Hz is outside 1000..384000")

    @property
    def duration_s(self) -> float:
        return self.samples.size / self.sample_rate


@dataclass(frozen=True)
class Edit:
    """One link of an edit chain: `edit_type`/`edit_info` applied `iterations` times. `text` is the
    new text (tags inserted) of a paralinguistic edit."""

    edit_type: str
    edit_info: str | None = None
    iterations: int = 1
    text: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", _check_text("text", self.text, required=False))
        edit_type, edit_info = normalize_edit(self.edit_type, self.edit_info, self.text)
        object.__setattr__(self, "edit_type", edit_type)
        object.__setattr__(self, "edit_info", edit_info)
        _check_iterations(self.iterations)


@dataclass(frozen=True)
class CloneRequest:
    """Speak `text` in the voice of `prompt_audio` (whose transcript is `prompt_text`; None: the
    Engine transcribes the prompt with its verification ASR and returns what it heard)."""

    prompt_audio: PromptAudio
    prompt_text: str | None
    text: str
    seed: int | None = None
    sampling: SamplingConfig | None = None
    voice_id: str | None = None  # set when the prompt comes from the voice registry
    # optional edit applied to the cloned speech (`iterations` times), e.g. from OpenAI `instructions`
    edit_type: str | None = None
    edit_info: str | None = None
    iterations: int = 1
    speed: float = 1.0  # OpenAI `speed`; lite synthesises at this rate, editx maps it to a speed edit
    edits: tuple[Edit, ...] = ()  # further edits, in order, after the `edit_type` one (plain-words instructions)

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt_text", _check_text("prompt_text", self.prompt_text, required=False))
        if self.prompt_text == "":
            raise ValidationError("prompt_text must not be empty (leave it out to have the prompt transcribed)")
        object.__setattr__(self, "text", _check_text("text", self.text, required=True))
        _check_seed(self.seed)
        if not (isinstance(self.speed, (int, float)) and MIN_SPEED <= self.speed <= MAX_SPEED):
            raise ValidationError(f"speed must be in {MIN_SPEED}..{MAX_SPEED}, got {self.speed!r}")
        _check_iterations(self.iterations)
        if self.edit_type is not None:
            edit_type, edit_info = normalize_edit(self.edit_type, self.edit_info, self.text)
            object.__setattr__(self, "edit_type", edit_type)
            object.__setattr__(self, "edit_info", edit_info)
        object.__setattr__(self, "edits", tuple(self.edits))
        if not all(isinstance(e, Edit) for e in self.edits):
            raise ValidationError("edits must be Edit objects")
        if sum(e.iterations for e in self.chain) > MAX_ITERATIONS * 2:
            raise ValidationError(f"at most {MAX_ITERATIONS * 2} edit rounds per request")

    @property
    def chain(self) -> tuple[Edit, ...]:
        """Every edit of this request in the order it runs."""
        first = (Edit(self.edit_type, self.edit_info, self.iterations, self.text),) if self.edit_type else ()
        return first + self.edits

    op = "clone"


@dataclass(frozen=True)
class EditRequest:
    """Edit `audio` (transcript `audio_text`; None: transcribed by the Engine's ASR) by
    `edit_type`/`edit_info`, `iterations` times."""

    audio: PromptAudio
    audio_text: str | None
    edit_type: str
    edit_info: str | None = None
    text: str | None = None  # new text, for paralinguistic edits
    iterations: int = 1
    seed: int | None = None
    sampling: SamplingConfig | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "audio_text", _check_text("audio_text", self.audio_text, required=False))
        if self.audio_text == "":
            raise ValidationError("audio_text must not be empty (leave it out to have the clip transcribed)")
        object.__setattr__(self, "text", _check_text("text", self.text, required=False))
        edit_type, edit_info = normalize_edit(self.edit_type, self.edit_info, self.text)
        object.__setattr__(self, "edit_type", edit_type)
        object.__setattr__(self, "edit_info", edit_info)
        _check_iterations(self.iterations)
        _check_seed(self.seed)

    @property
    def chain(self) -> tuple[Edit, ...]:
        return (Edit(self.edit_type, self.edit_info, self.iterations, self.text),)

    op = "edit"


Request = CloneRequest | EditRequest


@dataclass(frozen=True)
class AudioChunk:
    """A piece of streamed output audio; `final` marks the last chunk of a request."""

    samples: np.ndarray
    sample_rate: int
    index: int
    final: bool = False


@dataclass(frozen=True)
class Result:
    """Output audio (24 kHz float32) plus the measured timeline of how it was made.

    `audio` is empty for a request streamed with keep_audio=False (Engine.stream): its audio went to
    the consumer chunk by chunk and nothing kept a copy; `duration_s` still says how long it was.
    `verification` holds the scores of a verified request (editx.verify.Verification);
    `input_transcript` what the ASR heard in the input when the request came without its transcript."""

    audio: np.ndarray
    sample_rate: int
    timeline: dict[str, Any]
    backend: str
    lm_tokens: int = 0
    iterations: list[dict[str, Any]] = field(default_factory=list)
    verification: Any = None
    input_transcript: str | None = None

    @property
    def duration_s(self) -> float:
        if self.audio.size:
            return self.audio.size / self.sample_rate
        return float(self.timeline.get("audio_s") or 0.0)


@dataclass(frozen=True)
class Step:
    """One model round of a request: a clone, or one edit of the previous round's output."""

    op: str  # "clone" | "edit"
    text: str  # clone: the text to speak; edit: the transcript of the audio being edited
    prompt_text: str | None = None  # clone: the transcript of the prompt audio
    edit_type: str | None = None
    edit_info: str | None = None
    new_text: str | None = None  # paralinguistic: the text with its tags
    speed: float = 1.0
    stretch: float = 1.0  # a pitch-preserving time-stretch of this round's output (> 1: faster)


# OpenAI `speed` → the nearest upstream speed edit (for backends without a native rate control)
def speed_edit_for(speed: float) -> str | None:
    if speed >= 1.5:
        return "more faster"
    if speed > 1.05:
        return "faster"
    if speed <= 0.67:
        return "more slower"
    if speed < 0.95:
        return "slower"
    return None


def split_speed(speed: float, native_speed: bool) -> tuple[float, str | None, float]:
    """(clone speed, speed edit, stretch) that together make OpenAI `speed`: what the backend's own
    synthesis or speed edit covers, and a time-stretch of the result for the rest."""
    if native_speed:
        lo, hi = NATIVE_SPEED_RANGE
        native = min(max(speed, lo), hi)
        return native, None, speed / native
    lo, hi = EDIT_SPEED_RANGE
    return 1.0, speed_edit_for(speed), speed / min(max(speed, lo), hi)


def plan_steps(request: Request, native_speed: bool) -> tuple[Step, ...]:
    """The rounds a request takes; iterated edits feed each output into the next round."""
    steps: list[Step] = []
    if isinstance(request, CloneRequest):
        speed, speed_edit, stretch = split_speed(request.speed, native_speed)
        steps.append(Step("clone", request.text, prompt_text=request.prompt_text, speed=speed))
        audio_text = request.text
        for e in request.chain:
            for _ in range(e.iterations):
                steps.append(Step("edit", audio_text, edit_type=e.edit_type, edit_info=e.edit_info,
                                  new_text=e.text or request.text))
            if e.edit_type == "paralinguistic" and e.text:
                audio_text = e.text  # the edited audio now says the new text
        if speed_edit:
            steps.append(Step("edit", audio_text, edit_type="speed", edit_info=speed_edit))
        if abs(stretch - 1.0) > 1e-6:
            steps[-1] = replace(steps[-1], stretch=stretch)
        return tuple(steps)
    audio_text = request.audio_text
    for _ in range(request.iterations):
        steps.append(Step("edit", audio_text, edit_type=request.edit_type, edit_info=request.edit_info,
                          new_text=request.text))
        if request.edit_type == "paralinguistic" and request.text:
            audio_text = request.text  # the edited audio now says the new text
    return tuple(steps)
