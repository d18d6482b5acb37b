"""Edit sessions over HTTP: start from a clone or an uploaded clip, edit any version (a branch when
it is not the newest), list the sessions and a session's version tree, fetch any version's audio, undo
or pick the current one. A clone or edit may be verified (`verify`, as `editx.verify` of a speech
request): its version then records the scores."""

from __future__ import annotations

import functools
import threading

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from editx.errors import ValidationError
from editx.pipeline.types import CloneRequest, PromptAudio
from editx.server.app import await_job, engine_of, error_response, timeline_header
from editx.server.routes_audio import MEDIA_TYPES, decode_upload
from editx.server.schemas import ResponseFormat
from editx.server.verify_http import VerifySpec, load_models_if, policy_for
from editx.sessions import service
from editx.sessions.store import SessionNotFoundError, make_session_store

router = APIRouter(tags=["sessions"])
_lock = threading.Lock()
VERIFY_DOC = ("check the output's words and voice (true, false or thresholds; default: the server's EDITX_VERIFY); "
              "the version records the scores")


class SessionCreate(BaseModel):
    """POST /v1/sessions as JSON: clone `text` in a registered voice; that clip is the first version."""

    model_config = ConfigDict(extra="forbid")
    voice: str = Field(..., min_length=1, max_length=100)
    text: str = Field(..., min_length=1, max_length=20_000)
    name: str | None = Field(None, max_length=100)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    verify: VerifySpec = Field(None, description=VERIFY_DOC)


class SessionEdit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str | None = Field(None, max_length=40, description="the version to edit (default: the current one)")
    edit_type: str = Field(..., max_length=40)
    edit_info: str | None = Field(None, max_length=40)
    text: str | None = Field(None, max_length=20_000, description="paralinguistic: the transcript with tags")
    iterations: int = Field(1, ge=1, le=10)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    verify: VerifySpec = Field(None, description=VERIFY_DOC)


class CurrentBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(..., max_length=40)


def sessions_of(request: Request):
    """The app's session store, made on first use beside the voice registry (the same Redis when
    the registry is in Redis, else SQLite under the data dir)."""
    state = request.app.state
    with _lock:
        if getattr(state, "sessions", None) is None:
            state.sessions = make_session_store(state.settings, redis_url=getattr(state.store, "url", None))
    return state.sessions


def not_found_as_404(fn):
    @functools.wraps(fn)
    async def wrapper(*args, **kwargs):
        try:
            return await fn(*args, **kwargs)
        except SessionNotFoundError as exc:
            return error_response(404, str(exc), "not_found")
    return wrapper


def _created(payload: dict) -> JSONResponse:
    return JSONResponse(payload, status_code=201)


@router.post("/v1/sessions", summary="Start an edit session from a clone (JSON) or an uploaded clip (multipart)")
@not_found_as_404
async def create_session(request: Request):
    store = sessions_of(request)
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        form = await request.form()
        upload, text = form.get("file"), form.get("text")
        if upload is None or isinstance(upload, str):
            raise ValidationError("multipart field 'file' (the clip to edit) is required")
        if not isinstance(text, str) or not text.strip():
            raise ValidationError("multipart field 'text' (what the clip says) is required")
        audio = await decode_upload(request, await upload.read(), "the session's clip")
        root = service.root_version("upload", text.strip(), audio)
        name = form.get("name") if isinstance(form.get("name"), str) else None
    elif ctype.startswith("application/json"):
        try:
            body = SessionCreate.model_validate(await request.json())
        except ValueError as exc:
            raise ValidationError(f"invalid JSON body: {exc}") from None
        engine = engine_of(request)
        policy = policy_for(engine, body.verify)  # a bad threshold is a 400 before any work
        voices = request.app.state.store
        voice = await run_in_threadpool(voices.get, body.voice)
        prompt = await run_in_threadpool(voices.audio, body.voice)
        seed = body.seed if body.seed is not None else service.fresh_seed()
        req = CloneRequest(prompt, voice.prompt_text, body.text, seed=seed, voice_id=voice.id)
        result = await _run(request, engine, req, policy)
        seed, scores = service.outcome(req, result)
        root = service.root_version("clone", req.text, PromptAudio(result.audio, result.sample_rate), seed=seed,
                                    timeline=result.timeline, voice_id=voice.id, scores=scores)
        name = body.name
    else:
        raise ValidationError("send application/json (voice + text: a clone) or multipart/form-data (file + text)")
    session, version = await run_in_threadpool(store.create, name or "", root)
    return _created({"session": session.to_dict(), "version": version.to_dict()})


