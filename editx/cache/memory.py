"""In-process LRU tier bounded in bytes, with per-entry attachments that never leave memory.

An attachment is any object stored next to an entry (e.g. the LM prefix KV snapshot of a voice
prompt): it is counted in the byte bound, dropped with its entry, and never serialized.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from editx.cache.entry import CacheEntry


@dataclass
class _Slot:
    entry: CacheEntry
    nbytes: int
    attachments: dict[str, tuple[Any, int]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.nbytes + sum(n for _, n in self.attachments.values())


class MemoryTier:
    """Thread-safe LRU; `max_bytes=0` disables it. An entry larger than the bound is not kept."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"memory_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._slots: OrderedDict[str, _Slot] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.evictions = 0

    def get(self, key: str) -> CacheEntry | None:
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                return None
            self._slots.move_to_end(key)
            return slot.entry

    def put(self, key: str, entry: CacheEntry) -> bool:
        """Store (replacing any entry under `key`, attachments kept); False when it cannot fit."""
        nbytes = entry.nbytes
        with self._lock:
            old = self._slots.pop(key, None)
            if old is not None:
                self._bytes -= old.total
            slot = _Slot(entry, nbytes, old.attachments if old is not None else {})
            if slot.total > self.max_bytes:
                slot.attachments = {}
            if slot.total > self.max_bytes:
                return False
            self._slots[key] = slot
            self._bytes += slot.total
            self._evict_locked(keep=key)
            return True

    def attach(self, key: str, name: str, obj: Any, nbytes: int) -> bool:
        """Hang `obj` (counted as `nbytes`) on the entry under `key`; False if the entry is not here
        or the entry plus its attachments would not fit in the bound."""
        if nbytes < 0:
            raise ValueError(f"attachment nbytes must be >= 0, got {nbytes}")
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                return False
            old = slot.attachments.get(name)
            new_total = slot.total - (old[1] if old else 0) + nbytes
            if new_total > self.max_bytes:
                return False
            self._bytes += new_total - slot.total
            slot.attachments[name] = (obj, int(nbytes))
            self._slots.move_to_end(key)
            self._evict_locked(keep=key)
            return True

    def attachment(self, key: str, name: str) -> Any | None:
        with self._lock:
            slot = self._slots.get(key)
            if slot is None or name not in slot.attachments:
                return None
            self._slots.move_to_end(key)
            return slot.attachments[name][0]

    def detach(self, key: str, name: str) -> None:
        with self._lock:
            slot = self._slots.get(key)
            if slot is not None and name in slot.attachments:
                self._bytes -= slot.attachments.pop(name)[1]

    def delete(self, key: str) -> None:
        with self._lock:
            slot = self._slots.pop(key, None)
            if slot is not None:
                self._bytes -= slot.total

    def clear(self) -> None:
        with self._lock:
            self._slots.clear()
            self._bytes = 0

    def _evict_locked(self, keep: str) -> None:
        while self._bytes > self.max_bytes:
            victim = next(iter(self._slots))
            if victim == keep:  # cannot happen while keep fits alone, but never loop forever
                break
            self._bytes -= self._slots.pop(victim).total
            self.evictions += 1

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._slots

    def keys(self) -> list[str]:
        """Keys from least to most recently used."""
        with self._lock:
            return list(self._slots)

    def usage(self) -> tuple[int, int, int]:
        """(entries, bytes including attachments, attachments)."""
        with self._lock:
            n_att = sum(len(s.attachments) for s in self._slots.values())
            return len(self._slots), self._bytes, n_att
