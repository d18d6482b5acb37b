"""Voices, health, readiness, metrics, models, edits and cache routes."""

from __future__ import annotations

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from editx.server.app import engine_of, worker_health
from editx.server.schemas import VoiceOut

router = APIRouter()


@router.get("/healthz", tags=["health"], summary="The process is alive and its model worker is not stuck (503 if it is)")
async def healthz(request: Request):
    problem = worker_health(request.app.state.holder.engine)
    if problem is not None:
        return JSONResponse({"status": "unhealthy", **problem}, status_code=503)
    return {"status": "ok"}


@router.get("/readyz", tags=["health"], summary="Models loaded and warmed (503 before)")
async def readyz(request: Request):
    holder = request.app.state.holder
    if holder.ready:
        return {"status": "ready", "backend": holder.engine.backend.name}
    body = {"status": "failed" if holder.error else "warming" if holder.serving else "loading"}
    if holder.error:
        body["error"] = holder.error
    return JSONResponse(body, status_code=503)


@router.get("/metrics", tags=["health"], summary="Prometheus metrics")
async def metrics():
    from editx.telemetry.metrics import render_latest

    body, content_type = render_latest()
    return Response(body, media_type=content_type)


@router.get("/v1/models", tags=["info"])
async def models(request: Request):
    engine = engine_of(request)
    settings = request.app.state.settings
    return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "owned_by": "editx",
                                        **engine.describe()}]}


@router.get("/v1/edits", tags=["info"], summary="Edit types and values of the loaded backend; under 'instructions', the plain-words phrasings")
async def edits_list(request: Request):
    from editx.pipeline.instructions import phrasebook

    return {**engine_of(request).edit_options(), "instructions": phrasebook()}


@router.get("/v1/cache/stats", tags=["cache"])
async def cache_stats(request: Request):
    engine = engine_of(request)
    return engine.cache.stats() if engine.cache is not None else {"enabled": False}


@router.post("/v1/cache/clear", tags=["cache"], summary="Drop every cached prompt encoding")
async def cache_clear(request: Request):
    engine = engine_of(request)
    if engine.cache is not None:
        await run_in_threadpool(engine.cache.clear)
    return {"cleared": engine.cache is not None}


@router.post("/v1/voices", tags=["voices"], response_model=VoiceOut, status_code=201,
             summary="Register a reference clip and its transcript; its encoding is cached at once")
async def add_voice(request: Request, file: UploadFile = File(...), prompt_text: str | None = Form(None),
                    name: str = Form("voice"), consent: str = Form("")):
    from editx.server.routes_audio import decode_upload
    from editx.server.routes_openai_voices import consented_sample

    engine = engine_of(request)
    audio = await decode_upload(request, await file.read(), "voice prompt", prompt=True)
    if consent or request.app.state.settings.require_consent:
        await consented_sample(request, consent, audio)
    if prompt_text is None or not prompt_text.strip():  # the ASR writes the transcript (editx[quality])
        from editx.verify.chain import transcribe

        prompt_text = await run_in_threadpool(transcribe, engine, audio)
    voice = await request.app.state.voices.add(name, prompt_text, audio)
    await run_in_threadpool(engine.warm_prompt, audio)
    return voice.to_dict()


@router.get("/v1/voices", tags=["voices"])
async def list_voices(request: Request):
    return {"object": "list", "data": [v.to_dict() for v in await request.app.state.voices.list()]}


@router.get("/v1/voices/{voice_id}", tags=["voices"], response_model=VoiceOut)
async def get_voice(voice_id: str, request: Request):
    return (await request.app.state.voices.get(voice_id)).to_dict()


@router.delete("/v1/voices/{voice_id}", tags=["voices"])
async def delete_voice(voice_id: str, request: Request):
    await request.app.state.voices.delete(voice_id)
    return {"id": voice_id, "deleted": True}
