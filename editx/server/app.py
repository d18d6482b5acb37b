"""FastAPI application: OpenAI-compatible speech, edits, voices, health, metrics and the web UI.

One process, one Engine. Nothing blocking runs on the event loop: requests are submitted to the
Engine's bounded queue and awaited as futures (a client that disconnects cancels its job), streams
are fed from the worker without a thread each (streaming.py), and voice-store calls run on threads
of their own (voices_async.py). The app owns its engine: shutdown closes it, its cache and the store.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from contextlib import asynccontextmanager
from pathlib import Path

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from editx.errors import (
    AudioError,
    BackendUnsupportedError,
    CancelledError,
    EditxError,
    EngineClosedError,
    ModelFilesError,
    QueueFullError,
    ValidationError,
)
from editx.server.consent import UnknownConsentError
from editx.server.limits import APIKeyMiddleware, BodyLimitMiddleware
from editx.server.settings import ServerSettings
from editx.server.voices import UnknownVoiceError
from editx.server.voices_async import AsyncVoiceStore
from editx.server.voices_redis import StoreUnavailableError, make_voice_store

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
ENGINE_CLOSED_RETRY_S = 5  # a closed engine means this process is going away: retry (another replica)
PUBLIC_PATHS = ("/healthz", "/readyz", "/metrics", "/", "/static", "/openapi.json", "/docs")


class EngineHolder:
    """Holds the Engine once loaded (in a background thread, so /healthz answers during load)."""

    def __init__(self, engine=None, loader=None, prepare=None) -> None:
        self.engine = engine
        self.error: str | None = None
        self._loader = loader
        self._prepare = prepare  # prepare(engine) after loading (built-in voices into the prompt cache)
        self.prepared = prepare is None
        self.stopping = threading.Event()  # set at shutdown: preparation stops early
        self._prepare_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._prepare_thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.closed = False

    def start(self) -> None:
        if self.engine is None and self._loader is not None and self._thread is None:
            self._thread = threading.Thread(target=self._load, name="editx-load", daemon=True)
            self._thread.start()

    def _load(self) -> None:
        try:
            engine = self._loader()
        except Exception as exc:
            log.exception("engine failed to load")
            self.error = str(exc)
            return
        with self._lock:
            self.engine = engine
            closed = self.closed
        if closed:  # shut down while it was loading
            close_engine(engine)
            return
        self.prepare()

    def close(self) -> None:
        """Close the engine (work still in it fails with 'engine closed') and its cache; idempotent."""
        self.stopping.set()  # start-up preparation stops early
        with self._lock:
            self.closed, engine = True, self.engine
        if engine is not None:
            close_engine(engine)

    def prepare(self) -> None:
        """Run `prepare` once; its failure is logged, never fatal (requests then warm what they use)."""
        with self._prepare_lock:
            if self.prepared or self.engine is None:
                return
            try:
                self._prepare(self.engine, self.stopping)
            except Exception:
                if not self.stopping.is_set():
                    log.exception("start-up preparation failed; serving anyway")
            finally:
                self.prepared = True

    def prepare_in_background(self) -> None:
        if not self.prepared and self.engine is not None and self._prepare_thread is None:
            self._prepare_thread = threading.Thread(target=self.prepare, name="editx-prepare", daemon=True)
            self._prepare_thread.start()

    def stop_background(self, limit_s: float) -> None:
        """Shutdown: preparation stops at its next step; wait (up to `limit_s`) for the threads that run it."""
        self.stopping.set()
        for thread in (self._prepare_thread, self._thread):
            if thread is not None:
                thread.join(limit_s)

    @property
    def serving(self) -> bool:
        """Requests are taken (the engine is loaded); `ready` also waits for the start-up preparation."""
        return self.engine is not None and getattr(self.engine, "ready", False)

    @property
    def ready(self) -> bool:
        return self.serving and self.prepared


def close_engine(engine) -> None:
    engine.close()
    if engine.cache is not None:
        engine.cache.close()
    log.info("engine closed")


def worker_health(engine) -> dict | None:
    """None while the engine's model worker runs and makes progress; else its health() with an
    `error` saying what is wrong (for /healthz, so a liveness probe restarts a wedged process)."""
    if engine is None:
        return None  # still loading: the process itself is fine
    health = engine.health()
    if health["alive"]:
        return None
    if health["stuck"]:
        why = f"the model worker is stuck (no progress for {health['heartbeat_age_s']:.0f} s with work pending)"
    elif health["closed"]:
        why = "the engine is closed (the server is shutting down)"
    else:
        why = "the model worker is not running (its thread died); restart the server"
    return {**health, "error": why}


def error_response(status: int, message: str, code: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": code, "code": status}}, status_code=status,
                        headers=headers)


def error_body(exc: BaseException) -> tuple[int, dict]:
    """(status, OpenAI-style error object) for any exception: EditxError messages are meant for
    users; anything else is an internal error whose details stay in the server log."""
    if isinstance(exc, EditxError):
        status, code = _status_for(exc)
        return status, {"message": str(exc), "type": code, "code": status}
    return 500, {"message": "internal error (see the server log)", "type": "internal_error", "code": 500}


def _status_for(exc: EditxError) -> tuple[int, str]:
    if isinstance(exc, (UnknownVoiceError, UnknownConsentError)):
        return 404, "not_found"
    if isinstance(exc, QueueFullError):
        return 429, "queue_full"
    from editx.audio.io import AudioTooLongError  # (av and soundfile load with the first request)

    if isinstance(exc, AudioTooLongError):
        return 413, "too_large"
    if isinstance(exc, (ValidationError, AudioError)):
        return 400, "invalid_request"
    if isinstance(exc, BackendUnsupportedError):
        return 400, "unsupported_by_backend"
    if isinstance(exc, CancelledError):
        return 499, "cancelled"
    if isinstance(exc, ModelFilesError):
        return 503, "model_unavailable"
    if isinstance(exc, EngineClosedError):
        return 503, "engine_closed"
    if isinstance(exc, StoreUnavailableError):
        return 503, "store_unavailable"
    return 500, "editx_error"


def create_app(engine=None, *, loader=None, settings: ServerSettings | None = None, store=None,
               owns_engine: bool | None = None) -> FastAPI:
    """Build the app around a loaded `engine`, or a `loader` that builds one in the background.
    The app closes the engine at shutdown when it owns it: by default when it built it (`loader`);
    an engine handed in stays its caller's to close unless `owns_engine=True`."""
    owns = loader is not None if owns_engine is None else owns_engine
    from editx.server.openai_setup import consent_parts, registry

    settings = settings or ServerSettings.from_env()
    store, prepare = registry(store or make_voice_store(settings), settings)
    holder = EngineHolder(engine, loader, prepare)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        holder.start()  # loads, then prepares, in the background
        holder.prepare_in_background()  # an engine given loaded: prepare now (/readyz waits for it)
        yield
        # preparation stops after the voice it is warming (a bounded step), so nothing outlives the app
        await anyio.to_thread.run_sync(holder.stop_background, settings.shutdown_grace_s)
        # uvicorn has let in-flight requests finish (up to its graceful-shutdown timeout, set from
        # shutdown_grace_s by `editx serve`); what is left in the engine now fails with a clear error
        if owns:
            await anyio.to_thread.run_sync(holder.close)
        await anyio.to_thread.run_sync(store.close)

    app = FastAPI(title="editx", version="0.1.0", lifespan=lifespan,
                  description="Step-Audio-EditX serving: OpenAI-compatible speech, edits and voices.")
    app.state.holder, app.state.settings, app.state.store = holder, settings, store
    app.state.voices = AsyncVoiceStore(store)
    app.state.consents, app.state.consent_checker = consent_parts(settings)

    @app.exception_handler(EditxError)
    async def _editx_error(_request: Request, exc: EditxError):
        status, error = error_body(exc)
        retry_s = ENGINE_CLOSED_RETRY_S if isinstance(exc, EngineClosedError) else (
            exc.retry_after_s if isinstance(exc, (QueueFullError, StoreUnavailableError)) else None)
        headers = {"Retry-After": str(max(1, round(retry_s)))} if retry_s is not None else None
        return JSONResponse({"error": error}, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError):
        parts = []
        for err in exc.errors()[:5]:
            loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
        return error_response(422, "; ".join(parts) or "invalid request", "invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail), "http_error")

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception):
        log.exception("unhandled error")
        status, error = error_body(exc)
        return JSONResponse({"error": error}, status_code=status)

    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET", "POST", "DELETE"], allow_headers=["authorization", "content-type"])
    app.add_middleware(APIKeyMiddleware, keys=settings.api_keys)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_request_bytes)  # outermost: first to run

    from editx.server.routes_admin import router as admin_router
    from editx.server.routes_audio import router as audio_router
    from editx.server.routes_openai_voices import router as openai_voices_router
    from editx.server.routes_scripts import router as scripts_router
    from editx.server.routes_sessions import router as sessions_router

    app.include_router(admin_router)
    app.include_router(audio_router)
    app.include_router(openai_voices_router)
    app.include_router(scripts_router)
    app.include_router(sessions_router)

    @app.get("/", include_in_schema=False)
    async def _index():
        return FileResponse(STATIC_DIR / "index.html")

    return app


