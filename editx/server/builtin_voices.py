"""Built-in voices: OpenAI's voice names (and a few of editx's own) resolve to bundled prompt clips.

The clips and transcripts live in editx/assets/voices/ (voices.json; how they were made and how
distinct they are: the README there). A built-in voice is a prompt like any registered one: the
editx backend clones from its clip + transcript, the lite backend matches a Kokoro blend to it; both
go through the prompt cache, which `warm` fills at start-up. `with_builtins` puts them in front of a
voice store: one registry, listed with `builtin: true`, never deleted.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from editx.errors import ValidationError
from editx.pipeline.types import PromptAudio
from editx.server.voices import UnknownVoiceError, Voice

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "voices"
OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse",
                 "marin", "cedar")
BUILTIN_CREATED_AT = 0.0  # they exist before any upload


class BuiltinVoiceError(ValidationError):
    """Built-in voices are part of the server and cannot be deleted or replaced."""


class BuiltinVoices:
    """The bundled voices: metadata from voices.json, audio decoded on first use and kept."""

    def __init__(self, root: Path = ASSETS) -> None:
        self.root = Path(root)
        manifest = json.loads((self.root / "voices.json").read_text())
        self._meta = {v["name"]: v for v in manifest["voices"]}
        self._audio: dict[str, PromptAudio] = {}
        self._lock = threading.Lock()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._meta)

    def find(self, name: str) -> str | None:
        """The built-in voice called `name` (any case), or None."""
        key = name.strip().lower() if isinstance(name, str) else None
        return key if key in self._meta else None

    def voice(self, name: str) -> Voice:
        m = self._meta[name]
        return Voice(id=name, name=name, prompt_text=m["transcript"], sample_rate=24_000,
                     duration_s=float(m["duration_s"]), created_at=BUILTIN_CREATED_AT, builtin=True)

    def voice_file(self, name: str) -> str:
        return self._meta[name]["file"]

    def audio(self, name: str) -> PromptAudio:
        with self._lock:
            if name not in self._audio:
                from editx.audio.io import load_audio

                clip = load_audio(self.root / self.voice_file(name), name=f"built-in voice {name}")
                self._audio[name] = PromptAudio(clip.samples, clip.sample_rate)
            return self._audio[name]


class StoreWithBuiltins:
    """A VoiceStore whose built-in voices come first; everything else goes to the wrapped store."""

    def __init__(self, store, builtins: BuiltinVoices) -> None:
        self.inner, self.builtins = store, builtins

    def add(self, name: str, prompt_text: str, audio: PromptAudio) -> Voice:
        return self.inner.add(name, prompt_text, audio)

    def get(self, voice_id: str) -> Voice:
        if (name := self.builtins.find(voice_id)) is not None:
            return self.builtins.voice(name)
        try:
            return self.inner.get(voice_id)
        except UnknownVoiceError:
            raise UnknownVoiceError(self.unknown_message(voice_id)) from None

    def list(self) -> list[Voice]:
        return [self.builtins.voice(n) for n in self.builtins.names] + list(self.inner.list())

    def delete(self, voice_id: str) -> None:
        if (name := self.builtins.find(voice_id)) is not None:
            raise BuiltinVoiceError(f"{name!r} is a built-in voice and cannot be deleted")
        self.inner.delete(voice_id)

    def audio(self, voice_id: str) -> PromptAudio:
        if (name := self.builtins.find(voice_id)) is not None:
            return self.builtins.audio(name)
        return self.inner.audio(voice_id)

    def close(self) -> None:
        self.inner.close()

    def unknown_message(self, voice_id) -> str:
        shown = ", ".join(self.builtins.names[:6])
        return (f"unknown voice {str(voice_id)[:100]!r}; built-in voices include {shown} (all "
                f"{len(self.builtins.names)} and your own: GET /v1/voices)")


def with_builtins(store) -> StoreWithBuiltins:
    return store if isinstance(store, StoreWithBuiltins) else StoreWithBuiltins(store, BuiltinVoices())


def warm(engine, store: StoreWithBuiltins, stop: threading.Event | None = None) -> dict[str, str]:
    """Encode every built-in voice into the prompt cache (start-up; until `stop` is set); name → outcome."""
    outcomes = {}
    for name in store.builtins.names:
        if stop is not None and stop.is_set():
            break
        outcomes[name] = engine.warm_prompt(store.builtins.audio(name))
    stopped = stop is not None and stop.is_set() and len(outcomes) < len(store.builtins.names)
    log.info("built-in voices warming stopped at shutdown" if stopped else "built-in voices warmed",
             extra={"voices": len(outcomes)})
    return outcomes

