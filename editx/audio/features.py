"""Audio front end as pure functions: resampling, level and silence handling, and the spectral features.

Every function reproduces one upstream step numerically (the source is named next to each constant):
the tokenizer path of Step-Audio-EditX (torchaudio sinc resampling, peak normalisation, librosa-style
silence trimming, Whisper log-mel for vq06, Kaldi fbank for vq02) and the CosyVoice decoder path
(Matcha mel spectrogram, Kaldi fbank for CAM++, prompt peak limiting). Inputs may be numpy arrays or
torch tensors; work happens in float32.
"""

from __future__ import annotations

import logging
import math
from functools import lru_cache

import numpy as np
import torch

from editx.audio.filterbanks import kaldi_mel_banks, slaney_mel_filters
from editx.errors import AudioError

log = logging.getLogger(__name__)

# --- resampling: torchaudio.functional.resample defaults (sinc_interp_hann) --------------------------
RESAMPLE_ZERO_CROSSINGS = 6  # lowpass_filter_width: sinc zero crossings kept on each side
RESAMPLE_ROLLOFF = 0.99  # cutoff as a fraction of the lower Nyquist frequency
# Rates with a small gcd (e.g. 44101 -> 16000) need a kernel of new_rate x (orig_rate + taps) values;
# above this size soxr (very high quality, not bit-exact) is used instead of building it.
RESAMPLE_MAX_KERNEL = 1 << 24

# --- level and silence: Step-Audio-EditX utils.py (energy_norm_fn, trim_silence), tts.py ------------
PEAK_TARGET = 0.999  # energy_norm_fn scales the peak to this value ...
PEAK_FLOOR = 0.01  # ... but never divides by less than this (near-silent input stays quiet)
PROMPT_PEAK_LIMIT = 0.6  # tts.py preprocess_prompt_wav: flow/CAM++ audio is scaled down to this peak
TRIM_TOP_DB = 20.0  # librosa.effects.trim(top_db=20): frames 20 dB under the loudest are silence
TRIM_FRAME = 512  # RMS frame length in samples
TRIM_HOP = 128  # RMS hop in samples
TRIM_KEEP_LEFT_S = 0.05  # silence kept before the first voiced frame
TRIM_KEEP_RIGHT_S = 0.22  # silence budget after the voiced region
TRIM_ROUND = 240  # the voiced length is rounded up to a multiple of this many samples

# --- Whisper log-mel (openai-whisper audio.py), input for speech_tokenizer_v1 (vq06) -----------------
WHISPER_SR = 16000
WHISPER_N_FFT = 400  # 25 ms window
WHISPER_HOP = WHISPER_SR // 100  # 160: 100 frames per second
WHISPER_LOG_FLOOR = 1e-10
WHISPER_DYNAMIC_RANGE = 8.0  # log10 units kept below the maximum (80 dB)

# --- Kaldi fbank (torchaudio.compliance.kaldi.fbank) --------------------------------------------------
KALDI_PREEMPHASIS = 0.97
KALDI_LOW_FREQ = 20.0
KALDI_EPSILON = float(torch.finfo(torch.float32).eps)  # log floor, as in torchaudio
KALDI_WINDOWS = ("povey", "hamming", "hanning", "rectangular")

# --- CosyVoice / Matcha mel (matcha/audio.py mel_spectrogram with cosyvoice.yaml mel_conf) -----------
COSY_SR = 24000
COSY_N_FFT = 1920  # 80 ms
COSY_HOP = COSY_SR // 50  # 480: 50 mel frames per second (2 per 25 Hz token row)
COSY_WIN = 1920
COSY_N_MELS = 80
COSY_FMIN = 0.0
COSY_FMAX = 8000.0
COSY_MAG_EPS = 1e-9  # added to |X|^2 before the square root
COSY_LOG_FLOOR = 1e-5


def _to_tensor(x) -> tuple[torch.Tensor, bool]:
    """Return (float32 tensor, was_numpy)."""
    if isinstance(x, torch.Tensor):
        return (x if x.dtype == torch.float32 else x.float()), False
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), True


