"""Edit sessions: a tree of versions of one clip, stored durably beside the voice registry.

A session starts from a clone or an uploaded clip (its root version); every edit adds a child of the
version it edited, so editing an older version branches. `current` points at one version; undo
moves it to its parent. Audio is stored once per distinct content (BLAKE2b of the float32 WAV), so a
version whose output equals another's costs no second copy. Sessions expire `ttl_s` after their last
change, and the store keeps its audio under `max_bytes` by dropping the least recently changed
sessions. `SQLiteSessionStore` is the single-host default (data dir: sessions.sqlite3 + sessions/);
`editx.sessions.redis_store.RedisSessionStore` serves a cluster.
"""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from editx.errors import EditxError, ValidationError
from editx.pipeline.types import PromptAudio

log = logging.getLogger(__name__)


def _now() -> float:
    return time.time()


class SessionNotFoundError(EditxError):
    """No such session (or it expired), or no such version in that session."""


@dataclass(frozen=True)
class SessionLimits:
    ttl_s: float = 7 * 24 * 3600.0  # a session untouched this long is gone
    max_versions: int = 200  # per session
    max_bytes: int = 2 * 2**30  # all sessions' audio together
    max_sessions: int = 10_000

    @classmethod
    def from_env(cls) -> SessionLimits:
        """Defaults, then EDITX_SESSION_TTL_S / _MAX_VERSIONS / _MAX_BYTES (editx.config.ENV_TABLE)."""
        from editx.config import env_value

        names = {"ttl_s": "EDITX_SESSION_TTL_S", "max_versions": "EDITX_SESSION_MAX_VERSIONS",
                 "max_bytes": "EDITX_SESSION_MAX_BYTES"}
        return cls(**{f: v for f, name in names.items() if (v := env_value(name)) is not None})

    def __post_init__(self) -> None:
        if self.ttl_s <= 0 or self.max_versions < 1 or self.max_bytes < 2**20 or self.max_sessions < 1:
            raise ValidationError("session limits: ttl_s > 0, max_versions >= 1, max_bytes >= 1 MiB, max_sessions >= 1")


@dataclass(frozen=True)
class Version:
    id: str
    session_id: str
    parent: str | None
    op: str  # "clone" | "upload" | "edit"
    edit: dict | None  # {"type", "info", "text", "iterations"} for an edit; {"voice_id", "text"} for a clone
    seed: int | None
    text: str  # the transcript of this version's audio
    audio: str  # content hash of its audio
    sample_rate: int
    duration_s: float
    timeline: dict
    scores: dict | None  # verification scores, when a verifier exists
    created_at: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Session:
    id: str
    name: str
    current: str
    created_at: float
    updated_at: float
    expires_at: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SessionEntry:
    """One row of a session listing: the session and how many versions it holds."""

    session: Session
    version_count: int

    def to_dict(self) -> dict:
        return {**self.session.to_dict(), "object": "session", "version_count": self.version_count}


# A listing position: (created_at, id) of the last session already listed; the next page starts after it.
# Sessions are listed newest first, ties by id (descending), the same order in every store.
Position = tuple[float, str]


@dataclass(frozen=True)
class NewVersion:
    """What a caller knows about a version before the store names it."""

    op: str
    text: str
    audio: PromptAudio
    edit: dict | None = None
    seed: int | None = None
    timeline: dict | None = None
    scores: dict | None = None


class SessionStore(Protocol):
    limits: SessionLimits

    def create(self, name: str, root: NewVersion) -> tuple[Session, Version]: ...
    def get(self, session_id: str) -> Session: ...
    def list(self, limit: int, after: Position | None = None) -> list[SessionEntry]: ...
    def versions(self, session_id: str) -> list[Version]: ...
    def version(self, session_id: str, version_id: str) -> Version: ...
    def add_version(self, session_id: str, parent_id: str, new: NewVersion) -> Version: ...
    def set_current(self, session_id: str, version_id: str) -> Session: ...
    def audio(self, session_id: str, version_id: str) -> PromptAudio: ...
    def delete(self, session_id: str) -> None: ...


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def check_id(value: str, prefix: str, what: str) -> str:
    """Ids are ours (prefix + 16 hex digits); anything else is simply not found."""
    if not (isinstance(value, str) and value.startswith(prefix + "_") and len(value) == len(prefix) + 17
            and all(c in "0123456789abcdef" for c in value[len(prefix) + 1:])):
        raise SessionNotFoundError(f"unknown {what} {value!r}")
    return value


def not_found(session_id: str) -> SessionNotFoundError:
    return SessionNotFoundError(f"session {session_id!r} does not exist or has expired; start one with "
                                "POST /v1/sessions")


def version_not_found(session_id: str, version_id: str) -> SessionNotFoundError:
    return SessionNotFoundError(f"version {version_id!r} is not in session {session_id!r}; list its versions with "
                                f"GET /v1/sessions/{session_id}")


