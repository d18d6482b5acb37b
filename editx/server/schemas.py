"""Request/response bodies of the HTTP API (OpenAI-compatible speech + editx extensions)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from editx.server.verify_http import VerifySpec

ResponseFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]  # OpenAI's six


class EditxOptions(BaseModel):
    """editx extensions, passed in the `extra_body`-style field `editx` of a speech request."""

    model_config = ConfigDict(extra="forbid")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="makes the output reproducible")
    edit_type: str | None = Field(None, description="apply this edit to the cloned speech (GET /v1/edits)")
    edit_info: str | None = None
    iterations: int = Field(1, ge=1, le=10)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    verify: VerifySpec = Field(None, description="check the words and voice, retry below thresholds: true, "
                               "false, or {max_wer, min_speaker_sim, attempts, language}; default: the server's")


class EditExtras(BaseModel):
    """editx extensions of an edit request (its `editx` field; a JSON string in multipart forms)."""

    model_config = ConfigDict(extra="forbid")
    verify: VerifySpec = Field(None, description="as in a speech request's editx.verify")


class VoiceRef(BaseModel):
    """OpenAI's custom-voice form of `voice`: {"id": "voice_…"}."""

    model_config = ConfigDict(extra="forbid")
    id: str


class SpeechRequest(BaseModel):
    """POST /v1/audio/speech — OpenAI's CreateSpeechRequest; editx's extras go under `editx`.

    Everything the spec allows parses (any model name, empty input, any voice string): what editx
    cannot do is a 400/404 with a message, never a 422."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field("step-audio-editx", description="any name; the loaded model speaks")
    input: str = Field(..., max_length=20_000, description="text to speak (OpenAI allows 4096 characters; "
                                                            "editx up to 20000, split into sentences)")
    voice: str | VoiceRef = Field(..., description="a built-in voice (alloy, ash, …), a voice id, or {\"id\": …}")
    instructions: str | None = Field(None, max_length=4096,
                                     description="plain words ('speak cheerfully, a bit faster', '用悲伤的语气'), "
                                                 "or 'type:value'; phrasings: GET /v1/edits")
    response_format: ResponseFormat = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0, description="0.25–4.0; beyond the backend's own range the "
                                                           "result is time-stretched (pitch kept)")
    stream_format: Literal["audio", "sse"] | None = None
    editx: EditxOptions = Field(default_factory=EditxOptions)


class EditJSONRequest(BaseModel):
    """POST /v1/audio/edits as JSON (the clip base64-encoded)."""

    model_config = ConfigDict(extra="forbid")
    audio_base64: str = Field(..., min_length=1)
    audio_text: str | None = Field(None, min_length=1, max_length=20_000,
                                   description="the clip's transcript; left out: transcribed by the server's ASR")
    edit_type: str
    edit_info: str | None = None
    text: str | None = Field(None, max_length=20_000)
    iterations: int = Field(1, ge=1, le=10)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    response_format: ResponseFormat = "wav"
    editx: EditExtras = Field(default_factory=EditExtras)


class VoiceOut(BaseModel):
    id: str
    name: str
    prompt_text: str
    sample_rate: int
    duration_s: float
    created_at: float
    builtin: bool = False


class ErrorBody(BaseModel):
    error: dict
