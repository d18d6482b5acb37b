"""Tiered prompt cache: memory LRU → disk folder → optional shared store, with single-flight compute.

`get_or_compute(key, compute)` answers from the fastest tier that holds the key (promoting the entry
into the faster tiers), or runs `compute()` once and fills every tier. Concurrent calls for the same
key in one process share one compute: the first caller computes, the others wait for it. When the
compute fails, the waiters get the same exception (a failure is most often the input's fault, and
repeating it N times multiplies the cost); only `editx.errors.CancelledError` (the leader's own
caller gave up) is not shared: a waiter then computes in its place. Across processes a lock (Redis SET NX when a shared
tier is set, otherwise a lock file in the disk folder) avoids duplicate work, best effort: a waiter
polls the tiers and computes itself when the lock goes away empty or after `lock_wait_s`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from editx.cache.disk import DiskTier, check_key
from editx.cache.entry import CacheEntry, CorruptEntryError, decode_entry, encode_entry
from editx.cache.memory import MemoryTier
from editx.cache.shared import RedisTier, SharedTier
from editx.config import env_value
from editx.errors import CancelledError
from editx.telemetry.log import log_event

log = logging.getLogger(__name__)

TIERS = ("memory", "disk", "shared")
MISS = "miss"


def default_cache_dir(cache_dir: Path | str | None = None) -> Path:
    """The prompt-cache folder: `<root>/prompts`, root = `cache_dir` (EngineConfig.cache_dir), else
    $EDITX_CACHE_DIR, else the platform user cache dir for "editx"."""
    if cache_dir is not None:
        root = Path(cache_dir)
    elif env := env_value("EDITX_CACHE_DIR"):
        root = env
    else:
        import platformdirs

        root = Path(platformdirs.user_cache_dir("editx"))
    return root.expanduser() / "prompts"


class CacheBusy(Exception):
    """Another thread or process is computing this entry now; ask again later (get_or_compute with
    wait=False: the Engine's worker parks the job instead of waiting)."""


@dataclass
class _Flight:
    done: threading.Event = field(default_factory=threading.Event)
    entry: CacheEntry | None = None
    error: BaseException | None = None


class TieredCache:
    """Prompt cache over up to three tiers; thread-safe, and process-safe on a shared folder.

    memory_bytes=0 disables the memory tier, disk_dir=None the disk tier, shared=None the shared one.
    """

    def __init__(
        self,
        memory_bytes: int,
        disk_dir: Path | None,
        disk_bytes: int,
        shared: SharedTier | None = None,
        *,
        lock_ttl_s: float = 120.0,
        lock_wait_s: float = 60.0,
        poll_s: float = 0.05,
    ) -> None:
        self.memory = MemoryTier(memory_bytes) if memory_bytes > 0 else None
        self.disk = DiskTier(Path(disk_dir), disk_bytes) if disk_dir is not None and disk_bytes > 0 else None
        self.shared = shared
        self.lock_ttl_s = lock_ttl_s
        self.lock_wait_s = lock_wait_s
        self.poll_s = poll_s
        self._flights: dict[str, _Flight] = {}
        self._flights_lock = threading.Lock()
        self._counts_lock = threading.Lock()
        self._counts: dict[str, int] = {}

    @classmethod
    def from_config(cls, config) -> TieredCache:
        """Build from an EngineConfig: its byte bounds, `default_cache_dir(config.cache_dir)`, and a
        RedisTier when `redis_url` is set. `cache_enabled=False` gives a cache with no tiers."""
        if not config.cache_enabled:
            return cls(0, None, 0)
        shared = RedisTier(config.redis_url) if config.redis_url else None
        return cls(
            config.cache_memory_bytes, default_cache_dir(config.cache_dir), config.cache_disk_bytes, shared
        )

    @property
    def tiers(self) -> tuple[str, ...]:
        """Enabled tiers, fastest first."""
        on = {
            "memory": self.memory is not None,
            "disk": self.disk is not None,
            "shared": self.shared is not None,
        }
        return tuple(t for t in TIERS if on[t])

    def _count(self, name: str, n: int = 1) -> None:
        with self._counts_lock:
            self._counts[name] = self._counts.get(name, 0) + n

    # ---- lookups -----------------------------------------------------------------------------
    def get(self, key: str) -> tuple[CacheEntry | None, str]:
        """(entry, tier that answered) or (None, "miss"); lower-tier hits are promoted upward."""
        return self._get(check_key(key), count=True)

    def _get(self, key: str, *, count: bool) -> tuple[CacheEntry | None, str]:
        def note(tier: str, hit: bool) -> None:
            if count:
                self._count(f"{tier}.{'hits' if hit else 'misses'}")

        if self.memory is not None:
            entry = self.memory.get(key)
            note("memory", entry is not None)
            if entry is not None:
                return entry, "memory"
        if self.disk is not None:
            entry = self.disk.get(key)
            note("disk", entry is not None)
            if entry is not None:
                if self.memory is not None:
                    self.memory.put(key, entry)
                return entry, "disk"
        if self.shared is not None:
            data = self.shared.get(key)
            entry = None
            if data is not None:
                try:
                    entry = decode_entry(key, data)
                except CorruptEntryError as exc:
                    self._count("shared.corrupt")
                    log.warning("shared cache entry corrupt; deleted", extra={"key": key, "reason": str(exc)})
                    self.shared.delete(key)
            note("shared", entry is not None)
            if entry is not None:
                if self.disk is not None:
                    self.disk.put_bytes(key, data)
                if self.memory is not None:
                    self.memory.put(key, entry)
                return entry, "shared"
        return None, MISS

    def put(self, key: str, entry: CacheEntry) -> None:
        """Store in every enabled tier (serialized once for disk and shared). Never raises on I/O."""
        check_key(key)
        if not isinstance(entry, CacheEntry):
            raise TypeError(f"cache entries must be CacheEntry, got {type(entry).__name__}")
        if self.memory is not None:
            self.memory.put(key, entry)
        if self.disk is None and self.shared is None:
            return
        try:
            data = encode_entry(key, entry)
        except Exception:  # a cache must never fail the request that fills it
            log.exception("cannot serialize cache entry; kept in memory only", extra={"key": key})
            return
        if self.disk is not None:
            self.disk.put_bytes(key, data)
        if self.shared is not None:
            self.shared.put(key, data)

    # ---- single flight -----------------------------------------------------------------------
    def get_or_compute(self, key: str, compute: Callable[[], CacheEntry], *, wait: bool = True,
                       force: bool = False) -> tuple[CacheEntry, str]:
        """(entry, outcome): outcome is the tier that answered, or "miss" when this call computed it or
        waited for a concurrent call that computed it.

        While another process holds the entry's lock (it is computing it): wait up to `lock_wait_s`
        (default), raise CacheBusy at once (`wait=False`), or compute it anyway (`force=True`, what
        the default does once its wait is over)."""
        check_key(key)
        entry, outcome = self._single_flight(key, compute, wait, force)
        # INFO on purpose: the reference system's HIT/MISS lines never reached its logs
        log_event(log, "cache", key=key[:16], outcome=outcome, hit=outcome != MISS)
        return entry, outcome

    def busy(self, key: str) -> bool:
        """True when the entry is in no tier and another thread or process is computing it now."""
        if self._get(check_key(key), count=False)[0] is not None:
            return False
        with self._flights_lock:
            if key in self._flights:
                return True
        locker = self.shared if self.shared is not None else self.disk
        return locker is not None and self.lock_wait_s > 0 and locker.is_locked(key, self.lock_ttl_s)

    def _single_flight(self, key: str, compute: Callable[[], CacheEntry], wait: bool,
                       force: bool) -> tuple[CacheEntry, str]:
        while True:
            entry, tier = self._get(key, count=True)
            if entry is not None:
                return entry, tier
            with self._flights_lock:
                flight = self._flights.get(key)
                leader = flight is None
                if leader:
                    flight = self._flights[key] = _Flight()
            if leader:
                break
            if not wait and not force:
                raise CacheBusy(key)
            self._count("coalesced")
            flight.done.wait()
            if flight.error is None:
                return flight.entry, MISS
            if not isinstance(flight.error, (CancelledError, CacheBusy)):
                raise flight.error
            # The leader was cancelled by its own caller, or would not wait: take over (loop).
        try:
            entry, outcome = self._lead(key, compute, wait, force)
            flight.entry = entry
            return entry, outcome
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._flights_lock:
                del self._flights[key]
            flight.done.set()

    def _lead(self, key: str, compute: Callable[[], CacheEntry], wait: bool, force: bool) -> tuple[CacheEntry, str]:
        # Another flight may have finished between our miss and our taking the lead.
        entry, tier = self._get(key, count=False)
        if entry is not None:
            return entry, tier
        locker = self.shared if self.shared is not None else self.disk
        token = None
        if locker is not None and self.lock_wait_s > 0:
            token, entry, tier = self._cross_process_wait(locker, key, wait, force)
            if entry is not None:
                return entry, tier
        try:
            self._count("computes")
            try:
                entry = compute()
            except BaseException:
                self._count("compute_errors")
                raise
            if not isinstance(entry, CacheEntry):
                raise TypeError(f"compute() must return a CacheEntry, got {type(entry).__name__}")
            self.put(key, entry)
        finally:
            if token is not None:
                locker.unlock(key, token)
        return entry, MISS

    def _cross_process_wait(self, locker, key: str, wait: bool,
                            force: bool) -> tuple[str | None, CacheEntry | None, str]:
        """(lock token or None, entry found while waiting or None, its tier)."""
        deadline = time.monotonic() + self.lock_wait_s
        unlocked_seen = 0
        waited = False
        while True:
            token = locker.try_lock(key, self.lock_ttl_s)
            if token is not None:
                # The previous holder puts before it unlocks: look once more before computing.
                entry, tier = self._get(key, count=False)
                if entry is not None:
                    locker.unlock(key, token)
                    return None, entry, tier
                return token, None, MISS
            if not waited:
                self._count("lock_waits")
                waited = True
            entry, tier = self._get(key, count=False)
            if entry is not None:
                return None, entry, tier
            if not locker.is_locked(key, self.lock_ttl_s):
                unlocked_seen += 1
                if unlocked_seen >= 2:  # the store cannot lock right now (e.g. Redis down)
                    return None, None, MISS
                continue
            if force:
                return None, None, MISS
            if not wait:
                raise CacheBusy(key)
            if time.monotonic() >= deadline:
                log.info("gave up waiting for another process to compute a cache entry", extra={"key": key})
                return None, None, MISS
            time.sleep(self.poll_s)

    # ---- memory-only attachments -------------------------------------------------------------
    def attach(self, key: str, name: str, obj: Any, nbytes: int) -> bool:
        """Keep `obj` next to the in-memory entry for `key` (counted in the memory bound, never
        serialized). False when the entry is not in memory or would no longer fit."""
        return self.memory is not None and self.memory.attach(check_key(key), name, obj, nbytes)

    def attachment(self, key: str, name: str) -> Any | None:
        return None if self.memory is None else self.memory.attachment(check_key(key), name)

    # ---- maintenance -------------------------------------------------------------------------
    def delete(self, key: str) -> None:
        check_key(key)
        if self.memory is not None:
            self.memory.delete(key)
        if self.disk is not None:
            self.disk.delete(key)
        if self.shared is not None:
            self.shared.delete(key)

    def clear(self, tiers: tuple[str, ...] = TIERS) -> dict[str, int]:
        """Empty the named tiers; returns entries removed per tier (the memory count is what it held)."""
        removed: dict[str, int] = {}
        if "memory" in tiers and self.memory is not None:
            removed["memory"] = self.memory.usage()[0]
            self.memory.clear()
        if "disk" in tiers and self.disk is not None:
            removed["disk"] = self.disk.clear()
        if "shared" in tiers and self.shared is not None:
            removed["shared"] = self.shared.clear()
        return removed

    def verify(self) -> dict:
        """Check every disk file (corrupt ones are deleted) — see DiskTier.verify for the fields."""
        if self.disk is None:
            return {"checked": 0, "ok": 0, "corrupt": [], "vanished": 0, "stale_removed": 0, "bytes": 0}
        return self.disk.verify()

    def stats(self) -> dict:
        """Per-tier entries/bytes/hits/misses/evictions plus compute counters (disk and shared are scanned)."""
        with self._counts_lock:
            c = dict(self._counts)
        out: dict[str, Any] = {}
        if self.memory is not None:
            n, b, att = self.memory.usage()
            out["memory"] = {
                "entries": n,
                "bytes": b,
                "max_bytes": self.memory.max_bytes,
                "attachments": att,
                "evictions": self.memory.evictions,
            }
        if self.disk is not None:
            n, b = self.disk.usage()
            out["disk"] = {
                "entries": n,
                "bytes": b,
                "max_bytes": self.disk.max_bytes,
                "dir": str(self.disk.root),
                "evictions": self.disk.evictions,
                "corrupt": self.disk.corrupt,
                "write_errors": self.disk.write_errors,
            }
        if self.shared is not None:
            n, b = self.shared.usage()
            out["shared"] = {
                "entries": n,
                "bytes": b,
                "corrupt": c.get("shared.corrupt", 0),
                "errors": self.shared.errors,
            }
        for tier, d in out.items():
            d["hits"] = c.get(f"{tier}.hits", 0)
            d["misses"] = c.get(f"{tier}.misses", 0)
        for name in ("computes", "compute_errors", "coalesced", "lock_waits"):
            out[name] = c.get(name, 0)
        return out

    def close(self) -> None:
        if self.shared is not None:
            self.shared.close()