def _version(row) -> Version:
    (vid, sid, parent, op, edit, seed, text, audio, sr, dur, timeline, scores, created) = row
    return Version(vid, sid, parent, op, json.loads(edit) if edit else None, None if seed is None else int(seed),
                   text, audio, sr, dur, json.loads(timeline or "{}"), json.loads(scores) if scores else None, created)


class SQLiteSessionStore:
    """Metadata in SQLite (WAL), audio as content-addressed float32 WAV files."""

    def __init__(self, data_dir: Path, limits: SessionLimits | None = None) -> None:
        from editx.sessions.blobs import BlobDir

        self.limits = limits or SessionLimits()
        self.dir = Path(data_dir)
        self.blobs = BlobDir(self.dir / "sessions")
        self._db_path = self.dir / "sessions.sqlite3"
        self._local = threading.local()
        with self._tx() as c:
            c.execute("CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, name TEXT NOT NULL, current TEXT "
                      "NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL)")
            c.execute("CREATE TABLE IF NOT EXISTS versions (id TEXT PRIMARY KEY, session_id TEXT NOT NULL, parent TEXT,"
                      " op TEXT NOT NULL, edit TEXT, seed TEXT, text TEXT NOT NULL, audio TEXT NOT NULL, sample_rate "
                      "INTEGER NOT NULL, duration_s REAL NOT NULL, timeline TEXT, scores TEXT, created_at REAL NOT NULL)")
            c.execute("CREATE INDEX IF NOT EXISTS versions_session ON versions (session_id)")
            c.execute("CREATE INDEX IF NOT EXISTS sessions_created ON sessions (created_at, id)")  # the listing
            c.execute("CREATE TABLE IF NOT EXISTS blobs (hash TEXT PRIMARY KEY, bytes INTEGER NOT NULL, "
                      "created_at REAL NOT NULL)")

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self._db_path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            self._local.conn = conn
        return conn

    def _tx(self):
        return _Transaction(self._conn())

    def _session(self, c, session_id: str, now: float) -> Session:
        row = c.execute("SELECT id, name, current, created_at, updated_at FROM sessions WHERE id=?",
                        (check_id(session_id, "sess", "session"),)).fetchone()
        if row is None or row[4] + self.limits.ttl_s < now:
            raise not_found(session_id)
        return Session(*row, expires_at=row[4] + self.limits.ttl_s)

    def _store_audio(self, c, audio: PromptAudio, now: float) -> str:
        digest, size = self.blobs.put(audio)
        c.execute("INSERT OR IGNORE INTO blobs VALUES (?,?,?)", (digest, size, now))
        return digest

    def _insert(self, c, session_id: str, parent: str | None, new: NewVersion, now: float) -> Version:
        digest = self._store_audio(c, new.audio, now)
        v = Version(new_id("ver"), session_id, parent, new.op, new.edit, new.seed, new.text, digest,
                    new.audio.sample_rate, round(new.audio.duration_s, 3), new.timeline or {}, new.scores, now)
        c.execute("INSERT INTO versions VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", (
            v.id, v.session_id, v.parent, v.op, json.dumps(v.edit) if v.edit else None,
            None if v.seed is None else str(v.seed), v.text, v.audio, v.sample_rate, v.duration_s,
            json.dumps(v.timeline, default=str), json.dumps(v.scores) if v.scores else None, v.created_at))
        return v

    def create(self, name: str, root: NewVersion) -> tuple[Session, Version]:
        now = _now()
        sid = new_id("sess")
        name = (name or "").strip()[:100] or "session"
        with self._tx() as c:
            v = self._insert(c, sid, None, root, now)
            c.execute("INSERT INTO sessions VALUES (?,?,?,?,?)", (sid, name, v.id, now, now))
        self._enforce_bounds(keep=sid)
        log.info("session created", extra={"session_id": sid, "op": root.op})
        return Session(sid, name, v.id, now, now, now + self.limits.ttl_s), v

    def get(self, session_id: str) -> Session:
        return self._session(self._conn(), session_id, _now())

    def list(self, limit: int, after: Position | None = None) -> list[SessionEntry]:
        """Live sessions, newest first: up to `limit` of them after position `after`."""
        now = _now()
        where, args = "updated_at >= ?", [now - self.limits.ttl_s]
        if after is not None:
            where += " AND (created_at < ? OR (created_at = ? AND id < ?))"
            args += [after[0], after[0], after[1]]
        rows = self._conn().execute(
            f"SELECT id, name, current, created_at, updated_at, (SELECT COUNT(*) FROM versions v WHERE "
            f"v.session_id = s.id) FROM sessions s WHERE {where} ORDER BY created_at DESC, id DESC LIMIT ?",
            (*args, limit)).fetchall()
        return [SessionEntry(Session(*r[:5], expires_at=r[4] + self.limits.ttl_s), r[5]) for r in rows]

    def versions(self, session_id: str) -> list[Version]:
        c = self._conn()
        self._session(c, session_id, _now())
        rows = c.execute("SELECT * FROM versions WHERE session_id=? ORDER BY created_at, rowid", (session_id,))
        return [_version(r) for r in rows.fetchall()]

    def version(self, session_id: str, version_id: str) -> Version:
        c = self._conn()
        self._session(c, session_id, _now())
        check_id(version_id, "ver", "version")
        row = c.execute("SELECT * FROM versions WHERE id=? AND session_id=?", (version_id, session_id)).fetchone()
        if row is None:
            raise version_not_found(session_id, version_id)
        return _version(row)

    def add_version(self, session_id: str, parent_id: str, new: NewVersion) -> Version:
        now = _now()
        with self._tx() as c:  # one write transaction: concurrent edits become siblings, none is lost
            self._session(c, session_id, now)
            if c.execute("SELECT 1 FROM versions WHERE id=? AND session_id=?", (parent_id, session_id)).fetchone() is None:
                raise version_not_found(session_id, parent_id)
            count = c.execute("SELECT COUNT(*) FROM versions WHERE session_id=?", (session_id,)).fetchone()[0]
            if count >= self.limits.max_versions:
                raise ValidationError(f"session {session_id} has {count} versions, the limit; export what you need "
                                      "and start a new session")
            v = self._insert(c, session_id, parent_id, new, now)
            c.execute("UPDATE sessions SET current=?, updated_at=? WHERE id=?", (v.id, now, session_id))
        self._enforce_bounds(keep=session_id)
        return v

    def set_current(self, session_id: str, version_id: str) -> Session:
        now = _now()
        with self._tx() as c:
            self._session(c, session_id, now)
            check_id(version_id, "ver", "version")
            if c.execute("SELECT 1 FROM versions WHERE id=? AND session_id=?", (version_id, session_id)).fetchone() is None:
                raise version_not_found(session_id, version_id)
            c.execute("UPDATE sessions SET current=?, updated_at=? WHERE id=?", (version_id, now, session_id))
            return self._session(c, session_id, now)

    def audio(self, session_id: str, version_id: str) -> PromptAudio:
        return self.blobs.get(self.version(session_id, version_id).audio)

    def delete(self, session_id: str) -> None:
        with self._tx() as c:
            self._session(c, session_id, _now())
            self._drop(c, [session_id])
        self._collect()

    # ---- bounds -------------------------------------------------------------------------------
    @staticmethod
    def _drop(c, ids: list[str]) -> None:
        for sid in ids:
            c.execute("DELETE FROM versions WHERE session_id=?", (sid,))
            c.execute("DELETE FROM sessions WHERE id=?", (sid,))

    def _enforce_bounds(self, keep: str) -> None:
        """Drop expired sessions, then the least recently changed ones while over a bound."""
        now = _now()
        with self._tx() as c:
            expired = [r[0] for r in c.execute("SELECT id FROM sessions WHERE updated_at < ?",
                                               (now - self.limits.ttl_s,)).fetchall()]
            self._drop(c, expired)
            total = c.execute("SELECT COALESCE(SUM(bytes), 0) FROM blobs").fetchone()[0]
            count = c.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]
            evicted = []
            if total > self.limits.max_bytes or count > self.limits.max_sessions:
                sizes = c.execute(
                    "SELECT s.id, (SELECT COALESCE(SUM(b.bytes), 0) FROM blobs b WHERE b.hash IN (SELECT audio FROM "
                    "versions WHERE session_id=s.id)) FROM sessions s WHERE s.id != ? ORDER BY s.updated_at",
                    (keep,)).fetchall()
                for sid, size in sizes:
                    if total <= self.limits.max_bytes and count <= self.limits.max_sessions:
                        break
                    evicted.append(sid)
                    total, count = total - size, count - 1
                self._drop(c, evicted)
        if expired or evicted:
            log.info("sessions dropped", extra={"expired": len(expired), "evicted": len(evicted)})
            self._collect()

    def _collect(self) -> None:
        """Delete audio no version refers to. Files go inside the write transaction, so a version
        being added (its file written inside its own transaction) never loses its audio."""
        with self._tx() as c:
            dead = [r[0] for r in c.execute(
                "SELECT hash FROM blobs WHERE hash NOT IN (SELECT audio FROM versions)").fetchall()]
            for digest in dead:
                c.execute("DELETE FROM blobs WHERE hash=?", (digest,))
                self.blobs.delete(digest)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): one writer at a time, across processes too."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, *_):
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


def make_session_store(settings, limits: SessionLimits | None = None, redis_url: str | None = None) -> SessionStore:
    """Redis when a URL is given (a cluster: every replica must see every session), else SQLite
    under the voice registry's data dir."""
    if redis_url:
        from editx.sessions.redis_store import RedisSessionStore

        return RedisSessionStore(redis_url, limits or SessionLimits.from_env())
    return SQLiteSessionStore(settings.data_dir, limits or SessionLimits.from_env())

