"""GE2E speaker embeddings (Resemblyzer's pretrained d-vector network) without librosa or webrtcvad.

The weights are the `pretrained.pt` shipped in the `resemblyzer` wheel (install it with --no-deps:
only that file is used). The front end is the same 40-band power mel spectrogram (25 ms Hann
window, 10 ms hop, Slaney mel scale) and the same scheme of averaging 1.6 s partial utterances,
written here in numpy; silence trimming uses an energy gate instead of webrtcvad.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import soxr
import torch
from torch import nn

from editx.errors import AudioError, ModelFilesError

SAMPLE_RATE = 16_000
N_FFT = SAMPLE_RATE * 25 // 1000  # 25 ms window = 400 samples
HOP = SAMPLE_RATE * 10 // 1000  # 10 ms hop = 160 samples
N_MELS = 40
PARTIAL_FRAMES = 160  # 1.6 s of mel frames per partial utterance
PARTIALS_PER_SECOND = 1.3
MIN_LAST_COVERAGE = 0.75  # keep a zero-padded last partial only if it is at least this full
HIDDEN = 256
LAYERS = 3
TARGET_DBFS = -30.0  # quiet input is raised to this loudness; loud input is left alone
GATE_WINDOW = SAMPLE_RATE * 30 // 1000  # 30 ms energy-gate windows
GATE_DB_BELOW_PEAK = 40.0
GATE_SMOOTH = 8  # windows in the moving average of the voiced flags
GATE_KEEP = 7  # voiced regions are widened by this many windows (≈ 210 ms of kept pause)


def _slaney_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear (3 mels per 200 Hz) below 1 kHz, logarithmic above."""
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    hz = np.asarray(hz, np.float64)
    return np.where(hz >= min_log_hz, min_log_mel + np.log(np.maximum(hz, 1e-10) / min_log_hz) / logstep,
                    hz / f_sp)


def _slaney_hz(mel: np.ndarray) -> np.ndarray:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


