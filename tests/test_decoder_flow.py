"""CosyVoice flow: yaml-as-data, dual-codebook reshape, upstream goldens, CFG batching, loader errors, facade."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_close_rel
from safetensors.torch import load_file

from editx.decoder.config import DecoderConfig, TaggedDict, dump_yaml_data, load_yaml_data
from editx.decoder.flow import (
    FLOW_FILE,
    cosine_t_span,
    guided_velocity,
    load_flow,
    make_noise,
    to_model_key,
    to_official_key,
)
from editx.decoder.tokens import flow_rows, mixed_to_flow_tokens
from editx.errors import ModelFilesError, ValidationError
from editx.fixtures import decoder as decoder_fixture

GOLD = Path(__file__).parent / "golden" / "flow" / "flow_tiny.safetensors"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cosy_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("decoder")
    decoder_fixture.write(root, "tiny", seed=0)
    return decoder_fixture.cosyvoice_dir(root)


@pytest.fixture(scope="module")
def flow(cosy_dir):
    return load_flow(cosy_dir / FLOW_FILE, DecoderConfig.from_yaml(cosy_dir).flow)


@pytest.fixture(scope="module")
def gold():
    return load_file(GOLD)


def _rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours.float() - ref.float()).abs().max() / ref.float().abs().max())


def _mixed(rng: np.random.Generator, groups: int) -> np.ndarray:
    g = [np.concatenate([rng.integers(0, 1024, 2), rng.integers(1024, 5120, 3)]) for _ in range(groups)]
    return np.concatenate(g)


# ----------------------------------------------------------------------------- tokens

def test_reshape_matches_upstream_for_every_tail_length(gold):
    for n in range(1, 13):
        ours = mixed_to_flow_tokens(gold[f"reshape_in_{n}"].numpy())
        assert np.array_equal(ours, gold[f"reshape_out_{n}"].numpy()), n


def test_reshape_hand_cases():
    full = mixed_to_flow_tokens([5, 6, 1024, 2000, 5119])
    assert full.tolist() == [[5, 1025], [6, 2001], [1024, 5120]]
    # tail of 1: padded with [0, 1024, 1024, 1024]
    assert mixed_to_flow_tokens([7]).tolist() == [[7, 1025], [0, 1025], [1024, 1025]]
    # tail of 3: padded with [1024, 1024]
    assert mixed_to_flow_tokens([1, 2, 3000]).tolist() == [[1, 3001], [2, 1025], [1024, 1025]]
    assert mixed_to_flow_tokens(np.arange(12) + 1024).shape == (9, 2)
    assert [flow_rows(n) for n in (1, 5, 6, 10, 11)] == [3, 3, 6, 6, 9]


@pytest.mark.parametrize("bad", [[], [5120], [-1, 3], [[1, 2]], [1.5, 2.0]])
def test_reshape_rejects_bad_ids(bad):
    with pytest.raises(ValidationError):
        mixed_to_flow_tokens(np.asarray(bad))


# ----------------------------------------------------------------------------- yaml as data

HYPER = """
__set_seed1: !apply:torch.manual_seed [1986]
sample_rate: 24000
conf: {n_fft: 1920, hop: 480}
eps: 1e-06
half: !ref <sample_rate> // 2
hop: !ref <conf[hop]>
path: !ref <sample_rate>/x
pair: !tuple (1, 2)
get_it: !name:some.module.function
    k: 3
model: !new:pkg.mod.Model
    rate: !ref <sample_rate>
    act: !new:torch.nn.SiLU
    args_only: !new:pkg.Pos [1, 2]
