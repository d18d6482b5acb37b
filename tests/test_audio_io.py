"""Audio decoding/encoding: formats, sources, mono mixing, and one clear error per kind of bad input."""

from __future__ import annotations

import io
import struct

import av
import numpy as np
import pytest
import soundfile as sf
from conftest import assert_close_rel

from editx.audio import io as aio
from editx.audio.io import Audio, encode_audio, float_wav_bytes, load_audio, wav_header
from editx.errors import AudioError, ValidationError

SR = 24000


def tone(n: int = SR, sr: int = SR, hz: float = 440.0, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * hz * np.arange(n) / sr)).astype(np.float32)


def wav_bytes(data: np.ndarray, sr: int, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, data, sr, format="WAV", subtype=subtype)
    return buf.getvalue()


def m4a_bytes(data: np.ndarray, sr: int) -> bytes:
    """AAC in MP4: a format libsndfile cannot read, so it exercises the FFmpeg path (stereo)."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("aac", rate=sr, layout="stereo")
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data.T), format="fltp", layout="stereo")
        frame.sample_rate = sr
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return buf.getvalue()


def snr_db(ref: np.ndarray, got: np.ndarray) -> float:
    return 10 * np.log10(np.sum(ref**2) / max(np.sum((ref - got) ** 2), 1e-20))


# --- decoding ----------------------------------------------------------------------------------------


def test_wav_from_path_bytes_and_file_object(tmp_path):
    x = tone()
    data = encode_audio(x, SR, "wav")
    path = tmp_path / "a.wav"
    path.write_bytes(data)
    for src in (path, str(path), data, io.BytesIO(data)):
        a = load_audio(src)
        assert isinstance(a, Audio) and a.sample_rate == SR and a.samples.dtype == np.float32
        assert a.samples.shape == (SR,) and a.duration_s == pytest.approx(1.0)
        assert np.max(np.abs(a.samples - x)) < 1.0 / 32767  # 16-bit quantisation only


def test_stereo_is_averaged_to_mono():
    left, right = tone(hz=300), tone(hz=500, amp=0.25)
    a = load_audio(wav_bytes(np.stack([left, right], axis=1), SR, "FLOAT"))
    assert_close_rel(a.samples, (left + right) / 2)


def test_ffmpeg_fallback_decodes_m4a_and_averages_channels():
    left, right = tone(hz=300), tone(hz=300, amp=0.1)
    a = load_audio(m4a_bytes(np.stack([left, right], axis=1), SR))
    assert a.sample_rate == SR
    assert abs(a.samples.shape[0] - SR) <= 2048  # AAC priming/padding
    mid = a.samples[4096:8192]
    assert 0.25 < np.max(np.abs(mid)) < 0.35  # (0.5 + 0.1) / 2 = 0.3


@pytest.mark.parametrize("fmt,min_snr", [("wav", 60), ("flac", 60), ("mp3", 15), ("opus", 10), ("aac", 10), ("ogg", 10)])
def test_encode_then_load_roundtrip(fmt, min_snr):
    x = tone()
    a = load_audio(encode_audio(x, SR, fmt))
    assert a.sample_rate == SR
    assert abs(a.samples.shape[0] - SR) <= 2048  # lossy codecs may pad by up to a frame (AAC: 1024 + priming)
    n = min(SR, a.samples.shape[0])
    if fmt in ("wav", "flac"):
        assert snr_db(x, a.samples[:n]) > min_snr
    else:
        # lossy: compare levels (codec delay makes sample-wise SNR meaningless for opus)
        def rms(v):
            return float(np.sqrt(np.mean(v[2000:n - 2000] ** 2)))
        assert abs(rms(a.samples) - rms(x)) < 0.05


def test_encode_pcm_is_headerless_s16le_matching_wav():
    x = tone(n=1000)
    pcm = encode_audio(x, SR, "pcm")
    assert len(pcm) == 2000
    wav = encode_audio(x, SR, "wav")
    assert wav.endswith(pcm) and wav[:44][:4] == b"RIFF"
    np.testing.assert_allclose(np.frombuffer(pcm, "<i2") / 32768, x, atol=1 / 16384)


def test_encode_clips_and_resamples_when_codec_needs_it():
    loud = np.full(4800, 2.0, np.float32)
    assert np.max(np.abs(load_audio(encode_audio(loud, 48000, "wav")).samples)) <= 1.0
    a = load_audio(encode_audio(tone(22050, 22050), 22050, "opus"))  # opus has no 22.05 kHz
    assert a.sample_rate == 48000 and abs(a.duration_s - 1.0) < 0.03


def test_encode_rejects_bad_input():
    with pytest.raises(ValidationError, match="aiff"):
        encode_audio(tone(), SR, "aiff")
    with pytest.raises(AudioError, match="NaN"):
        encode_audio(np.array([0.0, np.nan], np.float32), SR, "wav")
    with pytest.raises(AudioError, match="shape"):
        encode_audio(np.zeros((10, 2), np.float32), SR, "wav")


def test_wav_header_fixed_and_streaming():
    h = wav_header(24000, data_bytes=48000)
    assert len(h) == 44
    fields = struct.unpack("<4sI4s4sIHHIIHH4sI", h)
    assert fields[:4] == (b"RIFF", 36 + 48000, b"WAVE", b"fmt ")
    assert fields[6:11] == (1, 24000, 48000, 2, 16) and fields[12] == 48000
    # a header followed by samples is a valid file, equal to what soundfile writes
    pcm = encode_audio(tone(n=24000), 24000, "pcm")
    assert h + pcm == encode_audio(tone(n=24000), 24000, "wav")
    stream = wav_header(24000)
    assert struct.unpack("<I", stream[4:8])[0] == 0xFFFFFFFF == struct.unpack("<I", stream[40:44])[0]


# --- bad input ---------------------------------------------------------------------------------------


def test_missing_file_names_it(tmp_path):
    with pytest.raises(AudioError, match="nope.wav: file not found"):
        load_audio(tmp_path / "nope.wav")


def test_text_renamed_wav_is_rejected_with_its_name(tmp_path):
    p = tmp_path / "notes.wav"
    p.write_text("this is a text file, not a recording\n" * 10)
    with pytest.raises(AudioError, match="notes.wav: not audio"):
        load_audio(p)


@pytest.mark.parametrize("data,msg", [
    (b"", "empty file"),
    (bytes(2048), "not audio"),
    (np.random.default_rng(0).bytes(4096), "not audio"),
    (wav_header(16000, data_bytes=0), "zero samples"),
])
def test_garbage_and_empty(data, msg):
    with pytest.raises(AudioError, match=msg):
        load_audio(data, name="upload.bin")


def test_corrupt_wav_truncated_header():
    with pytest.raises(AudioError):
        load_audio(encode_audio(tone(), SR, "wav")[:30])


def test_non_finite_samples():
    bad = tone(n=1000)
    bad[10] = np.inf
    with pytest.raises(AudioError, match="NaN or infinite"):
        load_audio(wav_bytes(bad, SR, "FLOAT"))


def test_absurd_sample_rate():
    with pytest.raises(AudioError, match="500 Hz is outside"):
        load_audio(wav_bytes(np.zeros(100, np.float32), 500))


def test_too_long_both_paths():
    with pytest.raises(AudioError, match="limit is 0.5 s"):
        load_audio(encode_audio(tone(), SR, "wav"), max_seconds=0.5)
    m4a = m4a_bytes(np.stack([tone(), tone()], axis=1), SR)
    with pytest.raises(AudioError, match="limit is 0.5 s"):
        load_audio(m4a, max_seconds=0.5)
    assert load_audio(m4a, max_seconds=2.0).duration_s > 0.9


def test_file_object_in_text_mode_is_explained(tmp_path):
    p = tmp_path / "t.wav"
    p.write_bytes(encode_audio(tone(), SR, "wav"))
    with open(p, encoding="latin-1") as f, pytest.raises(AudioError, match="'rb'"):
        load_audio(f)


def test_decoders_agree_on_mp3():
    data = encode_audio(tone(), SR, "mp3")
    via_sf = load_audio(data).samples
    via_ff, rate = aio._decode_ffmpeg(data, "x.mp3", None)
    assert rate == SR
    n = min(len(via_sf), len(via_ff))
    assert abs(len(via_sf) - len(via_ff)) <= 1152 and snr_db(via_sf[:n], via_ff[:n]) > 20


def test_float_wav_bytes_are_bit_exact_and_depend_on_the_samples_alone():
    x = np.random.default_rng(3).uniform(-1.5, 1.5, 4001).astype(np.float32)  # beyond ±1: floats are not clipped
    data = float_wav_bytes(x, 22050)
    back, sr = sf.read(io.BytesIO(data), dtype="float32")
    assert sr == 22050 and back.dtype == np.float32 and np.array_equal(back, x)
    assert float_wav_bytes(x.copy(), 22050) == data  # no timestamp or anything else that varies
    assert float_wav_bytes(x[:-1], 22050) != data and float_wav_bytes(x, 16000) != data
