"""The voice registry as the event loop sees it: every store call runs on a worker thread.

SQLite and Redis calls block (disk, network; a stalled Redis for up to its socket timeout). Run on
the loop, one slow call would freeze every request, `/healthz` included. The calls get a thread
pool of their own (a bounded `CapacityLimiter`) so a stalled store cannot take the threads that
decode uploads and encode results either.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import anyio.to_thread
from anyio import CapacityLimiter

from editx.pipeline.types import PromptAudio
from editx.server.voices import Voice, VoiceStore

STORE_THREADS = 8


class AsyncVoiceStore:
    """The `VoiceStore` interface, awaitable; the store itself stays usable from threads."""

    def __init__(self, store: VoiceStore, threads: int = STORE_THREADS) -> None:
        self.store = store
        self._limiter = CapacityLimiter(threads)

    async def _run(self, fn, *args):
        return await anyio.to_thread.run_sync(partial(fn, *args), limiter=self._limiter)

    async def add(self, name: str, prompt_text: str, audio: PromptAudio) -> Voice:
        return await self._run(self.store.add, name, prompt_text, audio)

    async def get(self, voice_id: str) -> Voice:
        return await self._run(self.store.get, voice_id)

    async def list(self) -> list[Voice]:
        return await self._run(self.store.list)

    async def delete(self, voice_id: str) -> None:
        return await self._run(self.store.delete, voice_id)

    async def audio(self, voice_id: str) -> PromptAudio:
        return await self._run(self.store.audio, voice_id)


@dataclass(frozen=True)
class PromptLimits:
    min_s: float
    max_s: float


def prompt_limits(request) -> PromptLimits:
    """The loaded engine's prompt bounds (EDITX_MIN_PROMPT_S / EDITX_MAX_PROMPT_S): the server checks
    them while decoding, so a bad clip is refused before it is decoded whole or reaches the engine."""
    from editx.server.app import engine_of

    config = engine_of(request).config
    return PromptLimits(config.min_prompt_s, config.max_prompt_s)


async def voice_prompt(request, voice_id: str) -> tuple[Voice, PromptAudio]:
    """A registered voice and its audio for a request. A voice outside the prompt bounds (registered
    before they were set) is refused from its metadata, before its audio is read."""
    from editx.audio.io import check_duration

    limits = prompt_limits(request)
    voice = await request.app.state.voices.get(voice_id)
    check_duration(f"voice {voice.id}", voice.duration_s, limits.min_s, limits.max_s)
    return voice, await request.app.state.voices.audio(voice_id)
