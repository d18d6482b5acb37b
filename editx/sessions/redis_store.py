"""Edit sessions in Redis, shared by every replica of a cluster (the same Redis as the voice registry).

Keys (prefix `editx:sessions:`): `s:<id>` a hash (name, current, times); `v:<id>` a hash of version
id -> JSON record; `blob:<digest>` the float32 WAV of one distinct audio content, stored once and
shared by every version (of any session) with that content; `index` a sorted set of session ids by
creation time, for the listing (a member whose session expired is dropped when a listing meets it;
the index's own TTL, renewed with every change, outlives every session in it). Every key carries the session TTL,
renewed on each change (a session's blobs with it), so Redis itself expires idle sessions. Adding a
version is one Lua script (parent check, version limit, insert, new current, TTL) so concurrent
edits of one version land as siblings and a deleted session never gets a stray version.
The memory bound is Redis's own `maxmemory` (use a `volatile-*` policy: every key here has a TTL).
"""

from __future__ import annotations

import json
import logging
import time
from functools import partial

from editx.errors import EditxError, ValidationError
from editx.pipeline.types import PromptAudio
from editx.sessions.blobs import audio_bytes, audio_from_bytes, digest_of
from editx.sessions.store import (
    NewVersion,
    Position,
    Session,
    SessionEntry,
    SessionLimits,
    Version,
    check_id,
    new_id,
    not_found,
    version_not_found,
)

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "editx:sessions:"

_ADD_LUA = """
if redis.call('exists', KEYS[1]) == 0 then return -1 end
if ARGV[1] ~= '' and redis.call('hexists', KEYS[2], ARGV[1]) == 0 then return -2 end
if redis.call('hlen', KEYS[2]) >= tonumber(ARGV[6]) then return -3 end
redis.call('hset', KEYS[2], ARGV[2], ARGV[3])
redis.call('hset', KEYS[1], 'current', ARGV[2], 'updated_at', ARGV[4])
redis.call('pexpire', KEYS[1], ARGV[5])
redis.call('pexpire', KEYS[2], ARGV[5])
local t = redis.call('pttl', KEYS[3])
if t == -1 or (t >= 0 and t < tonumber(ARGV[5])) then redis.call('pexpire', KEYS[3], ARGV[5]) end
return 1
"""
# the index lives as long as its longest-lived session: its TTL is only ever extended
_EXTEND_LUA = """
local t = redis.call('pttl', KEYS[1])
if t == -1 or (t >= 0 and t < tonumber(ARGV[1])) then redis.call('pexpire', KEYS[1], ARGV[1]) end
return 1
"""


