"""Decode user audio once (any common format) to mono float32, and encode results for clients.

Decoding tries libsndfile (soundfile: wav, flac, ogg/vorbis, opus, mp3) and falls back to FFmpeg
(PyAV: m4a/aac, webm, opus in other containers, …). Channels are averaged to mono, as upstream does
(`wav.mean(dim=0)`). Every problem with the input surfaces as one AudioError line naming the source.
"""

from __future__ import annotations

import io
import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
import soundfile as sf

from editx.audio.features import resample
from editx.errors import AudioError, ValidationError

log = logging.getLogger(__name__)

MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 384000
ENCODE_FORMATS = ("wav", "flac", "mp3", "opus", "aac", "pcm")
FORMAT_ALIASES = {"ogg": "opus", "m4a": "aac"}  # file suffixes that name one of the formats above


@dataclass(frozen=True)
class _Codec:
    container: str
    codec: str
    bit_rate: int
    rates: tuple[int, ...]  # sample rates the codec takes; others are resampled to 48 kHz first


FFMPEG_CODECS = {
    "mp3": _Codec("mp3", "libmp3lame", 128_000, (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)),
    "opus": _Codec("ogg", "libopus", 64_000, (8000, 12000, 16000, 24000, 48000)),
    "aac": _Codec("adts", "aac", 128_000, (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)),
}
ENCODE_FALLBACK_RATE = 48000
SF_BLOCK_FRAMES = 1 << 16  # frames decoded at a time when a file's length must be counted
UNKNOWN_SIZE = 0xFFFFFFFF  # RIFF/data size for a WAV stream whose length is not known yet


@dataclass(frozen=True, eq=False)
class Audio:
    """Decoded mono audio: samples (N,) float32, finite, at `sample_rate` Hz."""

    samples: np.ndarray
    sample_rate: int

    @property
    def duration_s(self) -> float:
        return self.samples.shape[0] / self.sample_rate


Source = str | Path | bytes | bytearray | memoryview | BinaryIO


def _describe(src: Source) -> str:
    if isinstance(src, (str, Path)):
        return Path(src).name
    if isinstance(src, (bytes, bytearray, memoryview)):
        return f"<{len(src)} bytes>"
    name = getattr(src, "name", None)
    return Path(name).name if isinstance(name, str) else "<stream>"


def _open_bytes(src: Source, label: str) -> bytes:
    if isinstance(src, (str, Path)):
        path = Path(src)
        if not path.is_file():
            raise AudioError(f"{label}: file not found ({path}); check the path")
        data = path.read_bytes()
    elif isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
    elif hasattr(src, "read"):
        data = src.read()
        if not isinstance(data, (bytes, bytearray)):
            raise AudioError(f"{label}: the stream gave {type(data).__name__}, not bytes; open it in 'rb' mode")
        data = bytes(data)
    else:
        raise AudioError(f"audio source must be a path, bytes or a binary file object, got {type(src).__name__}")
    if not data:
        raise AudioError(f"{label}: empty file (0 bytes)")
    return data


class AudioTooLongError(AudioError):
    """Audio longer than the caller's limit (a server answers 413: the content is over its limit)."""


def check_duration(label: str, seconds: float, min_seconds: float | None = None,
                   max_seconds: float | None = None) -> None:
    """`seconds` of audio against the bounds; the message names the length and the bound."""
    if max_seconds is not None and seconds > max_seconds:
        raise AudioTooLongError(f"{label}: audio is {seconds:.1f} s long; the limit is {max_seconds:g} s")
    if min_seconds is not None and seconds < min_seconds:
        raise AudioError(f"{label}: audio is {seconds:.2f} s long; the minimum is {min_seconds:g} s")


def _check_header(label: str, sample_rate: int, channels: int, frames: int | None, max_seconds) -> None:
    if channels < 1:
        raise AudioError(f"{label}: the audio has no channels")
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise AudioError(f"{label}: sample rate {sample_rate} Hz is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz")
    if frames is not None:
        check_duration(label, frames / sample_rate, max_seconds=max_seconds)


