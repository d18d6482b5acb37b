"""HiFT vocoder and CAM++ speaker embedding: upstream goldens, loader checks, shapes, streaming."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_close_rel
from safetensors.torch import load_file

from editx.decoder.speaker import SPEAKER_DIM, SpeakerEncoder, campplus_features
from editx.decoder.streaming import VocoderStream, vocode_chunk
from editx.decoder.vocoder import STREAM_MEL_CACHE, HiFTConfig, HiFTGenerator, fold_weight_norm, load_hift
from editx.errors import AudioError, ModelFilesError, ValidationError
from editx.fixtures.vocoder import hift_state_dict, hift_yaml_section, write_vocoder

GOLD = Path(__file__).parent / "golden" / "vocoder"
SPF = 480  # samples per mel frame at 24 kHz: 8*5*3 upsampling x hop 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cosy_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cosy")
    write_vocoder(d, "tiny", 0)
    return d


@pytest.fixture(scope="module")
def config():
    return HiFTConfig.from_yaml(hift_yaml_section("tiny"))


@pytest.fixture(scope="module")
def hift(cosy_dir, config):
    return load_hift(cosy_dir / "hift.pt", config)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# --- config -----------------------------------------------------------------------------------

def test_config_reads_yaml_section():
    cfg = HiFTConfig.from_yaml(hift_yaml_section("small"))
    assert cfg.base_channels == 512 and cfg.f0_cond_channels == 512
    assert cfg.sampling_rate == 24000 and cfg.upsample_rates == (8, 5, 3)
    assert (cfg.n_fft, cfg.hop_len) == (16, 4)
    assert cfg.resblock_dilation_sizes == ((1, 3, 5),) * 3
    assert cfg.samples_per_frame == SPF


def test_config_ignores_loader_metadata_and_rejects_unknown_args():
    section = hift_yaml_section("tiny")
    tagged = {"__class__": "stepvocoder.cosyvoice2.hifigan.generator.HiFTGenerator", **section}
    assert HiFTConfig.from_yaml(tagged) == HiFTConfig.from_yaml(section)
    with pytest.raises(ModelFilesError, match="bogus"):
        HiFTConfig.from_yaml({**section, "bogus": 1})
    with pytest.raises(ModelFilesError, match="f0_predictor"):
        HiFTConfig.from_yaml({k: v for k, v in section.items() if k != "f0_predictor"})
    with pytest.raises(ModelFilesError, match="upsample_rates"):
        HiFTConfig.from_yaml({**section, "upsample_rates": "eight"})


def test_small_preset_is_real_sized():
    with torch.device("meta"):
        model = HiFTGenerator(HiFTConfig.from_yaml(hift_yaml_section("small")))
    n = sum(p.numel() for p in model.parameters())
    assert 19e6 < n < 22e6  # the released hift.pt holds ~20.8M parameters


# --- upstream goldens -------------------------------------------------------------------------

def test_hift_matches_upstream(hift):
    g = load_file(GOLD / "hift_tiny.safetensors")
    f0, _ = hift.source(g["mel_a"])
    assert_close_rel(f0, g["f0_a"])
    assert (f0 < 10).any() and (f0 > 10).any()  # both voiced and unvoiced NSF branches are exercised
    audio, source = hift.inference_with_source(g["mel_a"], generator=_gen(1234))
    assert_close_rel(source, g["source_a"])
    assert_close_rel(audio, g["audio_a"])
    assert audio.shape == (1, 10 * SPF) and audio.abs().max() > 1e-3


def test_hift_cache_source_matches_upstream(hift):
    g = load_file(GOLD / "hift_tiny.safetensors")
    cache = g["source_a"][:, :, -STREAM_MEL_CACHE * SPF:]
    audio, source = hift.inference_with_source(g["mel_b"], cache, generator=_gen(99))
    torch.testing.assert_close(source[:, :, :cache.shape[-1]], cache, rtol=0, atol=0)
    assert_close_rel(source, g["source_b"])
    assert_close_rel(audio, g["audio_b"])


def test_hift_batch_matches_upstream(hift):
    g = load_file(GOLD / "hift_tiny.safetensors")
    audio = hift.inference(g["mel_c"], generator=_gen(5))
    assert_close_rel(audio, g["audio_c"])


def test_campplus_matches_upstream(cosy_dir):
    g = load_file(GOLD / "campplus_tiny.safetensors")
    enc = SpeakerEncoder.load(cosy_dir / "campplus.onnx")
    assert_close_rel(campplus_features(g["clip16"].numpy(), 16000), g["feat16"])
    e16 = enc.embed(g["clip16"].numpy(), 16000)
    assert e16.shape == (SPEAKER_DIM,) and e16.dtype == np.float32
    assert_close_rel(e16, g["embedding16"].numpy())
    assert_close_rel(enc.embed(g["clip24"].numpy(), 24000), g["embedding24"].numpy())


# --- behaviour --------------------------------------------------------------------------------

@pytest.mark.parametrize("frames", [1, 3, 17])
def test_output_length_is_frames_times_480(hift, frames):
    mel = torch.randn(2, 80, frames, generator=_gen(frames)) - 5
    audio, source = hift.inference_with_source(mel, generator=_gen(0))
    assert audio.shape == (2, frames * SPF) and source.shape == (2, 1, frames * SPF)
    assert audio.dtype == torch.float32 and torch.isfinite(audio).all()


def test_seeded_generator_reproduces_and_seeds_differ(hift):
    mel = torch.randn(1, 80, 6, generator=_gen(3)) - 5
    a = hift.inference(mel, generator=_gen(11))
    assert torch.equal(a, hift.inference(mel, generator=_gen(11)))
    assert not torch.equal(a, hift.inference(mel, generator=_gen(12)))


def test_audio_limit_clamps_output(cosy_dir, config):
    loud = load_hift(cosy_dir / "hift.pt", config)
    with torch.no_grad():
        loud.conv_post.bias[: config.n_fft // 2 + 1] += 8.0  # spectral magnitudes ~e^8 before the clip
    mel = torch.randn(1, 80, 4, generator=_gen(0)) - 5
    audio = loud.inference(mel, generator=_gen(0))
    assert audio.abs().max().item() == pytest.approx(config.audio_limit, abs=1e-7)
    loud.cfg = dataclasses.replace(config, audio_limit=0.2)
    quiet = loud.inference(mel, generator=_gen(0))
    assert quiet.abs().max().item() == pytest.approx(0.2, abs=1e-7)
    assert (quiet.abs() >= 0.2 - 1e-7).float().mean() > 0.05
    torch.testing.assert_close(quiet, audio.clamp(-0.2, 0.2))


def test_bad_mel_and_cache_are_rejected(hift):
    with pytest.raises(ValidationError, match="mel"):
        hift.inference(torch.zeros(1, 79, 4))
    with pytest.raises(ValidationError, match="cache_source"):
        hift.inference_with_source(torch.zeros(1, 80, 2), torch.zeros(1, 1, 3 * SPF))


def test_bfloat16_runs_close_to_float32(cosy_dir, config, hift):
    half = load_hift(cosy_dir / "hift.pt", config, dtype=torch.bfloat16)
    assert half.conv_pre.weight.dtype == torch.bfloat16 and half.stft_window.dtype == torch.float32
    mel = torch.randn(1, 80, 5, generator=_gen(4)) - 5
    a16 = half.inference(mel.bfloat16(), generator=_gen(1))
    a32 = hift.inference(mel, generator=_gen(1))
    assert a16.dtype == torch.float32 and torch.isfinite(a16).all()
    assert (a16 - a32).abs().max() < 0.2 * a32.abs().max() + 1e-3


def test_streaming_chunks_cover_the_whole_mel(hift):
    mel = torch.randn(1, 80, 40, generator=_gen(8)) - 5
    state, pieces = VocoderStream.start(), []
    for i, (lo, hi) in enumerate([(0, 15), (15, 27), (27, 40)]):
        piece, state = vocode_chunk(hift, mel[..., lo:hi], state, last=hi == 40, generator=_gen(i))
        pieces.append(piece)
    assert sum(p.shape[-1] for p in pieces) == 40 * SPF
    overlap = STREAM_MEL_CACHE * SPF
    first = hift.inference(mel[..., :15], generator=_gen(0))
    torch.testing.assert_close(pieces[0], first[:, :-overlap])  # first chunk: held-back tail only
    assert state.mel.shape[-1] == STREAM_MEL_CACHE and state.source.shape[-1] == overlap


# --- loader -----------------------------------------------------------------------------------

def test_legacy_weight_norm_keys_load_identically(tmp_path, cosy_dir, config, hift):
    state = torch.load(cosy_dir / "hift.pt", weights_only=True)
    legacy = {k.replace(".parametrizations.weight.original0", ".weight_g")
               .replace(".parametrizations.weight.original1", ".weight_v"): v for k, v in state.items()}
    assert any(k.endswith(".weight_g") for k in legacy)
    torch.save(legacy, tmp_path / "hift.pt")
    other = load_hift(tmp_path / "hift.pt", config)
    mel = torch.randn(1, 80, 5, generator=_gen(2)) - 5
    assert torch.equal(other.inference(mel, generator=_gen(0)), hift.inference(mel, generator=_gen(0)))


@pytest.mark.parametrize("make", [
    lambda: torch.nn.Conv1d(6, 4, 5, padding=2),
    lambda: torch.nn.ConvTranspose1d(6, 4, 11, 5, padding=3),
])
def test_weight_norm_fold_equals_torch_parametrization(make):
    torch.manual_seed(0)
    ref = torch.nn.utils.parametrizations.weight_norm(make())
    with torch.no_grad():
        ref.parametrizations.weight.original0.mul_(1.7)  # g != ||v||: the fold must use g
    state = {f"m.{k}": v.detach() for k, v in ref.state_dict().items()}
    folded = fold_weight_norm(state, ["m"])
    plain = make()
    plain.load_state_dict({k[2:]: v for k, v in folded.items()})
    x = torch.randn(2, 6, 9)
    assert_close_rel(plain(x), ref(x))


def test_loader_names_missing_and_unexpected_keys(tmp_path, config):
    state = hift_state_dict(config, 0)
    del state["m_source.l_linear.bias"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "hift.pt")
    with pytest.raises(ModelFilesError, match=r"m_source\.l_linear\.bias.*extra\.weight"):
        load_hift(tmp_path / "hift.pt", config)


def test_loader_reports_shape_mismatch_and_broken_pairs(tmp_path, config):
    torch.save(hift_state_dict(config, 0), tmp_path / "hift.pt")
    with pytest.raises(ModelFilesError, match="conv_pre.weight"):
        load_hift(tmp_path / "hift.pt", dataclasses.replace(config, base_channels=64))
    state = hift_state_dict(config, 0)
    del state["conv_post.parametrizations.weight.original0"]
    torch.save(state, tmp_path / "hift.pt")
    with pytest.raises(ModelFilesError, match="conv_post"):
        load_hift(tmp_path / "hift.pt", config)


def test_loader_rejects_missing_and_garbage_files(tmp_path, config):
    with pytest.raises(ModelFilesError, match="not found"):
        load_hift(tmp_path / "nope.pt", config)
    (tmp_path / "hift.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelFilesError, match="cannot read"):
        load_hift(tmp_path / "hift.pt", config)


# --- CAM++ ------------------------------------------------------------------------------------

def test_campplus_fixture_has_dynamic_length(cosy_dir):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(cosy_dir / "campplus.onnx"), providers=["CPUExecutionProvider"])
    (inp,), (_out,) = sess.get_inputs(), sess.get_outputs()
    assert inp.type == "tensor(float)" and len(inp.shape) == 3 and inp.shape[2] == 80
    assert not isinstance(inp.shape[1], int)  # symbolic T
    for frames in (7, 300):
        emb = sess.run(None, {inp.name: np.zeros((1, frames, 80), np.float32)})[0]
        assert emb.shape == (1, SPEAKER_DIM)


def test_speaker_encoder_errors(tmp_path, cosy_dir):
    with pytest.raises(ModelFilesError, match="not found"):
        SpeakerEncoder.load(tmp_path / "campplus.onnx")
    (tmp_path / "campplus.onnx").write_bytes(b"junk")
    with pytest.raises(ModelFilesError, match="cannot load"):
        SpeakerEncoder.load(tmp_path / "campplus.onnx")
    enc = SpeakerEncoder.load(cosy_dir / "campplus.onnx")
    with pytest.raises(AudioError, match="too short"):
        enc.embed(np.zeros(100, np.float32), 16000)
    with pytest.raises(AudioError, match="NaN"):
        enc.embed(np.full(16000, np.nan, np.float32), 16000)
    with pytest.raises(AudioError, match="mono"):
        enc.embed(np.zeros((2, 16000), np.float32), 16000)