class RedisSessionStore:
    """The SessionStore interface over Redis."""

    def __init__(self, url: str, limits: SessionLimits | None = None, prefix: str = DEFAULT_PREFIX, *,
                 timeout_s: float = 5.0) -> None:
        try:
            import redis
        except ImportError as exc:
            raise ValidationError("a Redis session store needs the 'redis' package: pip install 'editx[redis]'") from exc
        self._redis = redis
        self.limits = limits or SessionLimits()
        self.prefix = prefix
        self._client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._add = self._client.register_script(_ADD_LUA)
        self._extend = self._client.register_script(_EXTEND_LUA)
        self._ttl_ms = max(1, int(self.limits.ttl_s * 1000))

    def _k(self, kind: str, ident: str) -> str:
        return f"{self.prefix}{kind}:{ident}"

    def _run(self, fn):
        from editx.server.voices_redis import StoreUnavailableError

        try:
            return fn()
        except self._redis.RedisError as exc:
            log.warning("session store unavailable", extra={"error": str(exc)})
            raise StoreUnavailableError(f"the session store (Redis) cannot be reached: {exc}; retry shortly") from None

    def _put_blob(self, audio: PromptAudio) -> str:
        digest = digest_of(audio)
        key = self._k("blob", digest)

        def put():
            if not self._client.pexpire(key, self._ttl_ms):  # stored already: only renewed (stored once)
                self._client.set(key, audio_bytes(audio), px=self._ttl_ms)

        self._run(put)
        return digest

    def _record(self, session_id: str, parent: str | None, new: NewVersion, now: float) -> Version:
        digest = self._put_blob(new.audio)
        return Version(new_id("ver"), session_id, parent, new.op, new.edit, new.seed, new.text, digest,
                       new.audio.sample_rate, round(new.audio.duration_s, 3), new.timeline or {}, new.scores, now)

    @staticmethod
    def _json(v: Version) -> str:
        return json.dumps({**v.to_dict(), "seed": None if v.seed is None else str(v.seed)}, default=str)

    @staticmethod
    def _from_json(raw: bytes) -> Version:
        d = json.loads(raw)
        d["seed"] = None if d["seed"] is None else int(d["seed"])
        return Version(**d)

    def create(self, name: str, root: NewVersion) -> tuple[Session, Version]:
        now = time.time()
        sid = new_id("sess")
        name = (name or "").strip()[:100] or "session"
        v = self._record(sid, None, root, now)

        def tx():
            pipe = self._client.pipeline(transaction=True)
            pipe.hset(self._k("s", sid), mapping={"name": name, "current": v.id, "created_at": now, "updated_at": now})
            pipe.hset(self._k("v", sid), v.id, self._json(v))
            pipe.pexpire(self._k("s", sid), self._ttl_ms)
            pipe.pexpire(self._k("v", sid), self._ttl_ms)
            pipe.zadd(self._index, {sid: now})
            self._extend(keys=[self._index], args=[self._ttl_ms], client=pipe)
            pipe.execute()

        self._run(tx)
        self._prune_index()
        return Session(sid, name, v.id, now, now, now + self.limits.ttl_s), v

    @property
    def _index(self) -> str:
        return self.prefix + "index"

    def list(self, limit: int, after: Position | None = None) -> list[SessionEntry]:
        """Live sessions, newest first: up to `limit` of them after position `after`."""
        out: list[SessionEntry] = []
        gone: list[str] = []
        top, batch, offset = ("+inf" if after is None else after[0]), max(limit, 16), 0
        while len(out) < limit:
            page = self._run(partial(self._client.zrevrangebyscore, self._index, top, "-inf", start=offset, num=batch,
                                     withscores=True))
            offset += len(page)
            ids = [m.decode() for m, score in page
                   if after is None or score < after[0] or m.decode() < after[1]]  # ties: by id, descending
            entries, dead = self._entries(ids)
            out += entries[: limit - len(out)]
            gone += dead
            if len(page) < batch:
                break
        if gone:  # (after the walk: removing members while paging by offset would skip some)
            self._run(lambda: self._client.zrem(self._index, *gone))
        return out

    def _entries(self, ids: list[str]) -> tuple[list[SessionEntry], list[str]]:
        """The sessions of `ids` still alive (in order), and the ids whose session expired."""
        def read():
            pipe = self._client.pipeline(transaction=False)
            for sid in ids:
                pipe.hgetall(self._k("s", sid))
                pipe.hlen(self._k("v", sid))
            return pipe.execute()

        replies = self._run(read) if ids else []
        entries, gone = [], []
        for sid, raw, count in zip(ids, replies[::2], replies[1::2]):
            if raw:
                entries.append(SessionEntry(self._session(sid, raw), count))
            else:
                gone.append(sid)
        return entries, gone

    def _prune_index(self, sample: int = 4) -> None:
        """Drop index members whose session expired, from a random sample: run at every create, it
        keeps the index near the live sessions' count (a quarter stale at most, on average) even
        when nothing lists them."""
        def prune():
            ids = [m.decode() for m in self._client.zrandmember(self._index, sample) or []]
            pipe = self._client.pipeline(transaction=False)
            for sid in ids:
                pipe.exists(self._k("s", sid))
            dead = [sid for sid, alive in zip(ids, pipe.execute()) if not alive]
            if dead:
                self._client.zrem(self._index, *dead)

        self._run(prune)

    def _session(self, session_id: str, raw: dict) -> Session:
        d = {k.decode(): v.decode() for k, v in raw.items()}
        updated = float(d["updated_at"])
        return Session(session_id, d["name"], d["current"], float(d["created_at"]), updated,
                       updated + self.limits.ttl_s)

    def get(self, session_id: str) -> Session:
        raw = self._run(lambda: self._client.hgetall(self._k("s", check_id(session_id, "sess", "session"))))
        if not raw:
            raise not_found(session_id)
        return self._session(session_id, raw)

    def versions(self, session_id: str) -> list[Version]:
        self.get(session_id)
        raw = self._run(lambda: self._client.hvals(self._k("v", session_id)))
        return sorted((self._from_json(r) for r in raw), key=lambda v: (v.created_at, v.id))

    def version(self, session_id: str, version_id: str) -> Version:
        self.get(session_id)
        check_id(version_id, "ver", "version")
        raw = self._run(lambda: self._client.hget(self._k("v", session_id), version_id))
        if raw is None:
            raise version_not_found(session_id, version_id)
        return self._from_json(raw)

    def add_version(self, session_id: str, parent_id: str, new: NewVersion) -> Version:
        self.version(session_id, parent_id)
        v = self._record(session_id, parent_id, new, time.time())
        status = self._run(lambda: self._add(keys=[self._k("s", session_id), self._k("v", session_id), self._index], args=[
            parent_id, v.id, self._json(v), v.created_at, self._ttl_ms, self.limits.max_versions]))
        if status == -1:
            raise not_found(session_id)
        if status == -2:
            raise version_not_found(session_id, parent_id)
        if status == -3:
            raise ValidationError(f"session {session_id} has {self.limits.max_versions} versions, the limit; export "
                                  "what you need and start a new session")
        self._renew_blobs(session_id)
        return v

    def _renew_blobs(self, session_id: str) -> None:
        """A session's audio lives as long as the session (blobs shared with others keep the longer TTL)."""
        digests = {v.audio for v in self.versions(session_id)}

        def renew():
            pipe = self._client.pipeline(transaction=False)
            for d in digests:
                pipe.pexpire(self._k("blob", d), self._ttl_ms)
            pipe.execute()

        self._run(renew)

    def set_current(self, session_id: str, version_id: str) -> Session:
        self.version(session_id, version_id)
        now = time.time()

        def tx():
            pipe = self._client.pipeline(transaction=True)
            pipe.hset(self._k("s", session_id), mapping={"current": version_id, "updated_at": now})
            pipe.pexpire(self._k("s", session_id), self._ttl_ms)
            pipe.pexpire(self._k("v", session_id), self._ttl_ms)
            self._extend(keys=[self._index], args=[self._ttl_ms], client=pipe)
            pipe.execute()

        self._run(tx)
        self._renew_blobs(session_id)
        return self.get(session_id)

    def audio(self, session_id: str, version_id: str) -> PromptAudio:
        digest = self.version(session_id, version_id).audio
        data = self._run(lambda: self._client.get(self._k("blob", digest)))
        if data is None:
            raise EditxError(f"the audio of version {version_id} has expired from the session store")
        audio = audio_from_bytes(data, version_id)
        if digest_of(audio) != digest:
            raise EditxError(f"the stored audio of version {version_id} is corrupt (checksum mismatch)")
        return audio

    def delete(self, session_id: str) -> None:
        self.get(session_id)
        # blobs may be shared with other sessions: they go with their own TTL
        def drop():
            pipe = self._client.pipeline(transaction=True)
            pipe.delete(self._k("s", session_id), self._k("v", session_id))
            pipe.zrem(self._index, session_id)
            pipe.execute()

        self._run(drop)

    def close(self) -> None:
        self._client.close()
