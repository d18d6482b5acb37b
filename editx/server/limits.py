"""The server's request limits, each enforced in one place: body size (413) and API keys (401).

The body and auth checks are plain ASGI middleware, not `BaseHTTPMiddleware`: an error raised under
the latter reaches the app's handlers wrapped in an ExceptionGroup (a 500 with a traceback), and it
buffers streamed responses. The body limit reads the whole body before the app sees any of it, so
every route (JSON, multipart, chunked or not) gets the same 413, named limit included, and the
app never parses a byte past the limit.
"""

from __future__ import annotations

import json

# After the limit is passed, up to this much more of an upload is read and thrown away before the 413
# goes out: a client still sending (HTTP/1.1 clients write the whole body before they read) then gets
# the answer instead of a connection reset. Beyond it the connection is simply closed after the 413.
DRAIN_MAX_BYTES = 256 * 2**20


async def send_error(send, status: int, message: str, code: str, headers: dict | None = None) -> None:
    """An OpenAI-style JSON error straight onto an ASGI `send` (middleware has no Response objects)."""
    body = json.dumps({"error": {"message": message, "type": code, "code": status}}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class BodyLimitMiddleware:
    """413 for a body over `max_bytes`, by Content-Length or by counting (chunked uploads); the app
    then reads the buffered body as usual, and later `receive` calls (disconnects) pass through."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def _message(self) -> str:
        return (f"request body is over the {self.max_bytes} byte limit (EDITX_MAX_REQUEST_BYTES); "
                "send a shorter or compressed clip")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                if int(value) <= self.max_bytes + DRAIN_MAX_BYTES:
                    await _drain(receive, DRAIN_MAX_BYTES + self.max_bytes)
                return await send_error(send, 413, self._message(), "too_large")
        parts, seen = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before its body arrived: nobody to answer
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_bytes:
                if message.get("more_body", False):
                    await _drain(receive, DRAIN_MAX_BYTES)
                return await send_error(send, 413, self._message(), "too_large")
            parts.append(chunk)
            if not message.get("more_body", False):
                break
        body, given = b"".join(parts), False

        async def replay():
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _drain(receive, limit: int) -> None:
    seen = 0
    while seen <= limit:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return
        seen += len(message.get("body", b""))


class APIKeyMiddleware:
    """401 for /v1/ routes without one of the configured keys (`Authorization: Bearer <key>`)."""

    def __init__(self, app, keys: frozenset[str]) -> None:
        self.app, self.keys = app, keys

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.keys and scope.get("path", "").startswith("/v1/"):
            auth = dict(scope.get("headers", [])).get(b"authorization", b"").decode("latin-1")
            key = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
            if key not in self.keys:
                return await send_error(send, 401, "missing or invalid API key (send 'Authorization: Bearer <key>')",
                                        "unauthorized", {"WWW-Authenticate": "Bearer"})
        return await self.app(scope, receive, send)
