"""Full-size key and shape checks against the released files, without their weights.

Our modules are built at the release's sizes on the meta device (no memory) and the released key
lists (editx/assets/release/, see its README) go through the same key maps and checks the loaders run
on real files, both ways: every released key lands in a parameter of the same shape, and every
parameter is covered.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from editx.errors import ModelFilesError

RELEASE = Path(__file__).parents[1] / "editx" / "assets" / "release"


def _keys(name: str) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v) for k, v in json.loads((RELEASE / f"{name}.keys.json").read_text()).items()}


def _meta(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, dtype=torch.float32, device="meta") for k, s in shapes.items()}


@pytest.fixture(scope="module")
def decoder_config(tmp_path_factory):
    from editx.decoder.config import DecoderConfig

    return DecoderConfig.from_yaml(RELEASE / "cosyvoice.head.yaml")


@pytest.fixture(scope="module")
def flow(decoder_config):
    from editx.decoder.flow import CosyVoiceFlow

    with torch.device("meta"):
        return CosyVoiceFlow(decoder_config.flow)


def test_flow_pt_maps_both_ways(flow):
    from editx.decoder.flow import load_flow_state, to_model_key, to_official_key

    released = _keys("flow")
    assert len(released) == 605
    ours = {k: tuple(t.shape) for k, t in flow.state_dict().items()}
    assert {to_model_key(k): s for k, s in released.items()} == ours
    assert {to_official_key(k) for k in ours} == set(released)
    assert sum(p.numel() for p in flow.parameters()) == sum(torch.Size(s).numel() for s in released.values())
    load_flow_state(flow, _meta(released), source="flow.pt")  # the loader's own checks pass


@pytest.mark.parametrize("change", ["drop", "extra", "shape"])
def test_flow_pt_deviations_are_named(flow, change):
    from editx.decoder.flow import load_flow_state

    released = _keys("flow")
    key = "decoder.estimator.blocks.3.adaLN_modulation.1.weight"
    if change == "drop":
        del released[key]
    elif change == "extra":
        released["decoder.estimator.blocks.3.extra.weight"] = (4,)
        key = "decoder.estimator.blocks.3.extra.weight"
    else:
        released[key] = released[key][:-1] + (released[key][-1] + 1,)
    with pytest.raises(ModelFilesError, match=key.replace(".", r"\.")):
        load_flow_state(flow, _meta(released), source="flow.pt")


def test_hift_pt_maps_both_ways(decoder_config):
    from editx.decoder.vocoder import HiFTConfig, HiFTGenerator, check_hift_state

    released = _keys("hift")
    assert len(released) == 328
    with torch.device("meta"):
        hift = HiFTGenerator(HiFTConfig.from_yaml(dict(decoder_config.hift)))
    folded = check_hift_state(hift, _meta(released))
    assert {k: tuple(v.shape) for k, v in folded.items()} == {k: tuple(v.shape) for k, v in hift.state_dict().items()}
    assert sum("parametrizations" in k for k in released) == 2 * len(hift.weight_norm_targets())
    del released["resblocks.4.convs2.1.parametrizations.weight.original1"]
    with pytest.raises(ModelFilesError, match="resblocks.4.convs2.1"):
        check_hift_state(hift, _meta(released))


def _release_paraformer():
    from editx.fixtures.tokenizer import _Preset, paraformer_config
    from editx.tokenizer.paraformer import ParaformerConfig

    # REFERENCES §2: SANMEncoderChunkOpt, 50 blocks, 512 wide, 4 heads, ffn 2048, FSMN kernel 11.
    p = _Preset(dim=512, heads=4, ffn=2048, blocks=50, decoder_blocks=16, vocab=8501,
                s3_dim=1280, s3_heads=20, s3_blocks=6, s3_ffn=5120)
    return ParaformerConfig.from_dict(paraformer_config(p))


def test_paraformer_encoder_maps_both_ways():
    from editx.tokenizer.paraformer import build_encoder

    released = _keys("para")
    assert len(released) == 652 and all(k.startswith("encoder.") for k in released)
    cfg = _release_paraformer()
    state = _meta(released)
    state["decoder.embed.0.weight"] = torch.empty(8501, 512, device="meta")  # skipped by rule
    state["predictor.cif_output.bias"] = torch.empty(1, device="meta")
    encoder = build_encoder(cfg, state, source=Path("model.pt"), device="meta")
    assert {"encoder." + k: tuple(v.shape) for k, v in encoder.state_dict().items()} == released
    state["ctc.ctc_lo.weight"] = torch.empty(8501, 512, device="meta")  # not known: never dropped silently
    with pytest.raises(ModelFilesError, match="ctc.ctc_lo.weight"):
        build_encoder(cfg, state, source=Path("model.pt"), device="meta")


def _lm_release_keys(cfg) -> dict[str, tuple[int, ...]]:
    """The 291 released LM keys from REFERENCES §5 (written out here, not taken from our key map)."""
    h, kv, ffn, vocab = cfg["hidden_size"], 256, cfg["intermediate_size"], cfg["vocab_size"]
    keys = {"model.embed_tokens.weight": (vocab, h), "model.norm.weight": (h,), "lm_head.weight": (vocab, h)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        keys.update({p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
                     p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
                     p + "mlp.gate_proj.weight": (ffn, h), p + "mlp.up_proj.weight": (ffn, h),
                     p + "mlp.down_proj.weight": (h, ffn), p + "input_layernorm.weight": (h,),
                     p + "post_attention_layernorm.weight": (h,)})
    return keys


def test_lm_from_released_config_json():
    from editx.lm.loader import plan_state
    from editx.lm.model import Step1Config, Step1ForCausalLM

    data = json.loads((RELEASE / "step-audio-editx.config.json").read_text())
    cfg = Step1Config.from_hf_config(data)
    released = _lm_release_keys(data)
    assert len(released) == 291
    with torch.device("meta"):
        model = Step1ForCausalLM(cfg)
    assert {k: tuple(p.shape) for k, p in model.named_parameters()} == released
    header = {k: {"dtype": "BF16", "shape": list(s), "data_offsets": [0, 0]} for k, s in released.items()}
    shard = Path("model-00001.safetensors")
    plan = plan_state(cfg, {shard: (header, sorted(released))})
    assert sorted(plan[shard]) == sorted(released)  # lm_head.weight included: the head stays untied
    header.pop("lm_head.weight")
    with pytest.raises(ModelFilesError, match="lm_head.weight"):
        plan_state(cfg, {shard: (header, None)})
