"""Mel filterbanks: the Slaney-scale matrix of librosa/Whisper/Matcha and Kaldi's triangular banks."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

# Slaney mel scale (librosa htk=False): linear at 200/3 Hz per mel up to 1 kHz, logarithmic above.
_SLANEY_HZ_PER_MEL = 200.0 / 3
_SLANEY_KNEE_HZ = 1000.0
_SLANEY_KNEE_MEL = _SLANEY_KNEE_HZ / _SLANEY_HZ_PER_MEL
_SLANEY_LOG_STEP = math.log(6.4) / 27.0  # 27 mels per factor 6.4 in frequency


def _hz_to_slaney_mel(f) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    log_part = _SLANEY_KNEE_MEL + np.log(np.maximum(f, _SLANEY_KNEE_HZ) / _SLANEY_KNEE_HZ) / _SLANEY_LOG_STEP
    return np.where(f >= _SLANEY_KNEE_HZ, log_part, f / _SLANEY_HZ_PER_MEL)


def _slaney_mel_to_hz(m) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    log_part = _SLANEY_KNEE_HZ * np.exp(_SLANEY_LOG_STEP * (m - _SLANEY_KNEE_MEL))
    return np.where(m >= _SLANEY_KNEE_MEL, log_part, _SLANEY_HZ_PER_MEL * m)


@lru_cache(maxsize=8)
def slaney_mel_filters(sr: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None):
    """Triangular Slaney-scale, Slaney-normalised filterbank (n_mels, n_fft//2+1) float32.

    The same matrix as librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax) (htk=False, norm="slaney"),
    which is what Whisper's mel_filters.npz and Matcha's mel_spectrogram hold.
    """
    fmax = sr / 2.0 if fmax is None else fmax
    fft_hz = np.fft.rfftfreq(n_fft, d=1.0 / sr)
    edges = _slaney_mel_to_hz(np.linspace(_hz_to_slaney_mel(fmin), _hz_to_slaney_mel(fmax), n_mels + 2))
    gaps = np.diff(edges)
    dist = edges[:, None] - fft_hz[None, :]  # (n_mels+2, bins)
    rising = -dist[:-2] / gaps[:-1, None]
    falling = dist[2:] / gaps[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)
    # librosa stores the triangles in float32 first, then scales them to unit area in float64.
    area_norm = 2.0 / (edges[2:] - edges[:-2])
    weights = (weights * area_norm[:, None]).astype(np.float32)
    weights.setflags(write=False)
    return weights


def _kaldi_mel(m):
    return 1127.0 * torch.log(1.0 + m / 700.0)


@lru_cache(maxsize=8)
def kaldi_mel_banks(num_bins: int, padded_window: int, sr: float, low_freq: float, high_freq: float):
    """Kaldi triangular mel banks on mel = 1127 ln(1 + f/700): (num_bins, padded_window//2 + 1) float32.

    The last FFT bin (Nyquist) always has weight 0, as in Kaldi/torchaudio.
    """
    nyquist = 0.5 * sr
    high = high_freq + nyquist if high_freq <= 0.0 else high_freq
    if not (0.0 <= low_freq < nyquist and 0.0 < high <= nyquist and low_freq < high):
        raise ValueError(f"bad mel band edges: low {low_freq} Hz, high {high} Hz for rate {sr}")
    mel_low = 1127.0 * math.log(1.0 + low_freq / 700.0)
    mel_high = 1127.0 * math.log(1.0 + high / 700.0)
    delta = (mel_high - mel_low) / (num_bins + 1)
    b = torch.arange(num_bins).unsqueeze(1)  # (bins, 1); float32 arithmetic from here, as torchaudio
    left = mel_low + b * delta
    center = mel_low + (b + 1.0) * delta
    right = mel_low + (b + 2.0) * delta
    fft_mel = _kaldi_mel((sr / padded_window) * torch.arange(float(padded_window // 2))).unsqueeze(0)
    up = (fft_mel - left) / (center - left)
    down = (right - fft_mel) / (right - center)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)
    return torch.nn.functional.pad(banks, (0, 1))