def engine_of(request: Request):
    """The loaded engine, or a 503 telling the client to retry."""
    holder: EngineHolder = request.app.state.holder
    if not holder.serving:
        msg = f"model failed to load: {holder.error}" if holder.error else "model is loading; retry shortly"
        raise _NotReady(msg)
    return holder.engine


class _NotReady(ModelFilesError):
    pass


async def await_job(request: Request, engine, future):
    """Await an Engine future without blocking the loop; cancel it if the client goes away."""
    wrapped = asyncio.wrap_future(future)
    try:
        while True:
            done, _ = await asyncio.wait({wrapped}, timeout=0.25)
            if done:
                return wrapped.result()
            if await request.is_disconnected():
                raise CancelledError("client disconnected")
    except (CancelledError, asyncio.CancelledError):  # the client left, or the server cancelled us
        engine.cancel(future)
        # the job's end (its CancelledError) is nobody's business now; retrieving it keeps
        # asyncio from logging "exception was never retrieved" for every client that left
        wrapped.add_done_callback(lambda f: f.cancelled() or f.exception())
        raise


def timeline_header(timeline: dict) -> str:
    """Compact JSON of a timeline for the X-Editx-Timeline header (ASCII only)."""
    return json.dumps(timeline, separators=(",", ":"), ensure_ascii=True, default=str)
