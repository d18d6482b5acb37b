"""Streaming responses without a thread per stream.

`Engine.stream()` buffers a request's AudioChunks (bounded, with backpressure: the engine pauses or
cancels a request whose reader falls behind, and bounds the streams open at once with
StreamLimitError, a 429). `ChunkFeed` awaits them on the event loop: the stream's `on_ready`
callback (run on the worker thread) wakes the loop with `call_soon_threadsafe`, and chunks are
taken with `next_nowait()`, so an open stream holds no threadpool thread however slowly its
audio comes.

`EngineStreamingResponse` owns the feed: whatever ends the response (the last chunk, an error, the
client going away, noticed at once by listening for the disconnect) the request is cancelled if
it still runs, exactly once.
"""

from __future__ import annotations

import asyncio

import anyio
from starlette.responses import StreamingResponse


class ChunkFeed:
    """A streaming request's AudioChunks, awaitable on the loop. Iterating ends with the request's
    error, if any; `result` then holds its Result."""

    def __init__(self, engine, request, **stream_options) -> None:
        self._loop = asyncio.get_running_loop()
        self._ready = asyncio.Event()
        # refuses at once: StreamLimitError, QueueFullError, ...
        self._stream = engine.stream(request, **stream_options)
        self._stream.on_ready(self._wake)

    def _wake(self) -> None:
        """Any thread (the worker's, on every chunk and at the end): wake the reader on the loop."""
        try:
            self._loop.call_soon_threadsafe(self._ready.set)
        except RuntimeError:  # the loop is closed (server shut down): nobody is listening any more
            self.close()

    @property
    def result(self):
        return self._stream.result

    def __aiter__(self) -> ChunkFeed:
        return self

    async def __anext__(self):
        while True:
            self._ready.clear()  # cleared before looking, so a chunk pushed after the look wakes us
            try:
                chunk = self._stream.next_nowait()  # the request's own error, if it failed
            except StopIteration:
                raise StopAsyncIteration from None
            if chunk is not None:
                return chunk
            await self._ready.wait()

    def close(self) -> None:
        """Cancel the request unless it is already settled (at its next token or chunk)."""
        self._stream.close()


class EngineStreamingResponse(StreamingResponse):
    """A StreamingResponse that cancels its request however it ends."""

    def __init__(self, content, feed: ChunkFeed, **kwargs) -> None:
        super().__init__(content, **kwargs)
        self.feed = feed

    async def __call__(self, scope, receive, send) -> None:
        try:
            async with anyio.create_task_group() as tg:

                async def stream() -> None:
                    try:
                        await self.stream_response(send)
                    except OSError:  # the client went away mid-stream (ASGI 2.4 servers say so on send)
                        pass
                    tg.cancel_scope.cancel()

                async def listen() -> None:
                    await self.listen_for_disconnect(receive)
                    self.feed.close()  # cancel the job now, not at its next chunk
                    tg.cancel_scope.cancel()

                tg.start_soon(stream)
                tg.start_soon(listen)
        finally:
            self.feed.close()
            await self.body_iterator.aclose()
