"""Long clips: cut them at silences into parts a model can take, and join audio parts without clicks.

Pure functions over mono float32 numpy arrays. Levels are short-time RMS in dB over 20 ms frames;
joins fade with raised-cosine or equal-power curves so no join adds a jump the audio did not have.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator

import numpy as np

from editx.errors import AudioError, ValidationError

log = logging.getLogger(__name__)

FRAMES_PER_SECOND = 50  # 20 ms energy frames
SILENCE_FLOOR_DB = -100.0  # RMS of digital silence is clamped here
SILENCE_ABSOLUTE_DB = -50.0  # a frame is silent under this level or within ...
SILENCE_ABOVE_NOISE_DB = 10.0  # ... this of the noise floor, whichever is higher, ...
SILENCE_BELOW_PEAK_DB = 20.0  # ... provided that is at least this far under the loudest frame
NOISE_PERCENTILE = 10  # the noise floor: this percentile of frame levels
MIN_PART_FRACTION = 0.5  # cuts are searched first in the last half of the allowed window
ENERGY_BLOCK = 1 << 20  # samples per block when computing frame energies (bounded memory)


def frame_levels_db(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Short-time RMS level in dB of consecutive 20 ms frames (the last, partial frame included)."""
    samples = _check_clip(samples, sample_rate)
    frame = max(1, sample_rate // FRAMES_PER_SECOND)
    n = len(samples)
    out = np.empty(math.ceil(n / frame), dtype=np.float64)
    step = max(frame, ENERGY_BLOCK // frame * frame)
    for a in range(0, n, step):
        block = np.asarray(samples[a:a + step], dtype=np.float64)
        pad = (-len(block)) % frame
        counts = np.full(math.ceil(len(block) / frame), frame, dtype=np.float64)
        if pad:
            counts[-1] = frame - pad
            block = np.concatenate([block, np.zeros(pad)])
        power = np.square(block).reshape(-1, frame).sum(axis=1) / counts
        out[a // frame:a // frame + len(power)] = 10 * np.log10(np.maximum(power, 10 ** (SILENCE_FLOOR_DB / 10)))
    return out


def _check_clip(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    x = np.asarray(samples)
    if x.ndim != 1:
        raise AudioError(f"expected mono audio as a 1-D array, got shape {x.shape}; downmix it first")
    if sample_rate <= 0:
        raise AudioError(f"sample_rate must be positive, got {sample_rate}")
    if not np.isfinite(x).all():
        raise AudioError("the audio has NaN or infinite samples; decode it with editx.audio.io.load_audio")
    return x


def split_audio_at_silences(samples: np.ndarray, sample_rate: int, *, max_seconds: float = 25.0,
                            min_silence_s: float = 0.2) -> list[tuple[int, int]]:
    """Cut a long clip into consecutive (start, end) sample spans of at most `max_seconds` each.

    Each cut goes in the middle of a silence (a run of 20 ms frames at least `min_silence_s` long whose
    level is near the noise floor and well under the loudest frame). From the start of each part, the
    longest silence (then the quietest) is taken from the first window that has one: the part of the
    allowed window that keeps the fewest parts possible and the last half, then the last half, then
    all of it. With no silence, the cut goes at the quietest frame of the first window. The spans cover
    the clip exactly, in order, without gaps or overlaps; a clip no longer than `max_seconds` is one.
    """
    x = _check_clip(samples, sample_rate)
    n = len(x)
    frame = max(1, sample_rate // FRAMES_PER_SECOND)
    limit = int(max_seconds * sample_rate) if math.isfinite(max_seconds) else 0
    if limit < 2 * frame:
        raise ValidationError(f"max_seconds={max_seconds} is too short; use at least {2 / FRAMES_PER_SECOND} s")
    if n <= limit:
        return [(0, n)] if n else []
    db = frame_levels_db(x, sample_rate)  # (frames,)
    noise = float(np.percentile(db, NOISE_PERCENTILE))
    threshold = min(max(noise + SILENCE_ABOVE_NOISE_DB, SILENCE_ABSOLUTE_DB), db.max() - SILENCE_BELOW_PEAK_DB)
    silent = db < threshold
    min_run = max(1, math.ceil(min_silence_s * FRAMES_PER_SECOND - 1e-9))
    edges = np.flatnonzero(np.diff(np.concatenate([[0], silent.astype(np.int8), [0]])))
    runs = [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2]) if b - a >= min_run]  # frame ranges
    spans, start = [], 0
    while n - start > limit:
        cut = _choose_cut(db, runs, start, n, limit, frame, min_run)
        spans.append((start, cut))
        start = cut
    spans.append((start, n))
    return spans


def _choose_cut(db: np.ndarray, runs: list[tuple[int, int]], start: int, n: int, limit: int, frame: int,
                min_run: int) -> int:
    """The sample to cut at in (start, start + limit]: see split_audio_at_silences."""
    end = start + limit
    tight = n - (math.ceil((n - start) / limit) - 1) * limit  # a cut before this adds a part
    late = max(start + int(limit * MIN_PART_FRACTION), tight)
    for lo in (late, start + int(limit * MIN_PART_FRACTION), start + frame):
        f_lo, f_hi = math.ceil(lo / frame), end // frame  # frames wholly inside [lo, end)
        best = None
        for a, b in runs:
            a, b = max(a, f_lo), min(b, f_hi)
            if b - a < min_run:
                continue
            key = (b - a, -float(db[a:b].mean()))
            if best is None or key > best[0]:
                best = (key, (a + b) * frame // 2)
        if best is not None:
            return best[1]
    f_lo, f_hi = math.ceil(late / frame), end // frame
    if f_hi <= f_lo:
        return end
    f = f_lo + int(np.argmin(db[f_lo:f_hi]))  # ties: the earliest
    return min(f * frame + frame // 2, end)


# --- joins --------------------------------------------------------------------------------------------
def max_discontinuity(x: np.ndarray) -> float:
    """Largest absolute difference between consecutive samples (0.0 for fewer than two)."""
    x = np.asarray(x, dtype=np.float64)
    return float(np.abs(np.diff(x)).max()) if len(x) > 1 else 0.0


def _ramp(n: int) -> np.ndarray:
    """Raised-cosine fade-in of n samples, from just above 0 to just below 1."""
    return (0.5 - 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / n)).astype(np.float32)


def crossfade_concat(a: np.ndarray, b: np.ndarray, overlap: int, *, curve: str = "power") -> np.ndarray:
    """Concatenate a and b, mixing a's last `overlap` samples into b's first ones.

    curve="power" (equal power: cos/sin gains) keeps the loudness of unrelated signals steady;
    curve="gain" (equal gain: gains sum to 1) is the right one when both overlaps hold the same audio,
    as in chunk overlaps of a streaming decoder. The result has len(a) + len(b) - overlap samples.
    """
    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    if curve not in ("power", "gain"):
        raise ValidationError(f"unknown crossfade curve {curve!r}; use 'power' or 'gain'")
    if not 0 <= overlap <= min(len(a), len(b)):
        raise ValidationError(f"overlap {overlap} must be between 0 and the shorter input ({min(len(a), len(b))})")
    if overlap == 0:
        return np.concatenate([a, b])
    t = (np.arange(overlap) + 0.5) / overlap
    fade_in = np.sin(0.5 * np.pi * t) if curve == "power" else t
    fade_out = np.cos(0.5 * np.pi * t) if curve == "power" else 1.0 - t
    mixed = (a[-overlap:] * fade_out + b[:overlap] * fade_in).astype(np.float32)
    return np.concatenate([a[:-overlap], mixed, b[overlap:]])


def iter_join(parts: Iterable[np.ndarray], sample_rate: int, *, pause_s: float = 0.25,
              crossfade_s: float = 0.01) -> Iterator[np.ndarray]:
    """Join audio parts as they arrive, yielding the joined audio piece by piece (see join_segments).

    Only the last `crossfade_s` of the latest part is held back, so memory stays bounded by one part.
    """
    if sample_rate <= 0 or pause_s < 0 or crossfade_s < 0:
        raise ValidationError(f"need sample_rate > 0, pause_s >= 0, crossfade_s >= 0 "
                              f"(got {sample_rate}, {pause_s}, {crossfade_s})")
    fade, gap = round(crossfade_s * sample_rate), round(pause_s * sample_rate)
    tail: np.ndarray | None = None  # the held-back end of the previous part
    for part in parts:
        x = _check_clip(part, sample_rate).astype(np.float32, copy=False)
        if len(x) == 0:
            continue
        f = min(fade, len(x) // 2)
        body = x[:len(x) - f]
        if tail is not None:
            if gap:
                body = body.copy()
                body[:f] *= _ramp(f)
                yield np.concatenate([tail * _ramp(len(tail))[::-1], np.zeros(gap, np.float32)])
            else:
                body = crossfade_concat(tail, body, min(len(tail), f))
        yield body
        tail = x[len(x) - f:]
    if tail is not None and len(tail):
        yield tail


def join_segments(parts: list[np.ndarray], sample_rate: int, *, pause_s: float = 0.25,
                  crossfade_s: float = 0.01) -> np.ndarray:
    """Join synthesized segments with a pause of exactly round(pause_s * sample_rate) zeros between them.

    Each side of a pause fades over `crossfade_s` (raised cosine; at most half the part) so no join
    clicks; the first part's start and the last part's end are left as they are. With pause_s=0 the
    parts are equal-power crossfaded over `crossfade_s` instead. Empty parts are skipped.
    """
    return np.concatenate([np.zeros(0, np.float32), *iter_join(parts, sample_rate, pause_s=pause_s,
                                                                  crossfade_s=crossfade_s)])



class StreamJoiner:
    """`iter_join` for parts that themselves arrive in pieces (streamed synthesis).

    `feed(x)` takes the next samples of the current part, `end_part()` closes it, `finish()` ends the
    whole output; each returns the joined audio that is final now. Only the last `crossfade_s` of the
    current part is held back. The concatenated result equals `join_segments(parts, ...)` whenever
    every part has at least 2 * crossfade_s of audio (shorter parts fade over what they have).
    """

    def __init__(self, sample_rate: int, *, pause_s: float = 0.25, crossfade_s: float = 0.01) -> None:
        if sample_rate <= 0 or pause_s < 0 or crossfade_s < 0:
            raise ValidationError(f"need sample_rate > 0, pause_s >= 0, crossfade_s >= 0 "
                                  f"(got {sample_rate}, {pause_s}, {crossfade_s})")
        self.sample_rate = sample_rate
        self.fade, self.gap = round(crossfade_s * sample_rate), round(pause_s * sample_rate)
        self._tail: np.ndarray | None = None  # the held-back end of the previous part
        self._buf = _EMPTY  # samples of the current part not yet emitted
        self._done = 0  # samples of the current part already emitted
        self._fade_in = False  # the current part follows a pause: its first `fade` samples fade in

    def feed(self, x: np.ndarray) -> np.ndarray:
        x = _check_clip(x, self.sample_rate).astype(np.float32, copy=False)
        self._buf = np.concatenate([self._buf, x]) if len(self._buf) else x
        return self._drain(keep=self.fade)

    def end_part(self) -> np.ndarray:
        total = self._done + len(self._buf)
        if total == 0:
            return _EMPTY  # an empty part is skipped, as iter_join does
        out = self._drain(keep=min(self.fade, total // 2), closing=True)
        self._tail, self._buf, self._done, self._fade_in = self._buf, _EMPTY, 0, False
        return out

    def finish(self) -> np.ndarray:
        out = self.end_part()
        tail, self._tail = self._tail, None
        return out if tail is None else np.concatenate([out, tail])

    def _drain(self, keep: int, closing: bool = False) -> np.ndarray:
        if self._done == 0 and len(self._buf) == 0:
            return _EMPTY
        out = []
        if self._tail is not None:  # the first samples of a part that follows another
            tail = self._tail
            if self.gap:  # the previous end fades out, a pause, this part fades in
                out.append(np.concatenate([tail * _ramp(len(tail))[::-1], np.zeros(self.gap, np.float32)]))
                self._tail, self._fade_in = None, True
            else:  # the previous end cross-fades into this part's first samples
                n = len(self._buf) - keep
                overlap = min(len(tail), self.fade)
                if n < overlap and not closing:
                    return _EMPTY  # wait for enough of this part
                n = max(n, 0)
                joined = crossfade_concat(tail, self._buf[:n], min(overlap, n))
                self._tail, self._buf, self._done = None, self._buf[n:], self._done + n
                return joined
        n = len(self._buf) - keep
        if n > 0:
            body, self._buf = self._buf[:n], self._buf[n:]
            if self._fade_in and self._done < self.fade:
                stop = min(self.fade, self._done + n)
                body = body.copy()
                body[:stop - self._done] *= _ramp(self.fade)[self._done:stop]
            self._done += n
            out.append(body)
        return np.concatenate(out) if out else _EMPTY


_EMPTY = np.zeros(0, np.float32)
