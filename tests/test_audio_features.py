"""Audio front end: goldens from the reference implementations, frame-count derivations, edge cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_close_rel
from safetensors.torch import load_file

from editx.audio import features as F
from editx.audio.filterbanks import kaldi_mel_banks, slaney_mel_filters
from editx.errors import AudioError

AUDIO_GOLDEN = Path(__file__).parent / "golden" / "audio"
# Every golden matched bit for bit when it was made; the tolerances leave room for other BLAS/FFT
# builds (float32 sums in a different order) without hiding a wrong constant.
TOL_WAVE = 1e-5
TOL_LOGMEL = 1e-4


def golden(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(AUDIO_GOLDEN / f"{name}.safetensors"))


def close(ours, ref: torch.Tensor, tol: float) -> None:
    ours = torch.as_tensor(np.asarray(ours)) if not isinstance(ours, torch.Tensor) else ours
    assert tuple(ours.shape) == tuple(ref.shape)
    assert ours.dtype == torch.float32
    err = (ours - ref).abs().max().item()
    assert err <= tol, f"max abs error {err} > {tol}"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- goldens -----------------------------------------------------------------------------------------


def test_resample_matches_torchaudio_transform():
    g = golden("resample_chirp")
    close(F.resample(g["x22050"], 22050, 16000), g["y16000"], TOL_WAVE)
    m = golden("resample_more")
    close(F.resample(m["x44100"], 44100, 16000), m["y44100_16000"], TOL_WAVE)
    close(F.resample(m["x48000"], 48000, 16000), m["y48000_16000"], TOL_WAVE)


def test_resample_upsampling_matches_torchaudio_functional():
    m = golden("resample_more")
    for rate, key in ((24000, "y16000_24000_functional"), (22050, "y16000_22050_functional")):
        close(F.resample(m["x16000"], 16000, rate, kernel_dtype=torch.float32), m[key], TOL_WAVE)
        # the float64 kernel (transform semantics) differs only by kernel rounding (~1e-5 here)
        close(F.resample(m["x16000"], 16000, rate), m[key], 5e-5)


def test_energy_norm_then_trim_matches_upstream_preprocess():
    g = golden("level")
    x = g["x16000"]
    assert F.voiced_span(x.numpy()) == tuple(g["librosa_trim_index"].tolist())
    normed = F.energy_norm(x[None])[0]  # upstream normalises the (1, N) tensor
    close(F.trim_silence(normed), g["energy_norm_trim"], 0.0)
    close(F.trim_silence(x.numpy()), g["trim_raw"], 0.0)


def test_tokenizer_input_matches_upstream_preprocess_wav():
    g = golden("preprocess")
    close(torch.from_numpy(F.tokenizer_input(g["x22050"].numpy(), 22050)), g["y16000"], TOL_WAVE)
    raw = F.tokenizer_input(g["x22050"], 22050, normalize=False, trim=False)
    assert isinstance(raw, np.ndarray) and raw.shape == (-(-22049 * 16000 // 22050),)


def test_whisper_log_mel_matches_openai_whisper():
    g, level, chirp = golden("whisper"), golden("level"), golden("resample_chirp")
    speech = level["energy_norm_trim"]
    close(F.whisper_log_mel(speech), g["mel128_speech"], TOL_LOGMEL)
    close(F.whisper_log_mel(speech.numpy(), n_mels=80), g["mel80_speech"], TOL_LOGMEL)
    close(F.whisper_log_mel(chirp["y16000"])[:, :100], g["mel128_chirp_first100"], TOL_LOGMEL)


def test_kaldi_fbank_matches_torchaudio_for_funasr_and_campplus():
    g, x = golden("kaldi"), golden("level")["x16000"]
    close(F.kaldi_fbank(x * 32768, window="hamming", energy_floor=0.0), g["funasr_hamming"], TOL_LOGMEL)
    close(F.kaldi_fbank(x[None]), g["campplus_povey"], TOL_LOGMEL)
    close(F.kaldi_fbank(x, num_mel_bins=40, snip_edges=False, use_energy=True, energy_floor=1.0),
          g["povey_no_snip_energy"], TOL_LOGMEL)


def test_cosyvoice_mel_matches_matcha():
    g = golden("cosyvoice_mel")
    close(F.cosyvoice_mel(g["x24000"]), g["mel"], TOL_LOGMEL)
    close(F.cosyvoice_mel(g["x24000"].numpy()[None])[0], g["mel"], TOL_LOGMEL)  # batch axis kept


# --- shapes and derivations --------------------------------------------------------------------------


@pytest.mark.parametrize("orig,new,n", [(22050, 16000, 1000), (16000, 24000, 777), (44100, 16000, 1),
                                        (8000, 48000, 123), (16000, 16000, 50)])
def test_resample_length_and_type(orig, new, n):
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    y = F.resample(x, orig, new)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    assert y.shape == (-(-n * new // orig),)  # ceil(n * new / orig)
    yt = F.resample(torch.from_numpy(x).reshape(1, 1, n), orig, new)
    assert isinstance(yt, torch.Tensor) and yt.shape == (1, 1, y.shape[0])
    assert_close_rel(yt.reshape(-1).numpy(), y)


def test_resample_keeps_a_tone_and_removes_alias():
    sr, n = 48000, 4800
    t = np.arange(n) / sr
    tone, alias = np.sin(2 * np.pi * 1000 * t), np.sin(2 * np.pi * 12000 * t)  # 12 kHz > 8 kHz Nyquist
    y_tone = F.resample(tone.astype(np.float32), sr, 16000)[200:-200]
    y_alias = F.resample(alias.astype(np.float32), sr, 16000)[200:-200]
    assert abs(np.sqrt(np.mean(y_tone**2)) - np.sqrt(0.5)) < 0.01
    assert np.sqrt(np.mean(y_alias**2)) < 5e-3  # > 43 dB below the tone


def test_resample_coprime_rates_fall_back_with_the_same_contract(caplog):
    sr = 44101  # gcd(44101, 16000) = 1: the exact kernel would hold 16000 x 44k values
    x = np.sin(2 * np.pi * 440 * np.arange(sr) / sr).astype(np.float32)
    y = F.resample(x, sr, 16000)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.shape == (-(-sr * 16000 // sr),)
    assert abs(np.sqrt(np.mean(y[200:-200] ** 2)) - np.sqrt(0.5)) < 0.01
    assert "soxr" in caplog.text
    yt = F.resample(torch.from_numpy(x)[None], sr, 16000)
    assert yt.shape == (1, 16000)


def test_resample_rejects_bad_rates():
    with pytest.raises(AudioError):
        F.resample(np.zeros(10, np.float32), 0, 16000)
    with pytest.raises(AudioError):
        F.resample(np.zeros(10, np.float32), 22050.5, 16000)


def test_energy_norm_peak_and_floor():
    x = np.array([0.1, -0.5, 0.25], np.float32)
    y = F.energy_norm(x)
    assert isinstance(y, np.ndarray) and np.isclose(np.abs(y).max(), 0.999)
    quiet = np.array([0.001, -0.002], np.float32)
    np.testing.assert_allclose(F.energy_norm(quiet), quiet / 0.01 * 0.999, rtol=1e-6)
    yt = F.energy_norm(torch.from_numpy(x))
    assert isinstance(yt, torch.Tensor) and np.allclose(yt.numpy(), y)


def test_peak_limit_only_scales_loud_audio():
    loud = np.array([0.9, -0.3], np.float32)
    np.testing.assert_allclose(F.peak_limit(loud), [0.6, -0.2], rtol=1e-6)
    soft = np.array([0.5, -0.3], np.float32)
    assert F.peak_limit(soft) is soft
    assert torch.allclose(F.peak_limit(torch.tensor([-1.2, 0.6])), torch.tensor([-0.6, 0.3]))


def test_downmix_averages_channels():
    st = np.array([[1.0, 0.0], [0.5, -0.5]], np.float32)  # (N, C)
    np.testing.assert_allclose(F.downmix(st, channel_axis=-1), [0.5, 0.0])
    assert torch.allclose(F.downmix(torch.tensor(st.T)), torch.tensor([0.5, 0.0]))


def test_trim_silence_lengths():
    sr = 16000
    x = np.zeros(sr * 2, np.float32)
    x[8000:12000] = 0.5 * np.sin(np.arange(4000) * 0.3)
    start, end = F.voiced_span(x)
    assert 7000 < start <= 8000 and 12000 <= end < 13000
    y = F.trim_silence(x, sr)
    assert len(y) == -(-(end - start) // 240) * 240 + int(0.27 * sr)
    assert np.array_equal(y[: int(0.05 * sr)], x[start - 800 : start])  # 0.05 s kept on the left
    # voiced from the first sample: the left margin is zero padding
    y2 = F.trim_silence(x[start:], sr)
    assert np.all(y2[:800] == 0) and y2[800] == x[start]
    # digital silence: every frame is as loud as the loudest, so librosa keeps everything
    assert F.voiced_span(np.zeros(5000, np.float32)) == (0, 5000)
    assert len(F.trim_silence(np.zeros(5000, np.float32), sr)) == 5040 + int(0.27 * sr)
    assert F.voiced_span(np.zeros(0, np.float32)) == (0, 0)
    assert isinstance(F.trim_silence(torch.from_numpy(x), sr), torch.Tensor)


def test_whisper_frames_are_n_over_hop():
    for n in (201, 480, 16000, 16159):
        mel = F.whisper_log_mel(np.random.default_rng(n).standard_normal(n).astype(np.float32) * 0.1)
        assert mel.shape == (128, n // 160)
        assert (mel.max() - mel.min()).item() <= 2.0 + 1e-6  # floor at max - 8 (log10), then /4
    with pytest.raises(AudioError):
        F.whisper_log_mel(np.zeros(200, np.float32))


def test_kaldi_frames_and_shapes():
    x = np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    assert F.kaldi_fbank(x).shape == (1 + (16000 - 400) // 160, 80)
    assert F.kaldi_fbank(x, snip_edges=False).shape == ((16000 + 80) // 160, 80)
    assert F.kaldi_fbank(x[:399]).shape == (0, 80)
    assert F.kaldi_fbank(x, use_energy=True).shape == (98, 81)
    a = F.kaldi_fbank(x, dither=1.0, generator=torch.Generator().manual_seed(0))
    b = F.kaldi_fbank(x, dither=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and not torch.equal(a, F.kaldi_fbank(x))
    with pytest.raises(ValueError):
        F.kaldi_fbank(x, window="triangle")
    with pytest.raises(AudioError):
        F.kaldi_fbank(np.zeros((2, 1000), np.float32))


def test_cosyvoice_frames_are_n_over_hop():
    for n in (721, 24000, 24479):
        mel = F.cosyvoice_mel(np.random.default_rng(n).standard_normal(n).astype(np.float32) * 0.1)
        assert mel.shape == (80, (n + 2 * 720 - 1920) // 480 + 1)
    assert F.cosyvoice_mel(np.zeros(24000, np.float32)).shape == (80, 24000 // 480)
    assert torch.all(F.cosyvoice_mel(np.zeros(24000, np.float32)) >= np.log(1e-5) - 1e-6)


def test_slaney_filters_have_unit_area_triangles():
    w = slaney_mel_filters(16000, 400, 80)
    assert w.shape == (80, 201) and w.dtype == np.float32 and not w.flags.writeable
    assert np.all(w >= 0) and np.all(w.max(axis=1) > 0)
    hz = np.fft.rfftfreq(400, 1 / 16000)
    # Slaney norm: each triangle's area (in Hz) is 1 → peak * half width = 1 in continuous terms
    assert np.all(np.abs((w * (hz[1] - hz[0])).sum(axis=1) - 1.0) < 0.2)
    banks = kaldi_mel_banks(80, 512, 16000.0, 20.0, 0.0)
    assert banks.shape == (80, 257) and torch.all(banks[:, -1] == 0)