def _decode_soundfile(data: bytes, label: str, max_seconds) -> tuple[np.ndarray, int] | None:
    try:
        f = sf.SoundFile(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        return None  # not a libsndfile format: let FFmpeg try
    with f:
        # the header's frame count rejects a too-long file before a sample is decoded; without one
        # (a streamed WAV, some mp3s), blocks are decoded and counted until the limit is passed
        _check_header(label, f.samplerate, f.channels, f.frames if f.frames > 0 else None, max_seconds)
        parts, total = [], 0
        try:
            for block in f.blocks(blocksize=SF_BLOCK_FRAMES, dtype="float32", always_2d=True):  # (n, C)
                parts.append(block.mean(axis=1, dtype=np.float32))
                total += block.shape[0]
                _check_header(label, f.samplerate, 1, total, max_seconds)
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise AudioError(f"{label}: the audio data is corrupt ({exc})") from exc
        samples = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        return samples, int(f.samplerate)


def _decode_ffmpeg(data: bytes, label: str, max_seconds) -> tuple[np.ndarray, int]:
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise AudioError(
            f"{label}: not audio in a format we can read (wav, flac, ogg, opus, mp3, m4a, webm, …)"
        ) from exc
    with container:
        streams = container.streams.audio
        if not streams:
            raise AudioError(f"{label}: the file has no audio stream")
        stream = streams[0]
        rate = int(stream.codec_context.sample_rate or 0)
        _check_header(label, rate, stream.codec_context.channels, None, max_seconds)
        if max_seconds is not None and stream.duration and stream.time_base:
            _check_header(label, rate, 1, int(stream.duration * stream.time_base * rate), max_seconds)
        to_float = av.AudioResampler(format="fltp")  # keep rate and layout, planar float32
        parts, total = [], 0
        try:
            for frame in container.decode(stream):
                for out in to_float.resample(frame):
                    planar = out.to_ndarray()  # (C, n)
                    parts.append(planar.mean(axis=0, dtype=np.float32))
                    total += planar.shape[1]
                if max_seconds is not None:
                    _check_header(label, rate, 1, total, max_seconds)
            for out in to_float.resample(None):
                parts.append(out.to_ndarray().mean(axis=0, dtype=np.float32))
        except (av.FFmpegError, ValueError) as exc:
            raise AudioError(f"{label}: the audio data is corrupt ({exc.__class__.__name__})") from exc
    samples = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    return samples, rate


def load_audio(src: Source, *, max_seconds: float | None = None, min_seconds: float | None = None,
               name: str | None = None) -> Audio:
    """Decode `src` (path, bytes or binary file object) to mono float32 at its own sample rate.

    `name` labels error messages (e.g. an upload's file name); by default the path's file name.

    Raises AudioError for a missing or empty file, data that is not audio, no channels, a sample
    rate outside 1000..384000 Hz, zero samples, NaN/inf samples, or audio shorter than min_seconds;
    AudioTooLongError for audio longer than max_seconds, as soon as the container's duration (or
    the decoded part) shows it, so a long file is never decoded whole just to be refused.
    """
    label = name or _describe(src)
    data = _open_bytes(src, label)
    decoded = _decode_soundfile(data, label, max_seconds)
    if decoded is None:
        decoded = _decode_ffmpeg(data, label, max_seconds)
        log.debug("decoded %s with FFmpeg", label)
    samples, rate = decoded
    if samples.shape[0] == 0:
        raise AudioError(f"{label}: the file decodes to zero samples")
    _check_header(label, rate, 1, samples.shape[0], max_seconds)
    check_duration(label, samples.shape[0] / rate, min_seconds=min_seconds)
    if not np.all(np.isfinite(samples)):
        raise AudioError(f"{label}: the audio contains NaN or infinite samples")
    return Audio(samples=np.ascontiguousarray(samples, dtype=np.float32), sample_rate=rate)


# ------------------------------------------------------------------------------------------------------
# encoding


def _mono_float(samples, sample_rate: int) -> np.ndarray:
    x = np.asarray(samples.detach().cpu() if hasattr(samples, "detach") else samples, dtype=np.float32)
    if x.ndim != 1:
        raise AudioError(f"encode_audio expects mono samples of shape (N,), got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise AudioError("cannot encode audio that contains NaN or infinite samples")
    if not MIN_SAMPLE_RATE <= int(sample_rate) <= MAX_SAMPLE_RATE:
        raise AudioError(f"sample rate {sample_rate} Hz is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz")
    return np.clip(x, -1.0, 1.0)


def _encode_soundfile(x: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "pcm":
        sf.write(buf, x, sample_rate, format="RAW", subtype="PCM_16", endian="LITTLE")
    else:
        sf.write(buf, x, sample_rate, format=fmt.upper(), subtype="PCM_16")
    return buf.getvalue()


def _encode_ffmpeg(x: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    spec = FFMPEG_CODECS[fmt]
    if sample_rate not in spec.rates:
        log.debug("%s cannot store %d Hz; resampling to %d Hz", fmt, sample_rate, ENCODE_FALLBACK_RATE)
        x = np.clip(resample(x, sample_rate, ENCODE_FALLBACK_RATE), -1.0, 1.0)
        sample_rate = ENCODE_FALLBACK_RATE
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=spec.container) as out:
        stream = out.add_stream(spec.codec, rate=sample_rate, layout="mono")
        stream.bit_rate = spec.bit_rate
        frame = av.AudioFrame.from_ndarray(x[None, :], format="fltp", layout="mono")
        frame.sample_rate = sample_rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def encode_audio(samples, sample_rate: int, fmt: str) -> bytes:
    """Encode mono float samples (clipped to [-1, 1]) as wav/flac (16-bit), mp3, opus (in ogg), aac
    (ADTS) or raw pcm (s16le, no header); "ogg" and "m4a" are accepted as aliases of opus and aac.
    A lossy codec that lacks the sample rate gets the audio resampled to 48 kHz first.
    """
    fmt = FORMAT_ALIASES.get(fmt.lower(), fmt.lower())
    if fmt not in ENCODE_FORMATS:
        raise ValidationError(f"unknown audio format {fmt!r}; use one of: {', '.join(ENCODE_FORMATS)}")
    x = _mono_float(samples, sample_rate)
    if fmt in ("wav", "flac", "pcm"):
        return _encode_soundfile(x, int(sample_rate), fmt)
    return _encode_ffmpeg(x, int(sample_rate), fmt)


def wav_header(sample_rate: int, channels: int = 1, data_bytes: int | None = None) -> bytes:
    """The 44-byte header of a 16-bit PCM WAV file; data_bytes=None (a stream of unknown length)
    writes 0xFFFFFFFF as the RIFF and data sizes, which common players read as "until EOF".
    """
    block_align = channels * 2
    if data_bytes is None:
        riff_size = data_size = UNKNOWN_SIZE
    else:
        if data_bytes < 0 or data_bytes + 36 > UNKNOWN_SIZE:
            raise ValueError(f"data_bytes {data_bytes} does not fit a WAV header")
        riff_size, data_size = 36 + data_bytes, data_bytes
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI", b"RIFF", riff_size, b"WAVE", b"fmt ", 16, 1, channels, sample_rate,
        sample_rate * block_align, block_align, 16, b"data", data_size,
    )



def float_wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """Mono float32 WAV (IEEE float, format 3) holding `samples` bit-exact, and nothing else: the same samples
    always give the same bytes (libsndfile adds a PEAK chunk with a timestamp), so stored voices stay
    content-addressed across stores and replicas."""
    data = np.ascontiguousarray(samples, dtype="<f4").reshape(-1).tobytes()
    if len(data) + 36 > UNKNOWN_SIZE:
        raise ValueError(f"{len(data)} bytes of samples do not fit a WAV file")
    return struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(data), b"WAVE", b"fmt ", 16, 3, 1, sample_rate,
                       sample_rate * 4, 4, 32, b"data", len(data)) + data