async def _run(request: Request, engine, req, policy):
    """Run a clone or edit, verified when `policy` (from `policy_for`) says so."""
    await load_models_if(engine, policy, needs_transcript=False)
    return await await_job(request, engine, engine.submit(req, verify=policy))


@router.get("/v1/sessions", summary="The live sessions, newest first, a page at a time")
async def list_sessions(request: Request,
                        limit: int = Query(20, ge=1, le=service.MAX_PAGE, description="sessions per page"),
                        cursor: str | None = Query(None, max_length=200,
                                                   description="`next_cursor` of the previous page")):
    return await run_in_threadpool(service.list_page, sessions_of(request), limit, cursor)


@router.get("/v1/sessions/{session_id}", summary="A session and its version tree")
@not_found_as_404
async def get_session(session_id: str, request: Request):
    return await run_in_threadpool(service.describe, sessions_of(request), session_id)


@router.delete("/v1/sessions/{session_id}")
@not_found_as_404
async def delete_session(session_id: str, request: Request):
    await run_in_threadpool(sessions_of(request).delete, session_id)
    return {"id": session_id, "deleted": True}


@router.post("/v1/sessions/{session_id}/edits", summary="Edit a version (default: the current one)")
@not_found_as_404
async def edit_version(session_id: str, body: SessionEdit, request: Request):
    engine = engine_of(request)
    store = sessions_of(request)
    spec = service.EditSpec(body.edit_type, body.edit_info, body.text, body.iterations, body.seed)
    policy = policy_for(engine, body.verify)  # a bad threshold is a 400 before any work
    req, parent = await run_in_threadpool(service.edit_request, store, session_id, body.version, spec)
    result = await _run(request, engine, req, policy)
    version = await run_in_threadpool(service.record_edit, store, session_id, parent, req, result)
    return _created({"version": version.to_dict(), "session": (await run_in_threadpool(store.get, session_id)).to_dict()})


@router.get("/v1/sessions/{session_id}/versions/{version_id}", summary="One version's record")
@not_found_as_404
async def get_version(session_id: str, version_id: str, request: Request):
    v = await run_in_threadpool(sessions_of(request).version, session_id, version_id)
    return v.to_dict()


@router.get("/v1/sessions/{session_id}/versions/{version_id}/audio", summary="One version's audio")
@not_found_as_404
async def version_audio(session_id: str, version_id: str, request: Request, format: ResponseFormat = "wav"):
    return await _audio(request, session_id, version_id, format)


@router.get("/v1/sessions/{session_id}/audio", summary="The current version's audio")
@not_found_as_404
async def current_audio(session_id: str, request: Request, format: ResponseFormat = "wav"):
    return await _audio(request, session_id, None, format)


async def _audio(request: Request, session_id: str, version_id: str | None, fmt: str) -> Response:
    from editx.audio.io import encode_audio

    store = sessions_of(request)
    if version_id is None:
        version_id = (await run_in_threadpool(store.get, session_id)).current
    version = await run_in_threadpool(store.version, session_id, version_id)
    audio = await run_in_threadpool(store.audio, session_id, version_id)
    data = await run_in_threadpool(encode_audio, audio.samples, audio.sample_rate, fmt)
    return Response(data, media_type=MEDIA_TYPES[fmt], headers={
        "X-Editx-Version": version.id, "X-Editx-Timeline": timeline_header(version.timeline),
        "ETag": f'"{version.audio}-{fmt}"', "Cache-Control": "private, max-age=3600"})


@router.post("/v1/sessions/{session_id}/current", summary="Make a version the current one")
@not_found_as_404
async def set_current(session_id: str, body: CurrentBody, request: Request):
    session = await run_in_threadpool(sessions_of(request).set_current, session_id, body.version)
    return session.to_dict()


@router.post("/v1/sessions/{session_id}/undo", summary="Make the current version's parent current")
@not_found_as_404
async def undo(session_id: str, request: Request):
    return (await run_in_threadpool(service.undo, sessions_of(request), session_id)).to_dict()

