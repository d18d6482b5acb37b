"""Voice registry in Redis, seen by every replica on every host; and the store factory.

Each voice is one Redis hash (metadata + the float32 WAV bytes + their BLAKE2b digest) plus a member
of one sorted set (the index, scored by creation time). Adding and deleting touch both in one
MULTI/EXEC transaction or one Lua script, so no replica ever sees half a voice. The WAV bytes are
the same float32 WAV the SQLite store writes, so the samples read back are bit-exact and prompt-cache
keys computed at registration match the ones computed at synthesis time on any replica.

`make_voice_store` picks the store: Redis when a URL is configured, SQLite under the data dir otherwise.
"""

from __future__ import annotations

import hashlib
import io
import logging

import numpy as np
import soundfile as sf

from editx.audio.io import float_wav_bytes
from editx.errors import EditxError, ValidationError
from editx.pipeline.types import PromptAudio
from editx.server.voices import (
    SQLiteVoiceStore,
    UnknownVoiceError,
    Voice,
    VoiceStore,
    _check_id,
    new_voice,
)

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "editx:voices:"
_META_FIELDS = ("id", "name", "prompt_text", "sample_rate", "duration_s", "created_at")

# Delete a voice's hash and its index entry together; 0 when it did not exist (already deleted).
_DELETE_LUA = """
if redis.call('exists', KEYS[1]) == 0 then return 0 end
redis.call('del', KEYS[1])
redis.call('zrem', KEYS[2], ARGV[1])
return 1
"""


class StoreUnavailableError(EditxError):
    """The shared voice registry cannot be reached right now; retry later."""

    retry_after_s = 2.0


class CorruptVoiceError(EditxError):
    """A stored voice whose audio no longer matches its checksum; it must be registered again."""


def wav_bytes(audio: PromptAudio) -> bytes:
    """float32 WAV: the decoded samples, bit-exact."""
    return float_wav_bytes(audio.samples, audio.sample_rate)


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class RedisVoiceStore:
    """The `VoiceStore` interface over Redis; every method is one round trip or one transaction."""

    def __init__(self, url: str, prefix: str = DEFAULT_PREFIX, *, timeout_s: float = 5.0) -> None:
        try:
            import redis
        except ImportError as exc:
            raise ValidationError(f"a Redis voice registry was requested ({url}) but the 'redis' package is not "
                                  "installed; install it with: pip install 'editx[redis]'") from exc
        self._redis = redis
        self.url, self.prefix = url, prefix
        self._client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._index = prefix + "index"
        self._delete = self._client.register_script(_DELETE_LUA)
        self._warn_if_evicting()

    def _key(self, voice_id: str) -> str:
        return f"{self.prefix}voice:{_check_id(voice_id)}"

    def _run(self, what: str, fn):
        try:
            return fn()
        except self._redis.RedisError as exc:
            log.warning("voice registry unavailable", extra={"op": what, "error": str(exc)})
            raise StoreUnavailableError(f"the voice registry (Redis at {self._safe_url()}) cannot be reached: "
                                        f"{exc}; retry shortly or check the Redis server") from None

    def _safe_url(self) -> str:
        # never echo a password in an error message
        head, sep, tail = self.url.rpartition("@")
        return f"redis://***@{tail}" if sep else self.url

    def _warn_if_evicting(self) -> None:
        try:
            policy = self._client.config_get("maxmemory-policy").get("maxmemory-policy", "")
        except self._redis.RedisError:
            return  # CONFIG is often disabled on managed Redis; the docs say what to set
        if policy and policy != "noeviction" and "volatile" not in policy:
            log.warning("Redis may evict registered voices", extra={"maxmemory_policy": policy, "url": self._safe_url(),
                                                                    "fix": "set maxmemory-policy noeviction"})

    def add(self, name: str, prompt_text: str, audio: PromptAudio) -> Voice:
        voice = new_voice(name, prompt_text, audio)
        data = wav_bytes(audio)
        mapping = {**{k: str(v) for k, v in voice.to_dict().items()}, "audio": data, "audio_blake2b": _digest(data)}

        def tx():
            pipe = self._client.pipeline(transaction=True)  # MULTI ... EXEC: all or nothing
            pipe.hset(self._key(voice.id), mapping=mapping)
            pipe.zadd(self._index, {voice.id: voice.created_at})
            pipe.execute()

        self._run("add", tx)
        log.info("voice registered", extra={"voice_id": voice.id, "duration_s": voice.duration_s, "store": "redis"})
        return voice

    @staticmethod
    def _voice(values: list) -> Voice:
        v = [x.decode() for x in values]
        return Voice(v[0], v[1], v[2], int(v[3]), float(v[4]), float(v[5]))

    def get(self, voice_id: str) -> Voice:
        values = self._run("get", lambda: self._client.hmget(self._key(voice_id), _META_FIELDS))
        if values[0] is None:
            raise UnknownVoiceError(f"unknown voice {voice_id!r}; list voices with GET /v1/voices")
        return self._voice(values)

    def list(self) -> list[Voice]:
        def read():
            ids = self._client.zrange(self._index, 0, -1)
            pipe = self._client.pipeline(transaction=False)
            for vid in ids:
                pipe.hmget(self._key(vid.decode()), _META_FIELDS)
            return pipe.execute()

        return [self._voice(v) for v in self._run("list", read) if v[0] is not None]

    def delete(self, voice_id: str) -> None:
        key = self._key(voice_id)
        removed = self._run("delete", lambda: self._delete(keys=[key, self._index], args=[voice_id]))
        if not removed:
            raise UnknownVoiceError(f"unknown voice {voice_id!r}; list voices with GET /v1/voices")
        log.info("voice deleted", extra={"voice_id": voice_id, "store": "redis"})

    def audio(self, voice_id: str) -> PromptAudio:
        data, digest = self._run("audio", lambda: self._client.hmget(self._key(voice_id), ("audio", "audio_blake2b")))
        if data is None:
            raise UnknownVoiceError(f"unknown voice {voice_id!r}; list voices with GET /v1/voices")
        if digest is None or _digest(data) != digest.decode():
            raise CorruptVoiceError(f"the stored audio of voice {voice_id} is corrupt (checksum mismatch); "
                                    "delete it and register the clip again")
        samples, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
        return PromptAudio(np.ascontiguousarray(samples, dtype=np.float32), int(sr))

    def close(self) -> None:
        self._client.close()


def make_voice_store(settings, redis_url: str | None = None) -> VoiceStore:
    """Redis when a URL is given (`EDITX_VOICES_URL`, else `redis_url`, else `EDITX_REDIS_URL`), SQLite
    under `settings.data_dir` otherwise. Several replicas must share the Redis one."""
    from editx.config import env_value

    url = env_value("EDITX_VOICES_URL") or redis_url or env_value("EDITX_REDIS_URL")
    if url:
        log.info("voice registry: redis", extra={"prefix": DEFAULT_PREFIX})
        return RedisVoiceStore(url)
    return SQLiteVoiceStore(settings.data_dir)
