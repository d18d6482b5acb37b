"""Streaming responses without a thread per stream.

The Engine's worker thread emits a streaming request's AudioChunks; `ChunkFeed` hands each one to
the event loop (`call_soon_threadsafe`) and the response awaits them, so an open stream holds no
threadpool thread however slowly its audio comes. The feed is bounded: a client that reads so
much slower than audio is produced that `STREAM_BUFFER_CHUNKS` chunks wait for it has its request
cancelled and its stream ended with an error, instead of the server buffering without end.

`EngineStreamingResponse` owns the feed and its stream slot: whatever ends the response (the last
chunk, an error, the client going away, noticed at once by listening for the disconnect) the job
is cancelled if it still runs and the slot is freed, exactly once.
"""

from __future__ import annotations

import asyncio
import logging

import anyio
from starlette.responses import StreamingResponse

from editx.errors import EditxError

log = logging.getLogger(__name__)

STREAM_BUFFER_CHUNKS = 64  # ~1 to 2 minutes of audio at the default chunk sizes
_END = object()


class SlowConsumerError(EditxError):
    """The client read the stream far slower than audio was produced; the request was cancelled."""


class ChunkFeed:
    """A streaming request submitted to the Engine; its AudioChunks, awaitable on the loop.
    Iterating ends with the request's error, if any; `result` then holds its Result."""

    def __init__(self, engine, request, max_chunks: int = STREAM_BUFFER_CHUNKS) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()
        self._max = max_chunks
        self.engine = engine
        self.overflowed = False
        self.result = None
        self.future = engine.submit(request, emit=self._post, keep_audio=False)
        self.future.add_done_callback(lambda _f: self._post(_END))

    def _post(self, item) -> None:
        """Any thread: hand `item` to the loop (the worker calls this for every chunk)."""
        try:
            self._loop.call_soon_threadsafe(self._put, item)
        except RuntimeError:  # the loop is closed (server shut down): nobody is listening any more
            self.close()

    def _put(self, item) -> None:
        if item is not _END and self._queue.qsize() >= self._max:
            if not self.overflowed:
                self.overflowed = True
                log.warning("stream consumer too slow; request cancelled", extra={"buffered": self._max})
                self.close()
            return
        self._queue.put_nowait(item)

    def __aiter__(self) -> ChunkFeed:
        return self

    async def __anext__(self):
        item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)  # an ended feed stays ended
            if self.overflowed:
                raise SlowConsumerError(f"the client read the stream too slowly ({self._max} chunks waited); "
                                        "the request was cancelled")
            self.result = self.future.result()  # the request's own error, if it failed
            raise StopAsyncIteration
        return item

    def close(self) -> None:
        """Cancel the request unless it is already settled (at its next token or chunk)."""
        if not self.future.done():
            self.engine.cancel(self.future)


def open_feed(request, engine, req) -> tuple[ChunkFeed, object]:
    """Take one of the app's stream slots (429 when none is free) and submit `req` as a stream;
    returns the feed and the slot's release function, for `EngineStreamingResponse`."""
    slots = request.app.state.streams
    slots.acquire()
    try:
        return ChunkFeed(engine, req), slots.release
    except BaseException:
        slots.release()
        raise


class EngineStreamingResponse(StreamingResponse):
    """A StreamingResponse that cancels its request and frees its slot however it ends."""

    def __init__(self, content, feed: ChunkFeed, release, **kwargs) -> None:
        super().__init__(content, **kwargs)
        self.feed, self._release, self._released = feed, release, False

    def _end(self) -> None:
        self.feed.close()
        if not self._released:
            self._released = True
            self._release()

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
            self._end()
            await self.body_iterator.aclose()

    def __del__(self) -> None:  # a response never sent still gives its slot back
        if not self._released:
            self._end()
