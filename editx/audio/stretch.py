"""Pitch-preserving time-stretch (WSOLA) of mono audio: the speed edit of the lite backend and the
part of an OpenAI `speed` beyond what a backend's own synthesis covers.

WSOLA (waveform-similarity overlap-add): output frames of 40 ms with 50 % Hann overlap are taken from
the input at `rate` times the output hop, each shifted by up to ±10 ms to the position that best
continues the previous frame, so periods line up and pitch and timbre stay as they were.
"""

from __future__ import annotations

import math

import numpy as np

from editx.errors import ValidationError

WSOLA_FRAME_S = 0.040  # analysis/synthesis frame; 50 % overlap of a periodic Hann window sums to 1
WSOLA_TOLERANCE_S = 0.010  # how far a frame may move from its nominal position to stay in phase
MIN_RATE, MAX_RATE = 0.25, 4.0


def time_stretch(samples: np.ndarray, sample_rate: int, rate: float) -> np.ndarray:
    """WSOLA: play `samples` `rate` times faster without changing pitch; output length ≈ len / rate."""
    x = np.asarray(samples, np.float32).reshape(-1)
    if not MIN_RATE <= rate <= MAX_RATE:
        raise ValidationError(f"speed factor must be in [{MIN_RATE:g}, {MAX_RATE:g}], got {rate}")
    if x.size == 0 or rate == 1.0:
        return x.copy()
    n = max(32, int(round(WSOLA_FRAME_S * sample_rate)) // 2 * 2)
    hop_out = n // 2
    hop_in = hop_out * rate
    tol = max(1, int(round(WSOLA_TOLERANCE_S * sample_rate)))
    out_len = int(round(len(x) / rate))
    n_frames = out_len // hop_out + 2
    # Pad so every candidate window (nominal ± tol, plus the natural continuation) stays inside x.
    pad_front, pad_back = tol + n, tol + 2 * n + int(math.ceil(hop_in))
    xp = np.concatenate([np.zeros(pad_front, np.float32), x, np.zeros(pad_back, np.float32)])
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float32)
    y = np.zeros(n_frames * hop_out + n, np.float32)
    wsum = np.zeros_like(y)
    prev = None
    for k in range(n_frames):
        nominal = pad_front - n // 2 + int(round(k * hop_in))
        nominal = min(nominal, len(xp) - n - tol)
        if prev is None:
            pos = nominal
        else:
            # Choose the shift whose frame best continues the previous frame's natural successor.
            target = xp[prev + hop_out: prev + hop_out + n]
            region = xp[nominal - tol: nominal + tol + n]
            cands = np.lib.stride_tricks.sliding_window_view(region, n)  # (2 tol + 1, n)
            pos = nominal - tol + int(np.argmax(cands @ target))
        y[k * hop_out: k * hop_out + n] += window * xp[pos: pos + n]
        wsum[k * hop_out: k * hop_out + n] += window
        prev = pos
    # Frames are centred on their nominal times, so output sample i lies at y[i + n // 2].
    y = y[n // 2: n // 2 + out_len]
    wsum = wsum[n // 2: n // 2 + out_len]
    return (y / np.maximum(wsum, 1e-3)).astype(np.float32)
