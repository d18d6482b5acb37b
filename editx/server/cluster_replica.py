"""The engine replica of `editx serve --replicas`: one Engine and the ordinary app in a Ray Serve
replica (editx/server/cluster.py builds the application around it)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from pathlib import Path

from editx.server.cluster import REPLICA_HEADER

log = logging.getLogger(__name__)

_DONE = object()


def code_fingerprint() -> str:
    """BLAKE2b of editx's own source files (names and contents): what a replica compares with the
    deployer's before it loads anything."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.blake2b(digest_size=8)
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def check_same_code(deployed: str | None) -> None:
    """Refuse to start a replica whose editx differs from the one that deployed it. The engine
    config and settings reach the replica pickled: unpickled by other code they can lack fields
    it reads (seen: a replica restarted after the source changed on disk answered every request
    500). A refused replica never becomes RUNNING, so requests stay on the healthy ones."""
    from editx.errors import EditxError

    here = code_fingerprint()
    if deployed is not None and deployed != here:
        raise EditxError(f"this node's editx (source fingerprint {here}) is not the one that deployed the application "
                         f"({deployed}); install the same editx on every node (or redeploy after an upgrade)")


class EngineReplica:
    """One Engine + the ordinary app; Ray marks it running only after load and warm-up finish."""

    def __init__(self, config, settings, fingerprint: str | None = None) -> None:
        import ray
        from ray import serve

        from editx.pipeline.engine import Engine
        from editx.server.app import create_app
        from editx.server.voices_redis import make_voice_store

        check_same_code(fingerprint)
        self.replica_id = serve.get_replica_context().replica_tag
        self.actor_name = ray.get_runtime_context().get_actor_name()
        t0 = time.perf_counter()
        self.engine = Engine.load(config)  # warms up when config.warmup (the default)
        self.app = create_app(self.engine, settings=settings, store=make_voice_store(settings, config.redis_url),
                              owns_engine=True)
        self.app.state.holder.prepare()  # built-in voices into the prompt cache (no ASGI lifespan runs here)
        log.info("replica ready", extra={"replica": self.replica_id, "load_s": round(time.perf_counter() - t0, 3),
                                         "backend": self.engine.backend.name, "pid": os.getpid()})

    def check_health(self) -> None:
        """Ray Serve's health check: the engine is loaded, warm and its worker alive."""
        from editx.errors import EditxError

        if not self.engine.ready or not self.engine.alive:
            raise EditxError(f"replica {self.replica_id}: engine not ready")

    def info(self) -> dict:
        return {"replica": self.replica_id, "actor_name": self.actor_name, "pid": os.getpid(),
                "queue_depth": self.engine.queue_depth}

    async def handle(self, req: dict):
        """Run one HTTP request through the app; yields {"status", "headers"} then body chunks."""
        sent: asyncio.Queue = asyncio.Queue()
        gone = asyncio.Event()
        body_given = False

        async def receive():
            nonlocal body_given
            if not body_given:
                body_given = True
                return {"type": "http.request", "body": req["body"], "more_body": False}
            await gone.wait()  # the caller went away (or the response is complete)
            return {"type": "http.disconnect"}

        task = asyncio.create_task(self._run(_scope(req), receive, sent.put, sent))
        try:
            while True:
                msg = await sent.get()
                if msg is _DONE:
                    break
                if msg["type"] == "http.response.start":
                    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in msg.get("headers", [])]
                    yield {"status": msg["status"], "headers": headers + [(REPLICA_HEADER, self.replica_id)]}
                elif msg["type"] == "http.response.body":
                    if msg.get("body"):
                        yield bytes(msg["body"])
                    if not msg.get("more_body", False):
                        break
        finally:
            gone.set()  # a cancelled stream cancels the engine job (the app polls for disconnects)
            asyncio.get_running_loop().call_later(5.0, task.cancel)

    async def _run(self, scope, receive, send, sent: asyncio.Queue) -> None:
        started = False

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:  # the app's own handler already answered 500; anything else gets one here
            if not started:
                log.exception("request failed in replica", extra={"replica": self.replica_id})
                await send({"type": "http.response.start", "status": 500,
                            "headers": [(b"content-type", b"application/json")]})
                await send({"type": "http.response.body", "more_body": False,
                            "body": b'{"error":{"message":"internal error (see the replica log)",'
                                    b'"type":"internal_error","code":500}}'})
        finally:
            await sent.put(_DONE)

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()


def _scope(req: dict) -> dict:
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "method": req["method"], "scheme": "http", "path": req["path"], "raw_path": req["path"].encode(),
            "query_string": req["query"], "root_path": "", "headers": req["headers"], "client": req["client"],
            "server": ("editx-replica", 0), "state": {}}