"""


def test_yaml_tags_become_plain_data():
    data = load_yaml_data(HYPER)
    assert data["__set_seed1"] is None  # !apply: is never called
    assert data["half"] == 12000 and data["hop"] == 480 and data["path"] == "24000/x"
    assert isinstance(data["eps"], float) and data["eps"] == 1e-6  # YAML 1.2 float, as hyperpyyaml reads it
    model = data["model"]
    assert isinstance(model, TaggedDict) and model.target == "pkg.mod.Model"
    assert model == {"rate": 24000, "act": {}, "args_only": {"args": [1, 2]}}
    assert model["act"].tag == "!new:torch.nn.SiLU"
    assert data["get_it"].tag == "!name:some.module.function" and data["get_it"]["k"] == 3
    again = load_yaml_data(dump_yaml_data(data))
    assert again["model"].tag == model.tag and again["model"] == model


def test_yaml_errors_are_model_files_errors():
    with pytest.raises(ModelFilesError, match="nothing"):
        load_yaml_data("a: !ref <missing>")
    with pytest.raises(ModelFilesError, match="mapping"):
        load_yaml_data("- 1\n- 2")
    with pytest.raises(ModelFilesError, match="not valid YAML"):
        load_yaml_data("a: [1, 2")


def test_fixture_yaml_parses_to_flow_config(cosy_dir):
    cfg = DecoderConfig.from_yaml(cosy_dir)
    assert cfg.flow.encoder.up_stride == 2 and cfg.flow.cfg_rate == 0.7
    assert cfg.flow.embed_vocab_size >= 5121 and cfg.flow.estimator.in_channels == 320
    assert cfg.mel.hop_size == 480 and cfg.mel.sampling_rate == 24000
    assert "f0_predictor" in cfg.hift and cfg.hift.tag.endswith("HiFTGenerator")


@pytest.mark.parametrize("old,new,match", [
    ("normalize_before: true", "normalize_before: false", "normalize_before"),
    ("in_channels: 320", "in_channels: 240", "in_channels"),
    ("num_heads: 2", "num_heads: two", "num_heads"),
])
def test_unsupported_flow_config_is_rejected(cosy_dir, old, new, match):
    text = (cosy_dir / "cosyvoice.yaml").read_text()
    assert old in text
    with pytest.raises(ModelFilesError, match=match):
        DecoderConfig.from_data(load_yaml_data(text.replace(old, new)))


# ----------------------------------------------------------------------------- goldens

def test_flow_matches_upstream(flow, gold):
    prompt = torch.from_numpy(mixed_to_flow_tokens(gold["prompt_mixed"].numpy()))
    target = torch.from_numpy(mixed_to_flow_tokens(gold["target_mixed"].numpy()))
    mel, mu = flow.inference(prompt, gold["prompt_mel"], gold["spk"], target, n_steps=10,
                             noise=gold["noise"][None], return_mu=True)
    assert mu.shape == gold["mu"].shape and mel.shape == gold["mel"].shape
    assert _rel_err(mu, gold["mu"]) < 1e-4
    assert _rel_err(mel, gold["mel"]) < 1e-4


def test_cfg_batch_equals_separate_passes_and_upstream(flow, gold):
    mu = gold["mu"][None]
    spk = flow.speaker(gold["spk"][None])
    prompt_frames = 2 * flow_rows(len(gold["prompt_mixed"]))
    cond = torch.zeros_like(mu)
    cond[:, :, :prompt_frames] = torch.nn.functional.interpolate(
        gold["prompt_mel"].t()[None], size=prompt_frames, mode="nearest")
    x, t = gold["noise"][None], torch.tensor([0.3])
    with torch.inference_mode():
        zeros = torch.zeros_like
        batched = flow.estimator(torch.cat([x, x]), t, torch.cat([mu, zeros(mu)]), torch.cat([spk, zeros(spk)]),
                                 torch.cat([cond, zeros(cond)]))
        assert _rel_err(batched, gold["velocity_t03"]) < 1e-4
        v_c = flow.estimator(x, t, mu, spk, cond)
        v_u = flow.estimator(x, t, zeros(mu), zeros(spk), zeros(cond))
        guided = guided_velocity(flow.estimator, x, t, torch.cat([mu, zeros(mu)]), torch.cat([spk, zeros(spk)]),
                                 torch.cat([cond, zeros(cond)]), 0.7)
    assert_close_rel(guided, 1.7 * v_c - 0.7 * v_u)


def test_cosine_schedule():
    t = cosine_t_span(10)
    assert t[0] == 0 and abs(float(t[-1]) - 1) < 1e-6 and torch.all(t[1:] > t[:-1])
    assert torch.allclose(t, 1 - torch.cos(torch.linspace(0, 1, 11) * torch.pi / 2))


# ----------------------------------------------------------------------------- behaviour

@pytest.mark.parametrize("n_target", [5, 13, 21])
def test_mel_length_is_two_frames_per_token_row(flow, n_target):
    rng = np.random.default_rng(n_target)
    prompt = torch.from_numpy(mixed_to_flow_tokens(_mixed(rng, 4)))
    target = torch.from_numpy(mixed_to_flow_tokens(_mixed(rng, 5)[:n_target]))
    mel = flow.inference(prompt, torch.randn(17, 80), torch.randn(192), target, n_steps=2)
    assert mel.shape == (80, 2 * flow_rows(n_target)) and torch.isfinite(mel).all()


def test_default_noise_is_the_fixed_seeded_buffer(flow):
    rng = np.random.default_rng(3)
    prompt = torch.from_numpy(mixed_to_flow_tokens(_mixed(rng, 3)))
    target = torch.from_numpy(mixed_to_flow_tokens(_mixed(rng, 2)))
    mel, spk = torch.randn(20, 80), torch.randn(192)
    a = flow.inference(prompt, mel, spk, target, n_steps=3)
    b = flow.inference(prompt, mel, spk, target, n_steps=3, noise=make_noise(0))
    c = flow.inference(prompt, mel, spk, target, n_steps=3, noise=make_noise(1))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    with pytest.raises(ValidationError, match="noise buffer"):
        flow.inference(prompt, mel, spk, target, n_steps=1, noise=make_noise(0, frames=10))


# ----------------------------------------------------------------------------- loading

def test_key_map_round_trips_and_uses_official_names(flow):
    ours = list(flow.state_dict())
    official = {to_official_key(k) for k in ours}
    assert all(to_model_key(to_official_key(k)) == k for k in ours)
    for key in ("encoder.embed.out.0.weight", "encoder.up_embed.out.1.bias", "input_embedding.embedding.weight",
                "decoder.estimator.t_embedder.mlp.2.weight", "decoder.estimator.blocks.1.conv.block.6.bias",
                "decoder.estimator.blocks.0.adaLN_modulation.1.weight",
                "decoder.estimator.final_layer.adaLN_modulation.1.bias", "encoder.encoders.0.self_attn.pos_bias_u"):
        assert key in official, key


def test_small_preset_has_the_released_flow_layout():
    # the released flow.pt holds 605 tensors (~153M parameters, 307 MB in bf16)
    from editx.decoder.flow import CosyVoiceFlow

    cfg = DecoderConfig.from_data(load_yaml_data(decoder_fixture.yaml_text("small"))).flow
    with torch.device("meta"):
        model = CosyVoiceFlow(cfg)
    assert len(model.state_dict()) == 605
    assert 150e6 < sum(p.numel() for p in model.parameters()) < 156e6


def _save_variant(cosy_dir, tmp_path, edit):
    state = torch.load(cosy_dir / FLOW_FILE, weights_only=True)
    edit(state)
    path = tmp_path / FLOW_FILE
    torch.save(state, path)
    return path


def test_loader_names_missing_unexpected_and_misshapen_keys(cosy_dir, tmp_path):
    cfg = DecoderConfig.from_yaml(cosy_dir).flow
    path = _save_variant(cosy_dir, tmp_path, lambda s: s.pop("decoder.estimator.blocks.1.attn.q_norm.weight"))
    with pytest.raises(ModelFilesError, match=r"missing keys: decoder\.estimator\.blocks\.1\.attn\.q_norm\.weight"):
        load_flow(path, cfg)
    path = _save_variant(cosy_dir, tmp_path, lambda s: s.__setitem__("decoder.extra.weight", torch.zeros(1)))
    with pytest.raises(ModelFilesError, match=r"unexpected keys: decoder\.extra\.weight"):
        load_flow(path, cfg)
    path = _save_variant(cosy_dir, tmp_path, lambda s: s.__setitem__("encoder_proj.bias", torch.zeros(3)))
    with pytest.raises(ModelFilesError, match=r"encoder_proj\.bias \(3,\)"):
        load_flow(path, cfg)
    with pytest.raises(ModelFilesError, match="not found"):
        load_flow(tmp_path / "nope.pt", cfg)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelFilesError, match="cannot read .*junk.pt"):
        load_flow(tmp_path / "junk.pt", cfg)


def test_loaded_flow_is_inference_ready_in_bfloat16(cosy_dir):
    flow16 = load_flow(cosy_dir / FLOW_FILE, DecoderConfig.from_yaml(cosy_dir).flow, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in flow16.parameters())
    rng = np.random.default_rng(5)
    rows = torch.from_numpy(mixed_to_flow_tokens(_mixed(rng, 2)))
    mel = flow16.inference(rows, torch.randn(12, 80), torch.randn(192), rows, n_steps=2)
    assert mel.dtype == torch.bfloat16 and mel.shape == (80, 12) and torch.isfinite(mel.float()).all()


# ----------------------------------------------------------------------------- facade

_HAVE_DECODER_DEPS = all(importlib.util.find_spec(m) is not None for m in
                         ("editx.decoder.vocoder", "editx.decoder.speaker", "editx.audio.features"))


@pytest.mark.skipif(not _HAVE_DECODER_DEPS, reason="vocoder/speaker/audio modules not present")
def test_load_decoder_end_to_end(cosy_dir):
    from editx.decoder import load_decoder

    if not (cosy_dir / "hift.pt").is_file():
        pytest.skip("vocoder fixture not written")
    dec = load_decoder(cosy_dir, device="cpu", dtype="float32")
    rng = np.random.default_rng(7)
    prompt_wav = (0.1 * np.sin(np.arange(16000) * 2 * np.pi * 220 / 16000)).astype(np.float32)
    spk = dec.speaker_embedding(prompt_wav, 16000)
    mel = dec.prompt_features(prompt_wav, 16000)
    assert spk.shape == (192,) and mel.shape == (50, 80)
    target = _mixed(rng, 3)[:13]
    wav = dec.synthesize(_mixed(rng, 8), mel, spk, target, n_steps=2, generator=torch.Generator().manual_seed(0))
    assert wav.dtype == np.float32 and wav.shape == (2 * flow_rows(13) * 480,) and np.isfinite(wav).all()
    with pytest.raises(ValidationError):
        dec.synthesize(_mixed(rng, 2), mel, spk[:10], target, n_steps=1)
