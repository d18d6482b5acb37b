"""Content-addressed audio files: one float32 WAV per distinct content, named by the BLAKE2b of its
samples and rate (not of the file: libsndfile stamps float WAVs with the time they were written)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import soundfile as sf

from editx.errors import EditxError
from editx.pipeline.types import PromptAudio


def digest_of(audio: PromptAudio) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(int(audio.sample_rate).to_bytes(4, "little"))
    h.update(np.ascontiguousarray(audio.samples, dtype="<f4").tobytes())
    return h.hexdigest()


def audio_bytes(audio: PromptAudio) -> bytes:
    """float32 WAV: the samples bit-exact (an edit of a stored version sees exactly what was made)."""
    from editx.server.voices_redis import wav_bytes

    return wav_bytes(audio)


def audio_from_bytes(data: bytes, what: str) -> PromptAudio:
    import io

    try:
        samples, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise EditxError(f"the stored audio of {what} cannot be read ({exc})") from None
    return PromptAudio(np.ascontiguousarray(samples, dtype=np.float32), int(sr))


class BlobDir:
    """`root/ab/abcdef....wav`; writes go through a temporary file and an atomic rename."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        if not (len(digest) == 32 and all(c in "0123456789abcdef" for c in digest)):
            raise EditxError(f"not an audio digest: {digest!r}")
        return self.root / digest[:2] / f"{digest}.wav"

    def put(self, audio: PromptAudio) -> tuple[str, int]:
        digest = digest_of(audio)
        path = self.path(digest)
        if not path.exists():  # the same content is stored once
            data = audio_bytes(audio)
            path.parent.mkdir(exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        return digest, path.stat().st_size

    def get(self, digest: str) -> PromptAudio:
        path = self.path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise EditxError(f"the audio {digest} is missing from {self.root}") from None
        audio = audio_from_bytes(data, digest)
        if digest_of(audio) != digest:
            raise EditxError(f"the stored audio {digest} is corrupt (checksum mismatch)")
        return audio

    def delete(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)
