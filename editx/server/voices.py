"""Voice registry: reference clips + transcripts stored once, reused by id.

`VoiceStore` is the interface; `SQLiteVoiceStore` (metadata in SQLite, audio as float32 WAV files
under the data dir) is the single-host default. Ids are generated here, never taken from uploads,
and the stored samples are bit-exact copies of the decoded prompt, so prompt-cache keys computed at
registration match the ones computed at synthesis time.
"""

from __future__ import annotations

import logging
import os
import secrets
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import soundfile as sf

from editx.audio.io import float_wav_bytes
from editx.errors import ValidationError
from editx.pipeline.types import PromptAudio

log = logging.getLogger(__name__)

MAX_NAME_CHARS = 100


class UnknownVoiceError(ValidationError):
    """No voice with that id."""


@dataclass(frozen=True)
class Voice:
    id: str
    name: str
    prompt_text: str
    sample_rate: int
    duration_s: float
    created_at: float
    builtin: bool = False  # bundled with the server (editx.server.builtin_voices): listed, never deleted

    def to_dict(self) -> dict:
        return asdict(self)


class VoiceStore(Protocol):
    def add(self, name: str, prompt_text: str, audio: PromptAudio) -> Voice: ...
    def get(self, voice_id: str) -> Voice: ...
    def list(self) -> list[Voice]: ...
    def delete(self, voice_id: str) -> None: ...
    def audio(self, voice_id: str) -> PromptAudio: ...
    def close(self) -> None: ...


def new_voice_id() -> str:
    return "voice_" + secrets.token_hex(8)


def new_voice(name: str, prompt_text: str, audio: PromptAudio) -> Voice:
    """Validated metadata for a clip about to be registered (every store uses this)."""
    name = (name or "").strip()[:MAX_NAME_CHARS] or "voice"
    prompt_text = (prompt_text or "").strip()
    if not prompt_text:
        raise ValidationError("prompt_text (the transcript of the reference clip) is required")
    return Voice(id=new_voice_id(), name=name, prompt_text=prompt_text, sample_rate=audio.sample_rate,
                 duration_s=round(audio.duration_s, 3), created_at=time.time())


def is_our_id(value, prefix: str, digits: int = 16) -> bool:
    """Ids are ours: a fixed prefix and hex digits; anything else cannot name a file or a row."""
    return (isinstance(value, str) and value.startswith(prefix) and len(value) == len(prefix) + digits
            and all(c in "0123456789abcdef" for c in value[len(prefix):]))


class ThreadConnections:
    """One connection per thread to the SQLite file at `path` (WAL, autocommit, durable writes);
    `close()` closes every thread's connection (at shutdown), and a later `get()` opens a new one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def get(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # check_same_thread=False only so that close() may close them all
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            conns, self._conns, self._local = self._conns, [], threading.local()
        for conn in conns:
            conn.close()


def _check_id(voice_id: str) -> str:
    if not is_our_id(voice_id, "voice_"):
        raise UnknownVoiceError(f"unknown voice {voice_id!r}; list voices with GET /v1/voices")
    return voice_id


class SQLiteVoiceStore:
    """SQLite metadata + audio files; safe for threads of one process and for several processes."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = Path(data_dir)
        self.audio_dir = self.dir / "voices"
        self.audio_dir.mkdir(parents=True, exist_ok=True)
        self._db_path = self.dir / "voices.sqlite3"
        self._conns = ThreadConnections(self._db_path)
        with self._conn() as c:
            c.execute("CREATE TABLE IF NOT EXISTS voices (id TEXT PRIMARY KEY, name TEXT NOT NULL, "
                      "prompt_text TEXT NOT NULL, sample_rate INTEGER NOT NULL, duration_s REAL NOT NULL, "
                      "created_at REAL NOT NULL)")

    def _conn(self) -> sqlite3.Connection:
        return self._conns.get()

    def close(self) -> None:
        """Close every thread's connection (at shutdown); a later call opens a new one."""
        self._conns.close()

    def _path(self, voice_id: str) -> Path:
        return self.audio_dir / f"{_check_id(voice_id)}.wav"

    def add(self, name: str, prompt_text: str, audio: PromptAudio) -> Voice:
        voice = new_voice(name, prompt_text, audio)
        path = self._path(voice.id)
        tmp = path.with_suffix(".tmp")
        # float32 WAV keeps the decoded samples bit-exact (cache keys stay valid)
        with open(tmp, "wb") as fh:
            fh.write(float_wav_bytes(audio.samples, audio.sample_rate))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        self._conn().execute("INSERT INTO voices VALUES (?,?,?,?,?,?)", (
            voice.id, voice.name, voice.prompt_text, voice.sample_rate, voice.duration_s, voice.created_at))
        log.info("voice registered", extra={"voice_id": voice.id, "duration_s": voice.duration_s})
        return voice

    def get(self, voice_id: str) -> Voice:
        row = self._conn().execute("SELECT * FROM voices WHERE id=?", (_check_id(voice_id),)).fetchone()
        if row is None:
            raise UnknownVoiceError(f"unknown voice {voice_id!r}; list voices with GET /v1/voices")
        return Voice(*row)

    def list(self) -> list[Voice]:
        rows = self._conn().execute("SELECT * FROM voices ORDER BY created_at").fetchall()
        return [Voice(*r) for r in rows]

    def delete(self, voice_id: str) -> None:
        self.get(voice_id)
        self._conn().execute("DELETE FROM voices WHERE id=?", (voice_id,))
        self._path(voice_id).unlink(missing_ok=True)
        log.info("voice deleted", extra={"voice_id": voice_id})

    def audio(self, voice_id: str) -> PromptAudio:
        self.get(voice_id)
        samples, sr = sf.read(self._path(voice_id), dtype="float32", always_2d=False)
        return PromptAudio(np.ascontiguousarray(samples, dtype=np.float32), int(sr))