def mel_filterbank(sr: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters on the Slaney scale, area-normalised (0 Hz .. sr/2)."""
    fft_hz = np.linspace(0.0, sr / 2, n_fft // 2 + 1)
    edges = _slaney_hz(np.linspace(_slaney_mel(0.0), _slaney_mel(sr / 2), n_mels + 2))  # (n_mels + 2,)
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_hz[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.astype(np.float32)


def power_mel(wav16k: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """Power mel spectrogram (frames, N_MELS): centred frames, zero padding, periodic Hann window."""
    padded = np.pad(wav16k.astype(np.float32), N_FFT // 2)
    n_frames = 1 + (len(padded) - N_FFT) // HOP
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][:n_frames]  # (F, N_FFT)
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)
    spec = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2  # (F, N_FFT // 2 + 1)
    return (spec @ filters.T).astype(np.float32)


def partial_slices(n_samples: int) -> list[slice]:
    """Mel-frame ranges of the 1.6 s partial utterances that cover a clip of n_samples."""
    n_frames = int(np.ceil((n_samples + 1) / HOP))
    step = int(np.round(SAMPLE_RATE / PARTIALS_PER_SECOND / HOP))
    starts = range(0, max(1, n_frames - PARTIAL_FRAMES + step + 1), step)
    slices = [slice(s, s + PARTIAL_FRAMES) for s in starts]
    last = slices[-1]
    coverage = (n_samples - last.start * HOP) / (PARTIAL_FRAMES * HOP)
    if coverage < MIN_LAST_COVERAGE and len(slices) > 1:
        slices.pop()
    return slices


def normalize_volume(wav: np.ndarray) -> np.ndarray:
    rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64))))
    if rms <= 0.0:
        return wav
    gain_db = TARGET_DBFS - 20.0 * np.log10(rms)
    return wav * np.float32(10 ** (gain_db / 20)) if gain_db > 0 else wav


def _centered_conv(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """np.convolve(mode="same") that keeps len(x) even when the kernel is longer than x (short clips)."""
    off = (kernel.size - 1) // 2
    return np.convolve(x, kernel, mode="full")[off:off + x.size]


def trim_long_silences(wav: np.ndarray) -> np.ndarray:
    """Drop stretches well below the clip's loudest 30 ms windows, keeping short pauses around speech."""
    n = len(wav) - len(wav) % GATE_WINDOW
    if n == 0:
        return wav
    rms_db = 10 * np.log10(np.mean(np.square(wav[:n].reshape(-1, GATE_WINDOW)), axis=1) + 1e-12)
    voiced = (rms_db > rms_db.max() - GATE_DB_BELOW_PEAK).astype(np.float64)
    smooth = _centered_conv(voiced, np.ones(GATE_SMOOTH) / GATE_SMOOTH) >= 0.5
    widened = _centered_conv(smooth.astype(np.float64), np.ones(2 * GATE_KEEP + 1)) > 0
    if not widened.any():
        return wav[:n]
    return wav[:n][np.repeat(widened, GATE_WINDOW)]


class GE2EEncoder(nn.Module):
    """3-layer LSTM over mel frames → ReLU(linear(last hidden state)) → unit-norm 256-d embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(N_MELS, HIDDEN, LAYERS, batch_first=True)
        self.linear = nn.Linear(HIDDEN, HIDDEN)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:  # (B, PARTIAL_FRAMES, N_MELS) → (B, 256)
        _, (hidden, _) = self.lstm(mels)
        raw = torch.relu(self.linear(hidden[-1]))
        return raw / raw.norm(dim=1, keepdim=True).clamp_min(1e-12)


def resemblyzer_weights_path() -> Path:
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        raise ModelFilesError("package 'resemblyzer' is not installed; pip install --no-deps resemblyzer==0.1.4")
    return Path(list(spec.submodule_search_locations)[0]) / "pretrained.pt"


class SpeakerEncoder:
    """Speaker d-vectors and cosine similarity; holds the network (load once, reuse)."""

    # checkpoint key → our parameter name; the checkpoint also holds GE2E training-only entries.
    _IGNORED = ("similarity_weight", "similarity_bias")

    def __init__(self, model: GE2EEncoder) -> None:
        self.model = model.eval()
        self.filters = mel_filterbank()

    @classmethod
    def load(cls, weights: Path | None = None) -> SpeakerEncoder:
        path = weights or resemblyzer_weights_path()
        if not path.is_file():
            raise ModelFilesError(f"{path} is missing; reinstall resemblyzer==0.1.4 (--no-deps)")
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in checkpoint.get("model_state", {}).items() if k not in cls._IGNORED}
        model = GE2EEncoder()
        expected = set(model.state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ModelFilesError(f"{path}: missing keys {missing}, unexpected keys {unexpected}")
        model.load_state_dict(state, strict=True)
        return cls(model)

    def embed_preprocessed(self, wav16k: np.ndarray) -> np.ndarray:
        """Embedding of an already-prepared 16 kHz clip (no volume change, no trimming) → (256,)."""
        slices = partial_slices(len(wav16k))
        need = slices[-1].stop * HOP
        if need > len(wav16k):
            wav16k = np.pad(wav16k, (0, need - len(wav16k)))
        mel = power_mel(wav16k, self.filters)  # (frames, 40)
        batch = np.stack([mel[s] for s in slices])  # (P, 160, 40)
        with torch.inference_mode():
            partials = self.model(torch.from_numpy(batch)).numpy()  # (P, 256)
        mean = partials.mean(axis=0)
        return (mean / np.linalg.norm(mean)).astype(np.float32)

    def embed(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        """Unit-norm (256,) d-vector of a mono clip at any rate (resampled, loudness-normalised, trimmed)."""
        wav = np.asarray(samples, np.float32).reshape(-1)
        if wav.size == 0 or not np.isfinite(wav).all():
            raise AudioError("speaker embedding needs non-empty, finite audio")
        if sample_rate <= 0:
            raise AudioError(f"sample_rate must be positive, got {sample_rate}")
        if sample_rate != SAMPLE_RATE:
            wav = soxr.resample(wav, sample_rate, SAMPLE_RATE).astype(np.float32)
        wav = trim_long_silences(normalize_volume(wav))
        if len(wav) < HOP * 10:
            raise AudioError("speaker embedding needs at least ~0.1 s of sound")
        return self.embed_preprocessed(wav)

    def similarity(self, a: np.ndarray, sr_a: int, b: np.ndarray, sr_b: int) -> float:
        return float(np.dot(self.embed(a, sr_a), self.embed(b, sr_b)))
