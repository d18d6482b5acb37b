"""Shared tier: the same checksummed entry bytes in a store several hosts can reach (Redis).

A shared tier is an optimisation, never a dependency of a request: every Redis error is logged and
answered as a miss (reads) or a no-op (writes). After a failure the tier stays quiet for
`retry_after_s` so an outage costs one connect timeout, not one per request.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from typing import Protocol

from editx.errors import ValidationError

log = logging.getLogger(__name__)

# Delete the lock only if it still holds our token (another process may own it after our ttl).
_UNLOCK_LUA = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
)


class SharedTier(Protocol):
    """What TieredCache needs from a shared store. Implementations never raise on outages."""

    name: str
    errors: int  # store errors answered as a miss or a no-op so far

    def get(self, key: str) -> bytes | None: ...
    def put(self, key: str, data: bytes) -> bool: ...
    def delete(self, key: str) -> None: ...
    def clear(self) -> int: ...
    def usage(self) -> tuple[int | None, int | None]: ...
    def try_lock(self, key: str, ttl_s: float) -> str | None: ...
    def is_locked(self, key: str, ttl_s: float) -> bool: ...
    def unlock(self, key: str, token: str) -> None: ...
    def close(self) -> None: ...


class RedisTier:
    """Entries as Redis string values under `prefix + key`, optionally expiring after `ttl_s`."""

    name = "shared"

    def __init__(
        self,
        url: str,
        prefix: str = "editx:prompt:",
        ttl_s: float | None = None,
        *,
        timeout_s: float = 1.0,
        retry_after_s: float = 5.0,
        usage_scan_limit: int = 10_000,
    ) -> None:
        try:
            import redis
        except ImportError as exc:
            raise ValidationError(
                f"a Redis cache tier was requested ({url}) but the 'redis' package is not installed; "
                "install it with: pip install 'editx[redis]'"
            ) from exc
        self._redis = redis
        self.url = url
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.retry_after_s = retry_after_s
        self.usage_scan_limit = usage_scan_limit
        self._client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._down_until = 0.0
        self._lock = threading.Lock()
        self.errors = 0

    def _name(self, key: str) -> str:
        return self.prefix + key

    def _call(self, what: str, fn, default):
        """Run one Redis call; on any Redis/socket error log it, back off and return `default`."""
        now = time.monotonic()
        if now < self._down_until:
            return default
        try:
            return fn()
        except (self._redis.RedisError, OSError) as exc:
            with self._lock:
                self.errors += 1
                first = self._down_until == 0.0 or now >= self._down_until
                self._down_until = time.monotonic() + self.retry_after_s
            if first:
                log.warning(
                    "shared cache tier unavailable; continuing without it",
                    extra={
                        "op": what,
                        "url": self.url,
                        "error": str(exc),
                        "retry_after_s": self.retry_after_s,
                    },
                )
            return default

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def get(self, key: str) -> bytes | None:
        return self._call("get", lambda: self._client.get(self._name(key)), None)

    def put(self, key: str, data: bytes) -> bool:
        px = None if self.ttl_s is None else max(1, int(self.ttl_s * 1000))
        return bool(self._call("set", lambda: self._client.set(self._name(key), data, px=px), False))

    def delete(self, key: str) -> None:
        self._call("delete", lambda: self._client.delete(self._name(key)), 0)

    def _entry_names(self) -> list[bytes]:
        lock_prefix = (self.prefix + "lock:").encode()
        names = []
        for name in self._client.scan_iter(match=self.prefix + "*", count=500):
            if not name.startswith(lock_prefix):
                names.append(name)
                if len(names) >= self.usage_scan_limit:
                    break
        return names

    def clear(self) -> int:
        """Delete every entry under the prefix; returns how many were deleted."""

        def run() -> int:
            removed = 0
            while names := self._entry_names():
                removed += int(self._client.delete(*names))
            return removed

        return self._call("clear", run, 0)

    def usage(self) -> tuple[int | None, int | None]:
        """(entries, bytes) by scanning the prefix (capped at `usage_scan_limit`); Nones when down."""

        def run():
            names = self._entry_names()
            pipe = self._client.pipeline(transaction=False)
            for n in names:
                pipe.strlen(n)
            return len(names), int(sum(pipe.execute())) if names else 0

        return self._call("usage", run, (None, None))

    # ---- cross-process lock (best effort): SET NX PX ---------------------------------------------
    def _lock_name(self, key: str) -> str:
        return self.prefix + "lock:" + key

    def try_lock(self, key: str, ttl_s: float) -> str | None:
        token = secrets.token_hex(8)
        ok = self._call(
            "lock",
            lambda: self._client.set(self._lock_name(key), token, nx=True, px=max(1, int(ttl_s * 1000))),
            None,
        )
        return token if ok else None

    def is_locked(self, key: str, ttl_s: float) -> bool:
        """True while a holder's lock exists (Redis expires it after the holder's ttl); False when down."""
        return bool(self._call("lock", lambda: self._client.exists(self._lock_name(key)), 0))

    def unlock(self, key: str, token: str) -> None:
        self._call("unlock", lambda: self._client.eval(_UNLOCK_LUA, 1, self._lock_name(key), token), 0)

    def close(self) -> None:
        self._call("close", self._client.close, None)
