"""POST /v1/audio/scripts: a multi-voice script with inline edits and pauses, as one file or streamed
line by line, with per-line timestamps (JSON) and SRT/WebVTT captions. Also serves the studio UI."""

from __future__ import annotations

import base64
import json
from typing import Literal

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from editx.errors import ValidationError
from editx.script.captions import CAPTION_FORMATS
from editx.script.parse import MAX_SCRIPT_CHARS, parse_script
from editx.script.render import MAX_GAP_S, ScriptPlan, ScriptRender, VoiceRef, plan_script
from editx.server.app import STATIC_DIR, engine_of, error_body
from editx.server.schemas import ResponseFormat
from editx.server.voices import UnknownVoiceError

router = APIRouter(tags=["scripts"])

MAX_VOICE_MAP = 50


class ScriptRequest(BaseModel):
    """POST /v1/audio/scripts."""

    model_config = ConfigDict(extra="forbid")
    script: str = Field(..., min_length=1, max_length=MAX_SCRIPT_CHARS,
                        description="one line per utterance: '[voice | type:value] text', '[pause 0.8]'")
    voice: str | None = Field(None, max_length=100, description="voice of lines before any [voice] tag")
    voices: dict[str, str] = Field(default_factory=dict, description="script label -> voice id (else the label "
                                   "is a voice id or a registered voice's name)")
    response_format: ResponseFormat = "wav"
    output: Literal["audio", "json"] = Field("audio", description="audio: the file; json: base64 audio + "
                                             "segments + captions")
    stream_format: Literal["audio", "sse"] | None = None
    captions: list[Literal["srt", "vtt"]] = Field(default_factory=list, max_length=2)
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="base seed; each line gets its own from it")
    gap_s: float = Field(0.3, ge=0.0, le=MAX_GAP_S, description="silence between consecutive spoken lines")


def voice_resolver(store, mapping: dict[str, str]):
    """label -> VoiceRef: an explicit mapping, a voice id, or the unique registered voice of that name."""
    if len(mapping) > MAX_VOICE_MAP:
        raise ValidationError(f"voices maps {len(mapping)} labels; the limit is {MAX_VOICE_MAP}")
    listed: list | None = None

    def resolve(label: str) -> VoiceRef:
        nonlocal listed
        voice_id = mapping.get(label)
        if voice_id is None and not label.startswith("voice_"):
            listed = store.list() if listed is None else listed
            named = [v for v in listed if v.name.lower() == label.lower()]
            if len(named) > 1:
                raise ValidationError(f"voice {label!r} names {len(named)} registered voices; map it to one id in "
                                      "`voices`")
            if not named:
                raise UnknownVoiceError(f"unknown voice {label!r}: register it (POST /v1/voices) or map it to a "
                                        "voice id in `voices`")
            voice_id = named[0].id
        voice = store.get(voice_id or label)
        return VoiceRef(label, voice.id, store.audio(voice.id), voice.prompt_text)

    return resolve


def instruction_mapper():
    """Plain words -> [(type, info), ...] through the instruction mapper of /v1/audio/speech, when
    this build has one (an edit asked for N rounds appears N times); None otherwise."""
    try:
        from editx.pipeline.instructions import parse_instructions
    except ImportError:
        return None

    def mapper(words: str) -> list[tuple[str, str | None]]:
        out = []
        for m in parse_instructions(words):
            if getattr(m, "tag", None):
                raise ValidationError(f"put sounds in the line's text as tags, e.g. 'Hello {m.tag}'")
            out += [(m.edit_type, m.edit_info)] * m.iterations
        return out

    return mapper


def make_plan(request: Request, engine, body: ScriptRequest) -> ScriptPlan:
    items = parse_script(body.script, instruction_mapper=instruction_mapper())
    default = body.voice
    resolve = voice_resolver(request.app.state.store, body.voices)
    return plan_script(items, engine, resolve, default_voice=default, seed=body.seed, gap_s=body.gap_s)


def pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def summary(plan: ScriptPlan, segments: list[dict], captions: list[str], backend: str) -> dict:
    out = {"seed": plan.seed, "sample_rate": plan.sample_rate, "backend": backend,
           "duration_s": round((segments[-1]["end_sample"] if segments else 0) / plan.sample_rate, 3),
           "segments": segments}
    if captions:
        out["captions"] = {fmt: CAPTION_FORMATS[fmt](segments) for fmt in captions}
    return out


@router.post("/v1/audio/scripts", summary="Speak a multi-voice script with inline edits and pauses")
async def scripts(body: ScriptRequest, request: Request):
    engine = engine_of(request)
    if body.stream_format == "audio" and body.response_format not in ("wav", "pcm"):
        raise ValidationError(f"streaming supports response_format wav or pcm, not {body.response_format}")
    plan = await run_in_threadpool(make_plan, request, engine, body)  # every line checked before any work
    render = ScriptRender(engine, plan)
    if body.stream_format is not None:
        return StreamingResponse(_stream(request, render, plan, body, engine.backend.name),
                                 media_type="text/event-stream" if body.stream_format == "sse" else
                                 ("audio/wav" if body.response_format == "wav" else "audio/pcm"),
                                 headers={"X-Editx-Backend": engine.backend.name, "X-Editx-Seed": str(plan.seed)})
    parts, segments = [], []
    sentinel = object()
    try:
        while (item := await run_in_threadpool(next, render, sentinel)) is not sentinel:
            parts.append(item[0])
            segments.append(item[1])
            if await request.is_disconnected():
                return Response(status_code=499)
    finally:
        render.close()
    from editx.audio.io import encode_audio

    audio = np.concatenate(parts)
    data = await run_in_threadpool(encode_audio, audio, plan.sample_rate, body.response_format)
    if body.output == "json":
        return JSONResponse({"audio": base64.b64encode(data).decode(), "format": body.response_format,
                             **summary(plan, segments, body.captions, engine.backend.name)})
    from editx.server.routes_audio import MEDIA_TYPES

    return Response(data, media_type=MEDIA_TYPES[body.response_format],
                    headers={"X-Editx-Backend": engine.backend.name, "X-Editx-Seed": str(plan.seed),
                             "X-Editx-Duration": str(round(audio.size / plan.sample_rate, 3))})


async def _stream(request: Request, render: ScriptRender, plan: ScriptPlan, body: ScriptRequest, backend: str):
    from editx.audio.io import wav_header

    sse = body.stream_format == "sse"
    sentinel = object()
    segments = []
    try:
        if not sse and body.response_format == "wav":
            yield wav_header(plan.sample_rate)
        while True:
            try:
                item = await run_in_threadpool(next, render, sentinel)
            except Exception as exc:
                if not sse:
                    raise  # the client sees a cut stream
                _status, error = error_body(exc)
                yield f"data: {json.dumps({'type': 'error', 'error': error})}\n\n".encode()
                return
            if item is sentinel:
                break
            samples, seg = item
            segments.append(seg)
            if sse:
                event = {"type": "script.segment", "segment": seg, "audio": base64.b64encode(pcm16(samples)).decode()}
                yield f"data: {json.dumps(event)}\n\n".encode()
            else:
                yield pcm16(samples)
        if sse:
            done = {"type": "script.done", **summary(plan, segments, body.captions, backend)}
            yield f"data: {json.dumps(done)}\n\n".encode()
    finally:
        render.close()  # cancels lines still rendering if the client went away


@router.get("/studio", include_in_schema=False)
async def studio():
    return FileResponse(STATIC_DIR / "studio.html")
