"""Audio routes: POST /v1/audio/speech (OpenAI-compatible, streaming) and POST /v1/audio/edits."""

from __future__ import annotations

import base64
import binascii
import json

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from editx.config import SamplingConfig
from editx.errors import BackendUnsupportedError, ValidationError
from editx.pipeline.types import CloneRequest, EditRequest, PromptAudio
from editx.server.app import await_job, engine_of, error_body, timeline_header
from editx.server.schemas import EditExtras, EditJSONRequest, SpeechRequest, VoiceRef
from editx.server.streaming import ChunkFeed, EngineStreamingResponse
from editx.server.verify_http import load_models_if, policy_for, verification_fields, verification_headers
from editx.server.voices_async import prompt_limits, voice_prompt

router = APIRouter(tags=["audio"])

MEDIA_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg", "opus": "audio/ogg",
               "aac": "audio/aac", "pcm": "audio/pcm"}
STREAMABLE = ("wav", "pcm")  # sent as they are made: a header (wav) then 16-bit PCM


async def decode_upload(request: Request, data: bytes, what: str = "uploaded audio", *,
                        prompt: bool = False) -> PromptAudio:
    """Decode an upload within the length limits (a voice prompt's own when `prompt`), checked
    while decoding (a too-long file is refused from its header), before the engine sees it."""
    from editx.audio.io import load_audio

    limits = prompt_limits(request)
    max_s = limits.max_s if prompt else request.app.state.settings.max_audio_seconds
    # the upload's own file name is never used, not even in messages
    audio = await run_in_threadpool(load_audio, data, max_seconds=max_s, min_seconds=limits.min_s, name=what)
    return PromptAudio(audio.samples, audio.sample_rate)


async def encoded_response(result, fmt: str, headers: dict | None = None) -> Response:
    from editx.audio.io import encode_audio

    body = await run_in_threadpool(encode_audio, result.audio, result.sample_rate, fmt)
    return Response(body, media_type=MEDIA_TYPES[fmt], headers={
        "X-Editx-Timeline": timeline_header(result.timeline), "X-Editx-Backend": result.backend,
        **verification_headers(result), **(headers or {})})


@router.post("/v1/audio/speech", summary="Speak text in a built-in or registered voice (OpenAI-compatible)")
async def speech(body: SpeechRequest, request: Request):
    from editx.pipeline.instructions import parse_instructions, to_edits

    engine = engine_of(request)
    voice_key = body.voice.id if isinstance(body.voice, VoiceRef) else body.voice
    if body.stream_format is not None and body.response_format not in STREAMABLE:
        raise ValidationError(f"response_format {body.response_format} cannot stream; with stream_format "
                              f"{body.stream_format!r} use {' or '.join(STREAMABLE)} (or leave out stream_format "
                              "to get the whole file)")
    voice, prompt = await voice_prompt(request, voice_key)
    x = body.editx
    mapped = () if x.edit_type else parse_instructions(body.instructions)
    sampling = SamplingConfig(temperature=x.temperature) if x.temperature is not None else None
    req = CloneRequest(prompt, voice.prompt_text, body.input, seed=x.seed, sampling=sampling, voice_id=voice.id,
                       edit_type=x.edit_type, edit_info=x.edit_info, iterations=x.iterations, speed=body.speed,
                       edits=to_edits(mapped, body.input))
    applied = ", ".join(m.describe() for m in mapped)
    try:
        engine.backend.check(req)
    except BackendUnsupportedError as exc:
        if mapped:
            raise BackendUnsupportedError(f"instructions {body.instructions[:80]!r} mean {applied}; {exc}") from None
        raise
    headers = {"X-Editx-Edits": applied.encode("ascii", "backslashreplace").decode()} if applied else {}
    verify = policy_for(engine, x.verify)
    await load_models_if(engine, verify, needs_transcript=False)
    if body.stream_format is not None:
        return stream_response(request, engine, req, body.response_format, body.stream_format, verify, headers)
    result = await await_job(request, engine, engine.submit(req, verify=verify))
    return await encoded_response(result, body.response_format, headers)


