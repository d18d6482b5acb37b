"""OpenAI's custom voices: /v1/audio/voice_consents (CRUD) and /v1/audio/voices (create, delete).

A voice made here is an entry of the same registry as editx's own /v1/voices (and usable in speech as
`{"id": ...}` or by id). It needs a consent recording whose speaker is the sample's speaker
(editx.server.consent); the recording's transcript, heard by the ASR, becomes the voice's prompt
text when the sample itself has none (OpenAI's form carries no transcript), so the sample is
transcribed too; without an ASR the request must give `prompt_text` (an editx extra field).
"""

from __future__ import annotations

from fastapi import APIRouter, Form, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from editx.errors import ValidationError
from editx.server.app import engine_of

router = APIRouter(tags=["voices"])

MAX_NAME_CHARS = 100


def consents_of(request: Request):
    return request.app.state.consents


async def _upload(request: Request, upload, field: str):
    from editx.server.routes_audio import decode_upload

    if upload is None or isinstance(upload, str):
        raise ValidationError(f"multipart field {field!r} (an audio file) is required")
    return await decode_upload(request, await upload.read(), what=field)


def _name(value: str | None, field: str = "name") -> str:
    name = (value or "").strip()
    if not name:
        raise ValidationError(f"{field} is required")
    return name[:MAX_NAME_CHARS]


@router.post("/v1/audio/voice_consents", summary="Upload a consent recording (OpenAI createVoiceConsent)")
async def create_consent(request: Request, name: str = Form(""), language: str = Form(""),
                         recording: UploadFile | None = None):
    audio = await _upload(request, recording, "recording")
    lang = _name(language, "language")
    checker = request.app.state.consent_checker
    transcript = await run_in_threadpool(checker.check_phrase, audio, lang)
    consent = await run_in_threadpool(consents_of(request).add, _name(name), lang, audio, transcript)
    return consent.to_dict()


@router.get("/v1/audio/voice_consents", summary="List consent recordings")
async def list_consents(request: Request, after: str | None = None, limit: int = 20):
    if not 1 <= limit <= 100:
        raise ValidationError(f"limit must be in 1..100, got {limit}")
    items = await run_in_threadpool(consents_of(request).list)
    if after:
        ids = [c.id for c in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    page = items[:limit]
    return {"object": "list", "data": [c.to_dict() for c in page], "first_id": page[0].id if page else None,
            "last_id": page[-1].id if page else None, "has_more": len(items) > limit}


@router.get("/v1/audio/voice_consents/{consent_id}", summary="Retrieve a consent recording's metadata")
async def get_consent(consent_id: str, request: Request):
    return (await run_in_threadpool(consents_of(request).get, consent_id)).to_dict()


@router.post("/v1/audio/voice_consents/{consent_id}", summary="Rename a consent (metadata only)")
async def update_consent(consent_id: str, request: Request):
    try:
        body = await request.json()
    except ValueError:
        raise ValidationError("send JSON: {\"name\": \"...\"}") from None
    if not isinstance(body, dict) or not isinstance(body.get("name"), str):
        raise ValidationError("the body must be JSON with a string 'name'")
    return (await run_in_threadpool(consents_of(request).rename, consent_id, _name(body["name"]))).to_dict()


@router.delete("/v1/audio/voice_consents/{consent_id}", summary="Delete a consent recording")
async def delete_consent(consent_id: str, request: Request):
    await run_in_threadpool(consents_of(request).delete, consent_id)
    return {"object": "audio.voice_consent", "id": consent_id, "deleted": True}


async def consented_sample(request: Request, consent_id: str | None, sample) -> None:
    """Raise unless `consent_id` names a consent whose speaker is the speaker of `sample`."""
    if not consent_id:
        raise ValidationError("consent (the id of a consent recording, from POST /v1/audio/voice_consents) is "
                              "required")
    consent_audio = await run_in_threadpool(consents_of(request).audio, consent_id.strip())
    await run_in_threadpool(request.app.state.consent_checker.check_same_speaker, consent_audio, sample)


@router.post("/v1/audio/voices", summary="Create a custom voice from a sample and a consent (OpenAI createVoice)")
async def create_voice(request: Request, name: str = Form(""), consent: str = Form(""),
                       audio_sample: UploadFile | None = None, type: str = Form("audio_sample"),
                       prompt_text: str = Form("")):
    if type != "audio_sample":
        raise ValidationError(f"voice type {type!r} is not supported here; send type=audio_sample with an audio_sample")
    engine = engine_of(request)
    sample = await _upload(request, audio_sample, "audio_sample")
    await consented_sample(request, consent, sample)
    text = prompt_text.strip() or await run_in_threadpool(_transcribe, request, sample)
    voice = await run_in_threadpool(request.app.state.store.add, _name(name), text, sample)
    await run_in_threadpool(engine.warm_prompt, sample)
    return {"object": "audio.voice", "id": voice.id, "name": voice.name, "created_at": int(voice.created_at),
            "prompt_text": voice.prompt_text}


def _transcribe(request: Request, sample) -> str:
    oracle = request.app.state.consent_checker.asr()
    if oracle is None:
        raise ValidationError("no ASR is installed to transcribe the audio sample: send its transcript as "
                              "prompt_text, or install the quality extra")
    text = oracle.transcribe(sample.samples, sample.sample_rate)
    if not text.strip():
        raise ValidationError("the audio sample has no words the ASR could hear; send its transcript as prompt_text")
    return text


@router.delete("/v1/audio/voices/{voice_id}", summary="Delete a custom voice")
async def delete_voice(voice_id: str, request: Request):
    await run_in_threadpool(request.app.state.store.delete, voice_id)
    return {"object": "audio.voice", "id": voice_id, "deleted": True}
