"""Disk tier: one checksummed safetensors file per key, atomic writes, byte-bounded LRU eviction.

Several processes may share one folder. Writers go through a temp file in the same folder, fsync it,
`os.replace` it onto `<key>.safetensors` and fsync the folder, so readers only ever see whole files.
Eviction looks only at finished files (temp files of live writers are never touched; temp files
older than `STALE_S` are leftovers of a crash and are removed), ordered by mtime, which every read
refreshes. A file that vanishes between listing and reading is a miss; a file that fails to decode
is logged, deleted and a miss. Nothing here raises into a request: I/O failures are logged.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
import threading
import time
from pathlib import Path

from editx.cache.entry import CacheEntry, CorruptEntryError, decode_entry, encode_entry
from editx.errors import ValidationError

log = logging.getLogger(__name__)

SUFFIX = ".safetensors"
STALE_S = 3600.0  # a temp or lock file this old belongs to a process that died
LOW_WATER = 0.9  # evict down to this fraction of the bound, so eviction scans are rare
_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


def check_key(key: str) -> str:
    """Keys become file names and Redis keys: letters, digits, '_' and '-', at most 128 characters."""
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise ValidationError(f"invalid cache key {key!r}: use 1-128 letters, digits, '_' or '-'")
    return key


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a folder; the rename itself is still atomic
    finally:
        os.close(fd)


class DiskTier:
    """Byte-bounded folder of entries; thread- and process-safe."""

    def __init__(self, root: Path, max_bytes: int, *, rescan_every: int = 32) -> None:
        if max_bytes < 0:
            raise ValueError(f"disk_bytes must be >= 0, got {max_bytes}")
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self.rescan_every = rescan_every
        self.evictions = 0
        self.corrupt = 0
        self.write_errors = 0
        self._lock = threading.Lock()
        self._est_bytes: int | None = None  # this process's running estimate of the folder size
        self._puts = 0
        self._made = False

    def path(self, key: str) -> Path:
        return self.root / f"{check_key(key)}{SUFFIX}"

    # ---- reads -------------------------------------------------------------------------------
    def get(self, key: str) -> CacheEntry | None:
        path = self.path(key)
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                data = f.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning(
                "cache file unreadable; treated as a miss", extra={"path": str(path), "error": str(exc)}
            )
            return None
        try:
            entry = decode_entry(key, data)
        except CorruptEntryError as exc:
            self._drop_corrupt(path, st, str(exc))
            return None
        try:
            os.utime(path)  # LRU: eviction goes by mtime
        except OSError:
            pass
        return entry

    def _drop_corrupt(self, path: Path, st: os.stat_result, reason: str) -> None:
        self.corrupt += 1
        log.warning("cache file corrupt; deleted", extra={"path": str(path), "reason": reason})
        try:
            # Another process may have replaced it with a good file since we read it: only delete ours.
            if os.stat(path).st_ino == st.st_ino:
                os.unlink(path)
        except OSError:
            pass

    # ---- writes ------------------------------------------------------------------------------
    def put(self, key: str, entry: CacheEntry) -> bool:
        return self.put_bytes(key, encode_entry(key, entry))

    def put_bytes(self, key: str, data: bytes) -> bool:
        """Atomically write `data` as the file for `key`; False (logged) when it is not stored."""
        path = self.path(key)
        if len(data) > self.max_bytes:
            return False
        tmp = self.root / f".{key}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            if not self._made:
                self.root.mkdir(parents=True, exist_ok=True)
                self._made = True
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            _fsync_dir(self.root)
        except OSError as exc:
            self.write_errors += 1
            log.warning(
                "cache write failed; entry kept in faster tiers only",
                extra={"path": str(path), "error": str(exc)},
            )
            try:
                tmp.unlink()
            except OSError:
                pass
            return False
        self._after_write(key, len(data))
        return True

    def _after_write(self, key: str, size: int) -> None:
        with self._lock:
            self._puts += 1
            if self._est_bytes is not None:
                self._est_bytes += size
            if (
                self._est_bytes is None
                or self._est_bytes > self.max_bytes
                or self._puts % self.rescan_every == 0
            ):
                self._evict_locked(keep=key)

    def _scan(self) -> tuple[list[tuple[int, int, Path]], list[Path]]:
        """([(mtime_ns, size, path)] of finished files, [stale temp/lock files])."""
        files: list[tuple[int, int, Path]] = []
        stale: list[Path] = []
        now = time.time()
        try:
            it = os.scandir(self.root)
        except OSError:
            return files, stale
        with it:
            for de in it:
                try:
                    st = de.stat(follow_symlinks=False)
                except OSError:
                    continue  # vanished between listing and stat
                if de.name.startswith("."):
                    if now - st.st_mtime > STALE_S and (
                        de.name.endswith(".tmp") or de.name.endswith(".lock")
                    ):
                        stale.append(Path(de.path))
                elif de.name.endswith(SUFFIX):
                    files.append((st.st_mtime_ns, st.st_size, Path(de.path)))
        return files, stale

    def _evict_locked(self, keep: str | None = None) -> None:
        files, stale = self._scan()
        for p in stale:
            _unlink_quiet(p)
        total = sum(size for _, size, _ in files)
        if total > self.max_bytes:
            target = int(self.max_bytes * LOW_WATER)
            keep_name = f"{keep}{SUFFIX}" if keep else None
            for _, size, p in sorted(files, key=lambda f: f[0]):
                if total <= target:
                    break
                if p.name == keep_name:
                    continue
                if _unlink_quiet(p):
                    self.evictions += 1
                total -= size
        self._est_bytes = total

    # ---- maintenance -------------------------------------------------------------------------
    def delete(self, key: str) -> None:
        _unlink_quiet(self.path(key))

    def usage(self) -> tuple[int, int]:
        """(entries, bytes) of finished files, from a fresh scan."""
        files, _ = self._scan()
        return len(files), sum(size for _, size, _ in files)

    def clear(self) -> int:
        """Delete every finished file (live writers' temp files are left alone); returns the count."""
        files, stale = self._scan()
        removed = sum(_unlink_quiet(p) for _, _, p in files)
        for p in stale:
            _unlink_quiet(p)
        with self._lock:
            self._est_bytes = None
        return removed

    def verify(self) -> dict:
        """Decode every file; delete corrupt ones and stale temp files. Returns a report dict."""
        files, stale = self._scan()
        report = {"checked": 0, "ok": 0, "corrupt": [], "vanished": 0, "stale_removed": 0, "bytes": 0}
        for p in stale:
            report["stale_removed"] += _unlink_quiet(p)
        for _, size, p in files:
            key = p.name[: -len(SUFFIX)]
            report["checked"] += 1
            try:
                with open(p, "rb") as f:
                    st = os.fstat(f.fileno())
                    data = f.read()
            except FileNotFoundError:
                report["vanished"] += 1
                continue
            except OSError as exc:
                log.warning("cache file unreadable during verify", extra={"path": str(p), "error": str(exc)})
                continue
            try:
                if not _KEY_RE.match(key):
                    raise CorruptEntryError("file name is not a valid cache key")
                decode_entry(key, data)
            except CorruptEntryError as exc:
                self._drop_corrupt(p, st, str(exc))
                report["corrupt"].append(key)
                continue
            report["ok"] += 1
            report["bytes"] += size
        return report

    # ---- cross-process lock (best effort) ----------------------------------------------------
    def _lock_path(self, key: str) -> Path:
        return self.root / f".{check_key(key)}.lock"

    def try_lock(self, key: str, ttl_s: float) -> str | None:
        """Create the key's lock file; a token when we hold it, None when a live holder has it.

        A lock older than `ttl_s`, or held by a process of this host that no longer exists, is taken
        over. (Processes in other pid namespaces with the same host name may look dead: then both
        compute, which costs time but stays correct since writes are atomic.)
        """
        path = self._lock_path(key)
        token = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(8)}"
        for _ in range(3):
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._held(path, ttl_s):
                    return None
                _unlink_quiet(path)  # the holder died or hung past its ttl: take over
                continue
            except OSError:
                return None
            with os.fdopen(fd, "w") as f:
                f.write(token)
            return token
        return None

    def _held(self, path: Path, ttl_s: float) -> bool:
        try:
            if time.time() - path.stat().st_mtime > ttl_s:
                return False
            holder = path.read_text()
        except OSError:
            return False  # released meanwhile
        host, _, rest = holder.partition(":")
        pid = rest.partition(":")[0]
        if host != socket.gethostname() or not pid.isdigit():
            return True  # another host, or a holder still writing its token
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except OSError:
            return True  # exists but belongs to another user
        return True

    def is_locked(self, key: str, ttl_s: float) -> bool:
        return self._held(self._lock_path(key), ttl_s)

    def unlock(self, key: str, token: str) -> None:
        path = self._lock_path(key)
        try:
            if path.read_text() == token:
                path.unlink()
        except OSError:
            pass


def _unlink_quiet(path: Path) -> bool:
    try:
        os.unlink(path)
        return True
    except OSError:
        return False