def stream_response(request: Request, engine, req, fmt: str, stream_format: str, verify=None,
                    headers: dict | None = None) -> EngineStreamingResponse:
    """Chunked WAV/PCM as audio is produced, or OpenAI's SSE events (speech.audio.delta with base64
    audio in the response format, then speech.audio.done with usage)."""
    from editx.audio.io import wav_header

    engine.backend.check(req)
    chunks = ChunkFeed(engine, req, verify=verify)  # checked after the fact: scores in the done event
    sentinel = object()

    async def gen():
        try:
            header = wav_header(engine.backend.sample_rate) if fmt == "wav" else b""
            if stream_format == "audio" and header:
                yield header
            while True:
                try:
                    chunk = await anext(chunks, sentinel)
                except Exception as exc:
                    if stream_format != "sse":
                        raise  # the connection ends without its last chunk: the client sees a cut stream
                    # the response already started: the error travels as the stream's last event
                    _status, error = error_body(exc)
                    yield f"data: {json.dumps({'type': 'error', 'error': error})}\n\n".encode()
                    return
                if chunk is sentinel:
                    break
                pcm = (np.clip(chunk.samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
                if stream_format == "sse":
                    event = {"type": "speech.audio.delta", "audio": base64.b64encode(header + pcm).decode()}
                    header = b""
                    yield f"data: {json.dumps(event)}\n\n".encode()
                else:
                    yield pcm
            if stream_format == "sse":
                tl = chunks.result.timeline
                summary = {k: tl.get(k) for k in ("audio_s", "total_s", "ttfa_s", "rtf", "lm_tokens")}
                summary.update(verification_fields(chunks.result))
                # input: characters of the text; output: the LM's audio tokens (0 for the lite backend)
                usage = {"input_tokens": len(req.text), "output_tokens": int(chunks.result.lm_tokens)}
                usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
                done = {"type": "speech.audio.done", "usage": usage, "editx": summary}
                yield f"data: {json.dumps(done)}\n\n".encode()
        finally:
            chunks.close()  # cancels the job if the client went away

    media = "text/event-stream" if stream_format == "sse" else MEDIA_TYPES[fmt]
    return EngineStreamingResponse(gen(), chunks, media_type=media,
                                   headers={"X-Editx-Backend": engine.backend.name, **(headers or {})})


@router.post("/v1/audio/edits", summary="Edit an uploaded clip (multipart or JSON with base64 audio)")
async def edits(request: Request):
    engine = engine_of(request)
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("application/json"):
        try:
            body = EditJSONRequest.model_validate(await request.json())
        except ValueError as exc:
            raise ValidationError(f"invalid JSON body: {exc}") from None
        try:
            data = base64.b64decode(body.audio_base64, validate=True)
        except (binascii.Error, ValueError):
            raise ValidationError("audio_base64 is not valid base64") from None
        fields = body.model_dump(exclude={"audio_base64"})
    elif ctype.startswith("multipart/form-data"):
        form = await request.form()
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise ValidationError("multipart field 'file' (the audio clip) is required")
        data = await upload.read()
        fields = {k: form.get(k) for k in ("audio_text", "edit_type", "edit_info", "text", "iterations", "seed",
                                           "response_format", "editx")}
        if isinstance(fields["editx"], str):  # the editx extras travel as a JSON string in a form
            try:
                fields["editx"] = json.loads(fields["editx"])
            except ValueError:
                raise ValidationError("form field 'editx' must be a JSON object") from None
        try:
            fields = EditJSONRequest.model_validate(
                {"audio_base64": "x", **{k: v for k, v in fields.items() if v not in (None, "")}}
            ).model_dump(exclude={"audio_base64"})
        except ValueError as exc:
            raise ValidationError(f"invalid form fields: {exc}") from None
    else:
        raise ValidationError("send multipart/form-data (file + fields) or application/json (audio_base64)")
    audio = await decode_upload(request, data)
    req = EditRequest(audio, fields["audio_text"], fields["edit_type"], fields["edit_info"], text=fields["text"],
                      iterations=fields["iterations"], seed=fields["seed"])
    verify = policy_for(engine, EditExtras.model_validate(fields["editx"]).verify)
    await load_models_if(engine, verify, needs_transcript=req.audio_text is None)
    result = await await_job(request, engine, engine.submit(req, verify=verify))
    return await encoded_response(result, fields["response_format"])
