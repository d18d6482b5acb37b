"""Step-Audio tokenizer: goldens from upstream tokenizer.py, fixture layout, id layouts, load errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from conftest import GOLDEN, assert_close_rel
from safetensors.numpy import load_file

from editx.errors import ModelFilesError, ValidationError
from editx.fixtures import tokenizer as fixture
from editx.tokenizer import FUNASR_SUBDIR, DualTokens, StepAudioTokenizer, frontend, speech

GOLD = GOLDEN / "tokenizer"


def speech_like(seconds: float, sr: int, seed: int) -> np.ndarray:
    """Deterministic speech-like test signal: voiced syllables with moving formants, fricative bursts,
    pauses and silent edges; peak 0.5, float32. (The golden files hold checksums of its output.)"""
    rng = np.random.default_rng(seed)
    n = round(seconds * sr)
    t = np.arange(n) / sr
    f0 = 120.0 + 40.0 * np.sin(2 * np.pi * 0.7 * t) + 15.0 * np.sin(2 * np.pi * 2.3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    env = np.zeros(n)
    f1 = np.full(n, 500.0)
    f2 = np.full(n, 1500.0)
    noise_env = np.zeros(n)
    pos = int(0.3 * sr)
    while pos < n - int(0.4 * sr):
        length = int(rng.uniform(0.12, 0.3) * sr)
        end = min(pos + length, n - int(0.4 * sr))
        seg = end - pos
        env[pos:end] = np.hanning(seg) if seg > 1 else 0.0
        f1[pos:end] = rng.uniform(300, 900)
        f2[pos:end] = rng.uniform(900, 2500)
        if rng.uniform() < 0.3:
            noise_env[pos:end] = 0.3 * np.hanning(seg)
        pos = end + int(rng.uniform(0.02, 0.15) * sr)
    voiced = np.zeros(n)
    for k in range(1, 25):
        fk = k * f0
        amp = np.exp(-((fk - f1) / 150.0) ** 2) + 0.6 * np.exp(-((fk - f2) / 250.0) ** 2) + 0.02
        voiced += amp * np.sin(k * phase) * (fk < sr / 2)
    noise = np.diff(rng.standard_normal(n + 1))
    x = env * voiced + noise_env * noise + 1e-4 * rng.standard_normal(n)
    return (0.5 * x / np.max(np.abs(x))).astype(np.float32)


def golden_signal(gold: dict, seconds: float, sr: int, seed: int) -> np.ndarray:
    x = speech_like(seconds, sr, seed)
    assert_close_rel(x[:16], gold["signal_head"])
    # numpy's sin/exp differ by a few ulps per sample across CPUs: the sum's error follows sum |x|
    assert_close_rel(x.astype(np.float64).sum(), gold["signal_sum"][0], dtype=np.float32,
                     scale=float(np.abs(x).sum(dtype=np.float64)))
    return x


@pytest.fixture(scope="module")
def tok_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    fixture.write(root, "tiny", seed=0)
    return root / "Step-Audio-Tokenizer"


@pytest.fixture(scope="module")
def tok(tok_root):
    torch.set_num_threads(1)
    return StepAudioTokenizer.load(tok_root)


# ---------------------------------------------------------------------------------------------------
# goldens (upstream tokenizer.py + funasr_detach run on this fixture; see golden/tokenizer/README.md)


def test_wav2token_16k_matches_upstream(tok):
    gold = load_file(GOLD / "wav2token_16k.safetensors")
    x = golden_signal(gold, 5.0, 16000, seed=1)
    tokens = tok.wav2token(x, 16000)
    np.testing.assert_array_equal(tokens.vq02, gold["vq02"])
    np.testing.assert_array_equal(tokens.vq06, gold["vq06"])
    np.testing.assert_array_equal(tokens.lm_ids, gold["lm_ids"])
    assert tokens.token_str == bytes(gold["token_str"]).decode()
    enc = tok.vq02_model.encode(tok.preprocess(x, 16000)).numpy()
    assert enc.shape[0] == gold["enc_frames"][0]
    assert_close_rel(enc[:8], gold["enc_head"])
    assert_close_rel(enc[-4:], gold["enc_tail"])


def test_wav2token_24k_matches_upstream(tok):
    gold = load_file(GOLD / "wav2token_24k.safetensors")
    x = golden_signal(gold, 3.3, 24000, seed=2)
    tokens = tok.wav2token(x, 24000)
    np.testing.assert_array_equal(tokens.vq02, gold["vq02"])
    np.testing.assert_array_equal(tokens.vq06, gold["vq06"])
    np.testing.assert_array_equal(tokens.lm_ids, gold["lm_ids"])


@pytest.mark.parametrize("n", [80000, 76800, 77300, 11570, 20079, 20100, 3000, 1000, 700])
def test_streaming_chunk_edges_match_upstream(tok, n):
    # 76800: the length divides into chunks (no final flush); 77300/20079: the last chunk brings too
    # few frames and upstream drops them; 11570: flush of the splice cache alone; <=3000: one chunk.
    gold = load_file(GOLD / "streaming_edges.safetensors")
    x = golden_signal(gold, 6.0, 16000, seed=3)[:n]
    np.testing.assert_array_equal(tok.vq02(x), gold[f"vq02_{n}"])
    enc = tok.vq02_model.encode(x).numpy()
    assert enc.shape[0] == len(gold[f"vq02_{n}"])
    if enc.shape[0]:
        assert_close_rel(np.concatenate([enc[:2], enc[-2:]]), gold[f"enc_{n}"])


def test_vq06_30s_windows_match_upstream(tok):
    gold = load_file(GOLD / "vq06_windows.safetensors")
    x = golden_signal(gold, 31.0, 16000, seed=4)
    np.testing.assert_array_equal(tok.vq06(x), gold["vq06_31s"])
    np.testing.assert_array_equal(tok.vq06(x[: 480000 + 300]), gold["vq06_30s_300"])  # 300-sample tail skipped


# ---------------------------------------------------------------------------------------------------
# behaviour


def test_done_criterion_from_cli_fixture(tiny_model_dir):
    tok = StepAudioTokenizer.load(tiny_model_dir / "Step-Audio-Tokenizer")
    x = speech_like(5.0, 16000, seed=5)
    raw = tok.wav2token(x, 16000, trim=False)
    assert (len(raw.vq02), len(raw.vq06)) == (83, 125)  # 5 s: ceil(498 fbank frames / 6), 500 mel / 4
    assert len(raw.mixed) == 41 * 5
    trimmed = tok.wav2token(x, 16000)
    assert abs(len(trimmed.vq02) - 83) <= 12 and abs(len(trimmed.vq06) - 125) <= 18
    assert trimmed.token_str.startswith(f"<audio_{trimmed.vq02[0]}><audio_{trimmed.vq02[1]}>"
                                        f"<audio_{trimmed.vq06[0] + 1024}>")
    assert StepAudioTokenizer.load(tiny_model_dir).vq02(x).shape == raw.vq02.shape  # root folder accepted


@pytest.mark.parametrize("seconds", [0.5, 1.0, 2.37, 7.3, 12.0])
def test_token_counts_follow_upstream_rates(tok, seconds):
    x = speech_like(seconds, 16000, seed=7)
    vq06 = tok.vq06(x)
    assert abs(len(vq06) - round(len(x) / 16000, 2) * 25) <= 2  # upstream's assertion
    assert abs(len(tok.vq02(x)) - seconds * 16000 / 960) <= 1.5  # 16.67 Hz
    assert ((vq06 >= 0) & (vq06 < 4096)).all() and len(np.unique(vq06)) > 1


def test_chunk_plan_chunks_are_four_frames_then_tail():
    cfg = frontend.FrontendConfig(lfr_m=7, lfr_n=6)
    frames, lens = frontend.chunk_plan(80000, cfg, 4)
    assert frames == 1 + (80000 - 400) // 160
    assert lens[:-1] == [4] * (len(lens) - 1) and 1 <= lens[-1] <= 4 and sum(lens) == -(-frames // 6)
    assert frontend.chunk_plan(399, cfg, 4) == (0, [])


def test_interleave_drops_remainders_like_upstream():
    mixed = speech.interleave(np.array([1, 2, 3, 4, 5]), np.array([10, 11, 12, 13, 14, 15, 16]))
    np.testing.assert_array_equal(mixed, [1, 2, 1034, 1035, 1036, 3, 4, 1037, 1038, 1039])
    assert speech.interleave(np.array([1]), np.array([1, 2, 3])).size == 0
    assert speech.interleave(np.array([1, 2]), np.array([1, 2])).size == 0
    assert speech.interleave(np.array([], dtype=np.int64), np.array([], dtype=np.int64)).size == 0
    assert speech.mixed_to_string(np.array([1, 2, 1034])) == "<audio_1><audio_2><audio_1034>"
    np.testing.assert_array_equal(speech.mixed_to_lm_ids(mixed)[:3], [65537, 65538, 66570])
    vq02, vq06 = speech.split_mixed(mixed)
    np.testing.assert_array_equal(vq02, [1, 2, 3, 4])
    np.testing.assert_array_equal(vq06, [10, 11, 12, 13, 14, 15])


def test_id_conversions_round_trip_and_reject_bad_ids():
    tokens = DualTokens.from_codes(np.array([0, 1023, 5, 6]), np.array([0, 4095, 7, 8, 9, 10]))
    np.testing.assert_array_equal(speech.string_to_mixed(tokens.token_str), tokens.mixed)
    np.testing.assert_array_equal(speech.lm_ids_to_mixed(tokens.lm_ids), tokens.mixed)
    with pytest.raises(ValidationError, match="not audio tokens"):
        speech.lm_ids_to_mixed([65536, 3])
    np.testing.assert_array_equal(speech.lm_ids_to_mixed([65536, 3, 65536 + 5119], drop_invalid=True), [0, 5119])
    with pytest.raises(ValidationError):
        speech.interleave(np.array([1024, 0]), np.array([0, 0, 0]))
    with pytest.raises(ValidationError):
        speech.string_to_mixed("<audio_1>hello")


def test_fixture_has_the_official_layout(tok_root):
    model_dir = tok_root / FUNASR_SUBDIR
    for name in ("config.yaml", "configuration.json", "model.pt", "am.mvn", "tokens.json", "tokens.txt", "seg_dict"):
        assert (model_dir / name).is_file(), name
    cfg = yaml.safe_load((model_dir / "config.yaml").read_text())
    assert cfg["encoder"] == "SANMEncoderChunkOpt" and cfg["encoder_conf"]["sanm_shfit"] == 0
    assert cfg["frontend"] == "WavFrontendOnline" and cfg["frontend_conf"]["lfr_m"] == 7
    assert json.loads((model_dir / "configuration.json").read_text())["file_path_metas"]["init_param"] == "model.pt"
    state = torch.load(model_dir / "model.pt", weights_only=True)
    assert state["encoder.encoders0.0.self_attn.linear_q_k_v.weight"].shape[1] == 560
    assert any(k.startswith("decoder.") for k in state) and "predictor.cif_output.weight" in state
    assert np.load(tok_root / "linguistic_tokenizer.npy").shape == (1024, cfg["encoder_conf"]["output_size"])
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tok_root / "speech_tokenizer_v1.onnx"), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type) for i in sess.get_inputs()] == [("feats", "tensor(float)"),
                                                            ("feats_length", "tensor(int32)")]
    assert [o.name for o in sess.get_outputs()] == ["indices"]


def _broken_copy(tok_root, tmp_path):
    dst = tmp_path / "Step-Audio-Tokenizer"
    shutil.copytree(tok_root, dst)
    return dst


@pytest.mark.parametrize("damage", ["truncate_model", "missing_mvn", "garbage_onnx", "missing_kmeans",
                                    "bad_kmeans_shape", "more_blocks", "missing_subdir"])
def test_damaged_model_files_raise_one_clear_line(tok_root, tmp_path, damage):
    root = _broken_copy(tok_root, tmp_path)
    model_dir = root / FUNASR_SUBDIR
    if damage == "truncate_model":
        data = (model_dir / "model.pt").read_bytes()
        (model_dir / "model.pt").write_bytes(data[: len(data) // 3])
    elif damage == "missing_mvn":
        (model_dir / "am.mvn").unlink()
    elif damage == "garbage_onnx":
        (root / "speech_tokenizer_v1.onnx").write_bytes(b"not an onnx model")
    elif damage == "missing_kmeans":
        (root / "linguistic_tokenizer.npy").unlink()
    elif damage == "bad_kmeans_shape":
        np.save(root / "linguistic_tokenizer.npy", np.zeros((512, 64), np.float32))
    elif damage == "more_blocks":
        cfg = yaml.safe_load((model_dir / "config.yaml").read_text())
        cfg["encoder_conf"]["num_blocks"] += 1
        (model_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    elif damage == "missing_subdir":
        shutil.rmtree(root / "dengcunqin")
    with pytest.raises(ModelFilesError) as err:
        StepAudioTokenizer.load(root)
    message = str(err.value)
    assert "\n" not in message and str(root) in message


def test_loader_ignores_non_encoder_keys(tok_root, tmp_path):
    root = _broken_copy(tok_root, tmp_path)
    path = root / FUNASR_SUBDIR / "model.pt"
    state = torch.load(path, weights_only=True)
    torch.save({k: v for k, v in state.items() if k.startswith("encoder.")}, path)
    x = speech_like(1.0, 16000, seed=8)
    reference = StepAudioTokenizer.load(tok_root).vq02(x)
    np.testing.assert_array_equal(StepAudioTokenizer.load(root).vq02(x), reference)


def test_dual_tokens_are_read_only():
    tokens = DualTokens.from_codes(np.array([1, 2]), np.array([3, 4, 5]))
    with pytest.raises(ValueError):
        tokens.vq02[0] = 7
    assert tokens.mixed.tolist() == [1, 2, 1027, 1028, 1029]
