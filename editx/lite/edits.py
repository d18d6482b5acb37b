"""Signal-level edits for the lite backend: WSOLA time-stretch (speed) and Silero-VAD pause removal (vad).

Speed is done on the waveform, not by re-synthesis: an edit request carries audio (any voice, not
necessarily one Kokoro made), and WSOLA keeps pitch and timbre while changing tempo, which is what
the upstream speed edit does. Silero VAD runs from the ONNX file inside the `silero-vad` wheel with
onnxruntime (no torch, no torchaudio).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import soxr

from editx.audio.stretch import time_stretch  # noqa: F401  (lite's speed edit; re-exported)
from editx.errors import AudioError, ModelFilesError, ValidationError

# Playback-rate factor for each upstream speed label (> 1 = faster = shorter); they match the
# thresholds editx.pipeline.types.speed_edit_for uses to map an OpenAI `speed` onto a label.
SPEED_FACTORS = {"faster": 1.25, "more faster": 1.5, "slower": 0.8, "more slower": 0.67}


VAD_SR = 16_000
VAD_CHUNK = 512  # samples per Silero call at 16 kHz (32 ms)
VAD_CONTEXT = 64  # the tail of the previous chunk Silero v5+ expects in front of each chunk
VAD_ON = 0.5  # speech starts at this probability ...
VAD_OFF = 0.35  # ... and ends below this one (Silero's own default: threshold - 0.15)
MAX_PAUSE_S = 0.5  # pauses longer than this are shortened ...
KEEP_PAUSE_S = 0.25  # ... to this length (half kept after the speech before, half before the next)
CROSSFADE_S = 0.010


def speed_factor(info: str | None) -> float:
    key = (info or "").strip().lower()
    if key not in SPEED_FACTORS:
        raise ValidationError(f"speed edit_info must be one of {', '.join(SPEED_FACTORS)}, got {info!r}")
    return SPEED_FACTORS[key]


def silero_onnx_path() -> Path:
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise ModelFilesError("package 'silero-vad' is not installed; pip install --no-deps silero-vad==6.2.3")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "silero_vad.onnx"
    if not path.is_file():
        raise ModelFilesError(f"{path} is missing; reinstall silero-vad==6.2.3")
    return path


class SileroVAD:
    """Per-chunk speech probabilities from the Silero VAD ONNX graph (16 kHz, 32 ms chunks)."""

    def __init__(self, path: Path | None = None, *, threads: int = 1) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path or silero_onnx_path()), sess_options=opts,
                                            providers=["CPUExecutionProvider"])

    def probabilities(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        """(n_chunks,) speech probability per 32 ms of input (the last chunk zero-padded)."""
        x = np.asarray(samples, np.float32).reshape(-1)
        if sample_rate != VAD_SR:
            x = soxr.resample(x, sample_rate, VAD_SR).astype(np.float32)
        n_chunks = -(-len(x) // VAD_CHUNK)
        x = np.concatenate([np.zeros(VAD_CONTEXT, np.float32), x,
                            np.zeros(n_chunks * VAD_CHUNK - len(x), np.float32)])
        state = np.zeros((2, 1, 128), np.float32)
        sr = np.array(VAD_SR, np.int64)
        probs = np.empty(n_chunks, np.float32)
        for i in range(n_chunks):
            chunk = x[i * VAD_CHUNK: (i + 1) * VAD_CHUNK + VAD_CONTEXT].reshape(1, -1)  # (1, 576)
            out, state = self.session.run(None, {"input": chunk, "state": state, "sr": sr})
            probs[i] = float(out.reshape(-1)[0])
        return probs


def speech_mask(probs: np.ndarray) -> np.ndarray:
    """Hysteresis over chunk probabilities → bool per chunk."""
    mask = np.zeros(len(probs), bool)
    on = False
    for i, p in enumerate(probs):
        on = p >= VAD_ON if not on else p >= VAD_OFF
        mask[i] = on
    return mask


def remove_pauses(samples: np.ndarray, sample_rate: int, mask: np.ndarray, *,
                  max_pause_s: float = MAX_PAUSE_S, keep_pause_s: float = KEEP_PAUSE_S) -> np.ndarray:
    """Shorten every non-speech run longer than max_pause_s to keep_pause_s (edges to half of it)."""
    x = np.asarray(samples, np.float32).reshape(-1)
    if not mask.any():
        return x.copy()
    chunk = VAD_CHUNK * sample_rate / VAD_SR  # input samples per VAD chunk
    half = int(round(keep_pause_s * sample_rate / 2))
    # Boundaries of the speech runs, in input samples.
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    runs = [(int(round(a * chunk)), min(len(x), int(round(b * chunk)))) for a, b in edges.reshape(-1, 2)]
    keep: list[tuple[int, int]] = []
    cursor = max(0, runs[0][0] - half)  # leading silence: keep only half a pause
    for (_, end), nxt in zip(runs, runs[1:] + [None]):
        gap_end = nxt[0] if nxt else len(x)
        gap = gap_end - end
        if nxt is not None and gap <= max_pause_s * sample_rate:
            continue  # a short pause stays whole inside the current piece
        keep.append((cursor, min(len(x), end + half)))
        cursor = max(end + half, gap_end - half) if nxt else len(x)
    fade = max(1, int(CROSSFADE_S * sample_rate))
    return _join(x, keep, fade)


def _join(x: np.ndarray, pieces: list[tuple[int, int]], fade: int) -> np.ndarray:
    out = x[pieces[0][0]: pieces[0][1]].copy()
    ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
    for a, b in pieces[1:]:
        nxt = x[a:b]
        f = min(fade, len(out), len(nxt))
        if f > 0:
            out[-f:] = out[-f:] * ramp[::-1][-f:] + nxt[:f] * ramp[:f]
        out = np.concatenate([out, nxt[f:]])
    return out


def check_audio(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    x = np.asarray(samples, np.float32)
    if x.ndim != 1:
        raise AudioError(f"expected mono audio (N,), got shape {x.shape}; mix down to mono first")
    if x.size == 0:
        raise AudioError("audio is empty")
    if not np.isfinite(x).all():
        raise AudioError("audio contains NaN or infinite samples")
    if not 8_000 <= sample_rate <= 192_000:
        raise AudioError(f"sample_rate must be in [8000, 192000], got {sample_rate}")
    return x