def _to_numpy(x) -> tuple[np.ndarray, bool]:
    """Return (float32 array, was_tensor)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().float().numpy(), True
    return np.asarray(x, dtype=np.float32), False


def _mono_1d(x: torch.Tensor, what: str) -> torch.Tensor:
    if x.dim() == 2 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 1:
        raise AudioError(f"{what} expects mono audio of shape (N,) or (1, N), got shape {tuple(x.shape)}")
    return x


# ------------------------------------------------------------------------------------------------------
# resampling


@lru_cache(maxsize=32)
def _sinc_kernel(orig: int, new: int, kernel_dtype: torch.dtype) -> tuple[torch.Tensor, int]:
    """Windowed-sinc polyphase kernel for gcd-reduced rates: (new, 1, 2*width + orig) float32."""
    cutoff = min(orig, new) * RESAMPLE_ROLLOFF  # in units of the reduced rates
    width = math.ceil(RESAMPLE_ZERO_CROSSINGS * orig / cutoff)  # input samples of context per side
    # Position of every input tap relative to every output phase, in input-sample periods.
    taps = torch.arange(-width, width + orig, dtype=kernel_dtype)[None, None] / orig
    # torchaudio builds the output phases in float32 even when the taps are float64; keep that rounding.
    phase = torch.arange(0, -new, -1, dtype=torch.float32)[:, None, None] / new
    t = (phase + taps) * cutoff
    t = t.clamp(-RESAMPLE_ZERO_CROSSINGS, RESAMPLE_ZERO_CROSSINGS)
    hann = torch.cos(t * math.pi / RESAMPLE_ZERO_CROSSINGS / 2) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones((), dtype=kernel_dtype), t.sin() / t)
    kernel = sinc * (hann * (cutoff / orig))
    return kernel.to(torch.float32), width


def resample(x, orig_sr: int, new_sr: int, *, kernel_dtype: torch.dtype = torch.float64):
    """Band-limited resampling along the last axis, numerically torchaudio's default sinc resampler.

    kernel_dtype=float64 reproduces `torchaudio.transforms.Resample` (upstream tokenizer path);
    float32 reproduces `torchaudio.functional.resample` on float32 input (upstream decoder path).
    The two differ by up to ~1e-5. Returns the input's type (numpy in, numpy out); output length is
    ceil(N * new_sr / orig_sr).
    """
    if int(orig_sr) != orig_sr or int(new_sr) != new_sr or orig_sr <= 0 or new_sr <= 0:
        raise AudioError(f"sample rates must be positive integers, got {orig_sr} -> {new_sr}")
    orig_sr, new_sr = int(orig_sr), int(new_sr)
    wav, was_numpy = _to_tensor(x)
    g = math.gcd(orig_sr, new_sr)
    orig, new = orig_sr // g, new_sr // g
    taps = orig + 2 * math.ceil(RESAMPLE_ZERO_CROSSINGS * orig / (min(orig, new) * RESAMPLE_ROLLOFF))
    if orig_sr != new_sr and new * taps > RESAMPLE_MAX_KERNEL:
        wav = _resample_soxr(wav, orig_sr, new_sr)
    elif orig_sr != new_sr:
        kernel, width = _sinc_kernel(orig, new, kernel_dtype)
        lead = wav.shape[:-1]
        n = wav.shape[-1]
        flat = wav.reshape(-1, n)  # (B, N)
        padded = torch.nn.functional.pad(flat, (width, width + orig))
        out = torch.nn.functional.conv1d(padded[:, None], kernel.to(wav.device), stride=orig)  # (B, new, F)
        out = out.transpose(1, 2).reshape(flat.shape[0], -1)  # (B, F * new), phases interleaved
        wav = out[:, : math.ceil(new * n / orig)].reshape(*lead, -1)
    return wav.numpy() if was_numpy else wav


def _resample_soxr(wav: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    import soxr  # only for unusual rate pairs

    log.warning("resampling %d -> %d Hz with soxr: the rates share no useful divisor", orig_sr, new_sr)
    n = wav.shape[-1]
    n_out = math.ceil(new_sr * n / orig_sr)
    flat = wav.detach().cpu().reshape(-1, n).numpy()
    rows = [soxr.resample(row, orig_sr, new_sr, quality="VHQ")[:n_out] for row in flat]
    out = np.stack([np.pad(r, (0, n_out - len(r))) for r in rows]).astype(np.float32)
    return torch.from_numpy(out).reshape(*wav.shape[:-1], n_out).to(wav.device)


# ------------------------------------------------------------------------------------------------------
# level and silence


def energy_norm(x):
    """Scale so the peak is 0.999 (peaks under 0.01 are treated as 0.01): upstream `energy_norm_fn`."""
    if isinstance(x, torch.Tensor):
        peak = torch.max(torch.abs(x))
        return x / max(peak, PEAK_FLOOR) * PEAK_TARGET
    arr = np.asarray(x, dtype=np.float32)
    peak = np.max(np.abs(arr))
    return arr / max(peak, PEAK_FLOOR) * PEAK_TARGET


def peak_limit(x, limit: float = PROMPT_PEAK_LIMIT):
    """Scale down so |x| <= limit; quieter audio is unchanged.

    Upstream Step-Audio-EditX tts.py `preprocess_prompt_wav` (stepfun-ai commit aacb90a, also in the
    zsc and vllm-omni copies) does this to the prompt before the CosyVoice mel and CAM++ embedding;
    older tts.py versions (4b85105c) did not.
    """
    if isinstance(x, torch.Tensor):
        peak = torch.max(torch.abs(x))
        return x / peak * limit if peak > limit else x
    arr = np.asarray(x, dtype=np.float32)
    peak = np.max(np.abs(arr))
    return arr / peak * np.float32(limit) if peak > limit else arr


def downmix(x, channel_axis: int = 0):
    """Average the channels (upstream `wav.mean(dim=0)`); numpy in, numpy out."""
    if isinstance(x, torch.Tensor):
        return x.float().mean(dim=channel_axis)
    return np.asarray(x, dtype=np.float32).mean(axis=channel_axis, dtype=np.float32)


def voiced_span(x, top_db: float = TRIM_TOP_DB, frame: int = TRIM_FRAME, hop: int = TRIM_HOP):
    """(start, end) sample indices of the non-silent region: librosa.effects.trim's index.

    A frame is voiced when its RMS power (centred frames, zero padded) is within `top_db` of the
    loudest frame's; the span runs from the first voiced frame's start to the last voiced frame's
    end (clipped to the signal). Digital silence (every frame equally loud) counts as voiced
    throughout, as in librosa; empty input gives (0, 0).
    """
    y, _ = _to_numpy(x)
    if y.ndim != 1:
        raise AudioError(f"voiced_span expects mono audio of shape (N,), got shape {y.shape}")
    padded = np.pad(y, frame // 2, mode="constant")
    n_frames = 1 + (len(padded) - frame) // hop
    frames = np.lib.stride_tricks.as_strided(
        padded, shape=(frame, n_frames), strides=(padded.strides[0], hop * padded.strides[0])
    )  # (frame, n_frames) like librosa.util.frame
    power = np.mean(np.abs(frames) ** 2, axis=0, dtype=np.float32)
    power = np.sqrt(power) ** 2  # librosa squares the RMS again; keep its rounding
    amin = 1e-5**2  # librosa amplitude_to_db: amin 1e-5 on the RMS, squared
    db = 10.0 * np.log10(np.maximum(amin, power))
    db -= 10.0 * np.log10(np.maximum(amin, power.max()))
    voiced = np.flatnonzero(db > -top_db)
    if voiced.size == 0:
        return 0, 0
    return int(voiced[0] * hop), min(len(y), int((voiced[-1] + 1) * hop))


def trim_silence(x, sr: int = 16000):
    """Cut leading/trailing silence the way upstream `trim_silence` does (used before tokenizing).

    Keeps 0.05 s before the voiced span and pads/cuts the result to
    ceil(voiced / 240) * 240 + int(0.27 * sr) samples (zeros where the signal runs out).
    """
    y, was_tensor = _to_numpy(x)
    start, end = voiced_span(y)
    n_units = math.ceil((end - start) / TRIM_ROUND)
    keep_left = int(TRIM_KEEP_LEFT_S * sr)
    first = start - keep_left
    out = y[first:] if first > 0 else np.pad(y, (-first, 0))
    out_len = int(n_units * TRIM_ROUND + (TRIM_KEEP_LEFT_S + TRIM_KEEP_RIGHT_S) * sr)
    out = out[:out_len] if out_len < len(out) else np.pad(out, (0, out_len - len(out)))
    return torch.from_numpy(out) if was_tensor else out


def tokenizer_input(samples, sample_rate: int, *, normalize: bool = True, trim: bool = True) -> np.ndarray:
    """The audio the speech tokenizers read: upstream `preprocess_wav` (16 kHz, peak 0.999, trimmed)."""
    wav = resample(_to_tensor(samples)[0].cpu(), sample_rate, WHISPER_SR)
    if normalize:
        wav = energy_norm(wav)
    return trim_silence(wav.numpy(), WHISPER_SR) if trim else wav.numpy()


# ------------------------------------------------------------------------------------------------------
# spectral features


def whisper_log_mel(x16k, n_mels: int = 128) -> torch.Tensor:
    """Whisper's log-mel spectrogram (no 30 s padding): (n_mels, N // 160) float32.

    Centred reflect-padded STFT (n_fft 400, hop 160, periodic Hann), the last frame dropped, power
    through the Slaney mel filters, log10 floored at 1e-10 and at (max - 8), then (x + 4) / 4.
    """
    wav = _mono_1d(_to_tensor(x16k)[0], "whisper_log_mel")
    if wav.shape[0] <= WHISPER_N_FFT // 2:
        raise AudioError(f"audio too short for a Whisper mel: {wav.shape[0]} samples (need > 200)")
    window = torch.hann_window(WHISPER_N_FFT, device=wav.device)
    spec = torch.stft(wav, WHISPER_N_FFT, WHISPER_HOP, window=window, return_complex=True)
    power = spec[..., :-1].abs() ** 2  # (bins, frames)
    filters = torch.tensor(slaney_mel_filters(WHISPER_SR, WHISPER_N_FFT, n_mels), device=wav.device)
    log_spec = torch.clamp(filters @ power, min=WHISPER_LOG_FLOOR).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - WHISPER_DYNAMIC_RANGE)
    return (log_spec + 4.0) / 4.0


def _kaldi_window(kind: str, size: int, device) -> torch.Tensor:
    if kind == "povey":  # Hann that reaches zero at both ends, raised to 0.85
        return torch.hann_window(size, periodic=False, device=device).pow(0.85)
    if kind == "hamming":
        return torch.hamming_window(size, periodic=False, alpha=0.54, beta=0.46, device=device)
    if kind == "hanning":
        return torch.hann_window(size, periodic=False, device=device)
    if kind == "rectangular":
        return torch.ones(size, device=device)
    raise ValueError(f"unknown Kaldi window {kind!r}; use one of {', '.join(KALDI_WINDOWS)}")


def kaldi_fbank(
    x, sr: int = 16000, num_mel_bins: int = 80, *,
    frame_length_ms: float = 25.0, frame_shift_ms: float = 10.0, dither: float = 0.0,
    window: str = "povey", preemphasis: float = KALDI_PREEMPHASIS, remove_dc_offset: bool = True,
    snip_edges: bool = True, low_freq: float = KALDI_LOW_FREQ, high_freq: float = 0.0,
    use_energy: bool = False, energy_floor: float = 1.0, generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Kaldi log-mel filterbank, numerically torchaudio.compliance.kaldi.fbank: (frames, num_mel_bins).

    Defaults are Kaldi's except dither (0: deterministic) and the keyword names. The caller scales the
    waveform (FunASR and CAM++ paths differ: FunASR multiplies by 32768 first). With snip_edges,
    frames = 1 + (N - win) // shift (0 if N < win). use_energy prepends the raw log-energy column,
    floored at log(energy_floor) when energy_floor > 0.
    """
    wav = _mono_1d(_to_tensor(x)[0], "kaldi_fbank")
    win = int(sr * frame_length_ms * 0.001)
    shift = int(sr * frame_shift_ms * 0.001)
    n_fft = 1 if win == 0 else 2 ** (win - 1).bit_length()  # next power of two
    if win < 2 or shift < 1:
        raise ValueError(f"bad Kaldi frame sizes: {win} samples window, {shift} samples shift")
    n = wav.shape[0]
    if n < win:
        return torch.empty(0, num_mel_bins + int(use_energy), device=wav.device)
    if snip_edges:
        n_frames = 1 + (n - win) // shift
        source = wav
    else:  # frames centred on multiples of the shift, ends mirrored including the edge sample
        n_frames = (n + shift // 2) // shift
        pad = win // 2 - shift // 2
        flipped = torch.flip(wav, [0])
        source = torch.cat((flipped[-pad:], wav, flipped)) if pad > 0 else torch.cat((wav[-pad:], flipped))
    frames = source.as_strided((n_frames, win), (shift * source.stride(0), source.stride(0)))  # (F, win)
    if dither != 0.0:
        noise = torch.randn(frames.shape, generator=generator, device=wav.device)
        frames = frames + noise * dither
    if remove_dc_offset:
        frames = frames - frames.mean(dim=1, keepdim=True)
    eps = torch.tensor(KALDI_EPSILON, device=wav.device)
    if use_energy:
        log_energy = torch.max(frames.pow(2).sum(1), eps).log()  # (F,)
        if energy_floor != 0.0:
            log_energy = torch.clamp(log_energy, min=math.log(energy_floor))
    if preemphasis != 0.0:
        previous = torch.cat((frames[:, :1], frames[:, :-1]), dim=1)  # x[j-1], x[-1] := x[0]
        frames = frames - preemphasis * previous
    frames = frames * _kaldi_window(window, win, wav.device).unsqueeze(0)
    frames = torch.nn.functional.pad(frames, (0, n_fft - win))  # (F, n_fft)
    spectrum = torch.fft.rfft(frames).abs().pow(2.0)  # (F, n_fft//2 + 1) power
    banks = kaldi_mel_banks(num_mel_bins, n_fft, float(sr), low_freq, high_freq).to(wav.device)
    fbank = torch.max(torch.mm(spectrum, banks.T), eps).log()  # (F, num_mel_bins)
    if use_energy:
        fbank = torch.cat((log_energy.unsqueeze(1), fbank), dim=1)
    return fbank


def cosyvoice_mel(
    x24k, *, sr: int = COSY_SR, n_fft: int = COSY_N_FFT, hop: int = COSY_HOP, win: int = COSY_WIN,
    n_mels: int = COSY_N_MELS, fmin: float = COSY_FMIN, fmax: float = COSY_FMAX,
) -> torch.Tensor:
    """The CosyVoice (Matcha) log-mel: (..., n_mels, frames) with frames = (N + 2*pad - n_fft)//hop + 1.

    Reflect pad (n_fft - hop)/2 per side, uncentred STFT with a periodic Hann window, magnitude
    sqrt(|X|^2 + 1e-9), Slaney mel filters (fmax 8 kHz), natural log floored at 1e-5. With the
    defaults, frames = N // 480 (50 per second). Leading axes (batch) are kept.
    """
    wav = _to_tensor(x24k)[0]
    pad = (n_fft - hop) // 2
    lead = wav.shape[:-1]
    flat = wav.reshape(-1, wav.shape[-1])  # (B, N)
    if flat.shape[-1] <= pad:
        raise AudioError(f"audio too short for the CosyVoice mel: {flat.shape[-1]} samples (need > {pad})")
    flat = torch.nn.functional.pad(flat.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
    window = torch.hann_window(win, device=wav.device)
    spec = torch.stft(flat, n_fft, hop_length=hop, win_length=win, window=window, center=False,
                      normalized=False, onesided=True, return_complex=True)
    mag = torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1) + COSY_MAG_EPS)  # (B, bins, F)
    filters = torch.tensor(slaney_mel_filters(sr, n_fft, n_mels, fmin, fmax), device=wav.device)
    mel = torch.log(torch.clamp(torch.matmul(filters, mag), min=COSY_LOG_FLOOR))  # (B, n_mels, F)
    return mel.reshape(*lead, n_mels, mel.shape[-1])
