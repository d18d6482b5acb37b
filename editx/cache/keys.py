"""Cache keys: content hashes of a voice prompt and a cheap fingerprint of the model files behind it.

A prompt key changes whenever anything that shapes the cached prompt encoding changes: the decoded
samples, their rate, the transcript, the feature-extraction version and the model fingerprint. Every
part is written into the hash with a tag and a length prefix, so no two different inputs share a
byte stream (e.g. text "ab" + version "c" vs text "a" + version "bc", or text None vs "").
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from editx.errors import ModelFilesError

KEY_DIGEST_BYTES = 32  # BLAKE2b-256: 64 hex characters
_KEY_LAYOUT = b"editx/prompt-key/v1"
_FINGERPRINT_LAYOUT = b"editx/model-fingerprint/v2"  # v2: no mtimes (equal across hosts)

# The fast fingerprint reads this much from each end of a file. Checkpoint formats keep their
# headers (safetensors JSON header, ONNX graph, torch zip directory at the end) in these regions.
EDGE_BYTES = 1 << 20
_READ_CHUNK = 8 << 20

_memo: dict[tuple, bytes] = {}
_memo_lock = threading.Lock()


def _field(h: hashlib.blake2b, tag: bytes, payload: bytes) -> None:
    # tag (1 byte) + length (8 bytes, little-endian) + payload: a prefix-free encoding.
    h.update(tag)
    h.update(struct.pack("<Q", len(payload)))
    h.update(payload)


def prompt_key(
    samples: np.ndarray,
    sample_rate: int,
    text: str | None,
    feature_version: str,
    model_fingerprint: str,
) -> str:
    """BLAKE2b-256 hex key of a voice prompt.

    Samples are hashed as little-endian float32 (the decoded-audio convention), with their shape;
    float64 input that rounds to the same float32 values gives the same key.
    """
    arr = np.ascontiguousarray(np.asarray(samples), dtype="<f4")
    h = hashlib.blake2b(digest_size=KEY_DIGEST_BYTES)
    _field(h, b"L", _KEY_LAYOUT)
    _field(h, b"S", struct.pack(f"<{arr.ndim + 1}q", arr.ndim, *arr.shape))
    _field(h, b"A", arr.tobytes())
    _field(h, b"R", struct.pack("<q", int(sample_rate)))
    if text is None:
        _field(h, b"N", b"")
    else:
        _field(h, b"T", text.encode("utf-8"))
    _field(h, b"V", feature_version.encode("utf-8"))
    _field(h, b"M", model_fingerprint.encode("utf-8"))
    return h.hexdigest()


def _expand(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files named directly, plus every regular file under named folders (hidden entries skipped)."""
    files: list[Path] = []
    for p in paths:
        path = Path(p).resolve()
        if path.is_dir():
            for root, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                files.extend(Path(root) / n for n in sorted(names) if not n.startswith("."))
        elif path.is_file():
            files.append(path)
        else:
            raise ModelFilesError(f"cannot fingerprint {path}: no such file or folder; check the model dir")
    if not files:
        raise ModelFilesError("cannot fingerprint an empty set of model files; check the model dir")
    return sorted(set(files))


def _file_digest(path: Path, size: int, full: bool) -> bytes:
    h = hashlib.blake2b(digest_size=KEY_DIGEST_BYTES)
    with open(path, "rb") as f:
        if full or size <= 2 * EDGE_BYTES:
            while chunk := f.read(_READ_CHUNK):
                h.update(chunk)
        else:
            h.update(f.read(EDGE_BYTES))
            f.seek(size - EDGE_BYTES)
            h.update(f.read(EDGE_BYTES))
    return h.digest()


def fingerprint_files(paths: Iterable[str | os.PathLike], *, full: bool = False) -> str:
    """Hex fingerprint of a set of model files (folders are walked; hidden entries skipped).

    Fast mode (default) hashes, per file: its name relative to the files' common folder, its size,
    and its first and last MiB (the whole file when it is at most 2 MiB: every config, YAML and
    tokenizer file). Those regions hold the checkpoint formats' headers (the safetensors JSON header
    with every tensor's name, dtype, shape and offsets; the ONNX graph; the torch zip directory at
    the end), so opening a multi-GB checkpoint costs two small reads instead of reading every byte.
    No mtimes: two hosts that downloaded the same weights separately get the same fingerprint, so
    they share a cache tier. Per-file results are memoized per (path, size, mtime, ctime, inode)
    for the life of the process (so an edit is seen at the next call). The trade-off: a same-size
    edit in the middle of a large file goes unnoticed.

    `full=True` hashes names, sizes and the whole content: slower and exact.
    """
    files = _expand(paths)
    common = Path(os.path.commonpath([f.parent for f in files]))
    h = hashlib.blake2b(digest_size=KEY_DIGEST_BYTES)
    _field(h, b"L", _FINGERPRINT_LAYOUT)
    _field(h, b"F", b"full" if full else b"fast")
    for path in files:
        try:
            st = path.stat()
        except OSError as exc:
            raise ModelFilesError(f"cannot read model file {path}: {exc}") from exc
        # ctime and inode also key the memo: `os.utime` cannot put them back after an edit.
        stamp = (str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, full)
        with _memo_lock:
            digest = _memo.get(stamp)
        if digest is None:
            try:
                digest = _file_digest(path, st.st_size, full)
            except OSError as exc:
                raise ModelFilesError(f"cannot read model file {path}: {exc}") from exc
            with _memo_lock:
                _memo[stamp] = digest
        _field(h, b"N", path.relative_to(common).as_posix().encode("utf-8"))
        _field(h, b"Z", struct.pack("<q", st.st_size))
        _field(h, b"D", digest)
    return h.hexdigest()
