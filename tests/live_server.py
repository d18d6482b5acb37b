"""A real uvicorn server on 127.0.0.1 in a thread of the test process (HTTP tests that need sockets:
browsers, chunked uploads, clients that disconnect, graceful shutdown); its event loop is reachable."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from contextlib import contextmanager

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class LiveServer:
    """`with LiveServer(app) as srv:` serves `app` at `srv.url` until the block ends (graceful stop)."""

    def __init__(self, app, *, grace_s: float = 30.0, start_limit_s: float = 120.0) -> None:
        import uvicorn

        self.app = app
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None,
                                                    access_log=False, timeout_graceful_shutdown=grace_s))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="live-uvicorn", daemon=True)
        self.start_limit_s = start_limit_s

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.serve())

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + self.start_limit_s
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise AssertionError(f"uvicorn did not start within {self.start_limit_s} s")
            time.sleep(0.02)
        return self

    def in_loop(self, fn, timeout_s: float = 30.0):
        """Run `fn()` on the server's event loop thread (e.g. to read anyio's thread limiter)."""

        async def call():
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout_s)

    def stop(self, limit_s: float = 120.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=limit_s)
        if self.thread.is_alive():
            raise AssertionError(f"uvicorn did not stop within {limit_s} s")
        self.loop.close()

    def __exit__(self, *exc) -> None:
        if self.thread.is_alive():
            self.stop()


@contextmanager
def live_server(app, start_timeout_s: float = 60.0):
    """Yields the base URL while the server runs (browser tests); stops it afterwards."""
    with LiveServer(app, grace_s=5.0, start_limit_s=start_timeout_s) as srv:
        yield srv.url
