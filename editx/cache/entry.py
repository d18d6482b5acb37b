"""The cached unit (named tensors + small JSON metadata) and its checksummed safetensors byte form.

The same bytes go to the disk tier (one file per key) and the shared tier (one Redis value per key).
The safetensors metadata carries the JSON `meta`, the key, and a BLAKE2b checksum over the meta and
every tensor's name, dtype, shape and raw bytes, so a truncated, bit-flipped or mixed-up payload is
detected on read instead of reaching a request.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

FORMAT_VERSION = "1"
_META_KEY = "editx.meta"
_FORMAT_KEY = "editx.format"
_CHECKSUM_KEY = "editx.checksum"
_CACHE_KEY = "editx.key"

MetaValue = str | int | float | bool | None | list


class CorruptEntryError(Exception):
    """Bytes that do not decode to a valid entry (truncated, corrupted, wrong key or format)."""


@dataclass(frozen=True, eq=False)
class CacheEntry:
    """Named tensors plus JSON-able metadata. Treat both as read-only once built.

    `meta` is normalized through JSON at construction (tuples become lists), so an entry read back
    from disk or Redis compares equal to the one that was stored.
    """

    tensors: dict[str, torch.Tensor]
    meta: dict[str, MetaValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        tensors = dict(self.tensors)
        for name, t in tensors.items():
            if not isinstance(name, str) or not name or name.startswith("__"):
                raise ValueError(
                    f"cache tensor names must be non-empty strings not starting with '__': {name!r}"
                )
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"cache tensor {name!r} must be a torch.Tensor, got {type(t).__name__}")
        try:
            meta = json.loads(json.dumps(dict(self.meta)))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"cache meta must be JSON-serializable: {exc}") from exc
        object.__setattr__(self, "tensors", tensors)
        object.__setattr__(self, "meta", meta)

    @property
    def nbytes(self) -> int:
        """Bytes held by the tensors plus the size of the metadata JSON."""
        tensor_bytes = sum(t.numel() * t.element_size() for t in self.tensors.values())
        return tensor_bytes + len(_meta_json(self.meta))

    def equal(self, other: CacheEntry) -> bool:
        """Bit-exact comparison: same names, dtypes, shapes, bytes and meta."""
        if self.meta != other.meta or self.tensors.keys() != other.tensors.keys():
            return False
        for name, a in self.tensors.items():
            b = other.tensors[name]
            if a.dtype != b.dtype or a.shape != b.shape:
                return False
            if _raw_bytes(a.detach().cpu()) != _raw_bytes(b.detach().cpu()):
                return False
        return True


def _meta_json(meta: dict) -> str:
    return json.dumps(meta, sort_keys=True, separators=(",", ":"))


def _raw_bytes(t: torch.Tensor) -> bytes:
    flat = t.contiguous().reshape(-1)
    if flat.numel() == 0:
        return b""
    return flat.view(torch.uint8).numpy().tobytes()


def _checksum(key: str, meta_json: str, tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.blake2b(digest_size=32)

    def put(b: bytes) -> None:
        h.update(struct.pack("<Q", len(b)))
        h.update(b)

    put(FORMAT_VERSION.encode())
    put(key.encode())
    put(meta_json.encode())
    for name in sorted(tensors):
        t = tensors[name]
        put(name.encode())
        put(str(t.dtype).encode())
        put(struct.pack(f"<{t.dim() + 1}q", t.dim(), *t.shape))
        put(_raw_bytes(t))
    return h.hexdigest()


def encode_entry(key: str, entry: CacheEntry) -> bytes:
    """Serialize to safetensors bytes (tensors copied to CPU) with meta, key and checksum in its metadata."""
    # Fresh contiguous CPU copies: safetensors refuses tensors that share storage.
    tensors = {name: t.detach().to("cpu", copy=True).contiguous() for name, t in entry.tensors.items()}
    meta_json = _meta_json(entry.meta)
    metadata = {
        _FORMAT_KEY: FORMAT_VERSION,
        _CACHE_KEY: key,
        _META_KEY: meta_json,
        _CHECKSUM_KEY: _checksum(key, meta_json, tensors),
    }
    return st_save(tensors, metadata=metadata)


def read_metadata(data: bytes) -> dict[str, str]:
    """The safetensors header's `__metadata__` (raises CorruptEntryError on a malformed header)."""
    if len(data) < 8:
        raise CorruptEntryError(f"payload of {len(data)} bytes is shorter than a safetensors header")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise CorruptEntryError("safetensors header runs past the end of the payload (truncated?)")
    try:
        header = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptEntryError(f"unreadable safetensors header: {exc}") from exc
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict):
        raise CorruptEntryError("safetensors header has no editx metadata")
    return meta


def decode_entry(key: str, data: bytes) -> CacheEntry:
    """Parse and verify bytes made by `encode_entry`; raises CorruptEntryError on any mismatch."""
    metadata = read_metadata(data)
    if metadata.get(_FORMAT_KEY) != FORMAT_VERSION:
        raise CorruptEntryError(f"unknown cache entry format {metadata.get(_FORMAT_KEY)!r}")
    if metadata.get(_CACHE_KEY) != key:
        raise CorruptEntryError(f"entry was stored for key {metadata.get(_CACHE_KEY)!r}, not {key!r}")
    try:
        tensors = st_load(data)
    except Exception as exc:  # safetensors raises its own error types for malformed payloads
        raise CorruptEntryError(f"unreadable safetensors payload: {exc}") from exc
    meta_json = metadata.get(_META_KEY, "")
    if _checksum(key, meta_json, tensors) != metadata.get(_CHECKSUM_KEY):
        raise CorruptEntryError("checksum mismatch (corrupted payload)")
    try:
        meta: Any = json.loads(meta_json)
    except ValueError as exc:
        raise CorruptEntryError(f"unreadable entry meta: {exc}") from exc
    return CacheEntry(tensors=tensors, meta=meta)
