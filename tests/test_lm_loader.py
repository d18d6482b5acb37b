"""Step1 loader: official layouts load, broken ones fail with one clear ModelFilesError line,
quantized variants load, and loading does not hold a second copy of the weights."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from editx.config import SamplingConfig
from editx.errors import BackendUnsupportedError, ModelFilesError, ValidationError
from editx.fixtures import lm as lm_fixture
from editx.lm.generate import generate, sequence_logits
from editx.lm.loader import apply_quantization, load_step1
from editx.lm.model import Step1Config, Step1ForCausalLM, checkpoint_keys

CFG = Step1Config.from_name("tiny")
RELEASE = Path(__file__).parents[1] / "editx" / "assets" / "release"
PROMPT = [1, 4, 100, 200, 300, 3, 4] + [65536 + i for i in range(0, 200, 13)]


@pytest.fixture(scope="module")
def state():
    return lm_fixture.random_state(CFG, 0)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, state):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("lm_ref")
    lm_fixture.write_checkpoint(root, CFG, state)
    return sequence_logits(load_step1(root), PROMPT)


def _write(tmp_path, state, cfg=CFG, **kw):
    lm_fixture.write_checkpoint(tmp_path, cfg, state, **kw)
    return tmp_path


def _error(tmp_path) -> str:
    with pytest.raises(ModelFilesError) as info:
        load_step1(tmp_path)
    msg = str(info.value)
    assert "\n" not in msg and msg
    return msg


def test_fixture_writes_official_layout(tmp_path):
    lm_fixture.write(tmp_path, "tiny", 0)
    d = tmp_path / "Step-Audio-EditX"
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["model_type"] == "step1" and cfg["architectures"] == ["Step1ForCausalLM"]
    assert cfg["vocab_size"] == 74752 and "tie_word_embeddings" not in cfg  # as released
    released = json.loads((RELEASE / "step-audio-editx.config.json").read_text())
    assert list(cfg) == list(released)  # the release's keys, in its order, at tiny sizes
    assert cfg["eos_token_id"] == 3 and cfg["bos_token_id"] == 1 and cfg["pad_token_id"] == 0
    index = json.loads((d / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(checkpoint_keys(CFG))
    assert set(index["weight_map"].values()) == {"model-00001.safetensors"}
    assert len(index["weight_map"]) == 2 + 9 * CFG.num_hidden_layers + 1  # 291 for the 32-layer release


def test_sharded_and_single_file_load_the_same(tmp_path, state, reference):
    sharded = _write(tmp_path / "sharded", state, shards=3)
    assert len(list(sharded.glob("model-0000*.safetensors"))) == 3
    torch.testing.assert_close(sequence_logits(load_step1(sharded), PROMPT), reference, atol=0, rtol=0)
    single = tmp_path / "single"
    single.mkdir()
    from safetensors.torch import save_file

    save_file({k: v.to(torch.bfloat16) for k, v in state.items()}, str(single / "model.safetensors"))
    shutil.copy(sharded / "config.json", single / "config.json")
    torch.testing.assert_close(sequence_logits(load_step1(single), PROMPT), reference, atol=0, rtol=0)


def test_missing_shard(tmp_path, state):
    d = _write(tmp_path, state, shards=2)
    (d / "model-00002.safetensors").unlink()
    assert "model-00002.safetensors" in _error(d)


def test_missing_and_unexpected_keys(tmp_path, state):
    partial = dict(state)
    del partial["model.layers.1.mlp.up_proj.weight"]
    assert "model.layers.1.mlp.up_proj.weight" in _error(_write(tmp_path / "missing", partial))
    extra = dict(state, **{"model.layers.0.self_attn.rotary.weight": torch.zeros(3)})
    assert "model.layers.0.self_attn.rotary.weight" in _error(_write(tmp_path / "extra", extra))


def test_index_lists_key_absent_from_shard(tmp_path, state):
    d = _write(tmp_path, state)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.layers.0.mlp.extra.weight"] = "model-00001.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    assert "model.layers.0.mlp.extra.weight" in _error(d)


def test_shape_mismatch_and_truncated_file(tmp_path, state):
    bad = dict(state, **{"model.norm.weight": torch.ones(CFG.hidden_size + 1)})
    assert "model.norm.weight" in _error(_write(tmp_path / "shape", bad))
    d = _write(tmp_path / "trunc", state)
    shard = d / "model-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-1000])
    assert "re-download" in _error(d)


@pytest.mark.parametrize("mutate, needle", [
    (lambda c: c.update(model_type="llama", architectures=["LlamaForCausalLM"]), "not a Step1 config"),
    (lambda c: c.pop("num_attention_groups"), "num_attention_groups"),
    (lambda c: c.update(num_attention_groups=3), "divisible"),
    (lambda c: c.pop("rms_norm_eps"), "rms_norm_eps"),
    (lambda c: c.pop("max_seq_len"), "max_seq_len"),
    (lambda c: c.update(tie_word_embeddings="no"), "tie_word_embeddings"),
    (lambda c: c.update(hidden_size=64.5), "hidden_size"),
    (lambda c: c.update(hidden_size=128), "config.json implies"),  # config disagrees with the weights
])
def test_bad_config(tmp_path, state, mutate, needle):
    d = _write(tmp_path, state)
    cfg = json.loads((d / "config.json").read_text())
    mutate(cfg)
    (d / "config.json").write_text(json.dumps(cfg))
    assert needle in _error(d)


def test_missing_or_broken_config_and_weights(tmp_path, state):
    assert "config.json" in _error(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    assert "config.json" in _error(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(CFG.to_hf_config()))
    assert "model.safetensors" in _error(tmp_path)


def test_released_config_parses_untied():
    cfg = Step1Config.from_hf_config(json.loads((RELEASE / "step-audio-editx.config.json").read_text()))
    assert cfg == Step1Config.from_name("step-audio-editx")
    assert cfg.tie_word_embeddings is False and len(checkpoint_keys(cfg)) == 291


def test_missing_tie_key_uses_the_checkpoints_head(tmp_path, state):
    # The release's config.json has no tie key: the head must be the checkpoint's lm_head.weight.
    d = _write(tmp_path, state)
    assert "tie_word_embeddings" not in json.loads((d / "config.json").read_text())
    model = load_step1(d)
    head = state["lm_head.weight"].to(torch.bfloat16).float()
    torch.testing.assert_close(model.lm_head.weight, head, atol=0, rtol=0)
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)


def test_explicit_tie_follows_the_config(tmp_path, state):
    cfg = CFG.with_(tie_word_embeddings=True)
    tied_state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    model = load_step1(_write(tmp_path, tied_state, cfg=cfg))
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_tie_true_next_to_a_head_is_refused(tmp_path, state):
    d = _write(tmp_path, state)
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(dict(cfg, tie_word_embeddings=True)))
    msg = _error(d)
    assert "lm_head.weight" in msg and "tie_word_embeddings" in msg and "model-00001.safetensors" in msg


def test_no_head_without_an_explicit_tie_is_incomplete(tmp_path, state):
    msg = _error(_write(tmp_path, {k: v for k, v in state.items() if k != "lm_head.weight"}))
    assert "lm_head.weight" in msg and "re-download" in msg


def test_bfloat16_load_close_to_fp32(tmp_path, state, reference):
    model = load_step1(_write(tmp_path, state), dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    logits = sequence_logits(model, PROMPT)
    assert torch.nn.functional.cosine_similarity(logits, reference, dim=-1).min() > 0.99


def test_int8_dynamic_quantization_loads_and_generates(tmp_path, state, reference):
    model = load_step1(_write(tmp_path, state), quantize="int8")
    assert not isinstance(model.lm_head, torch.nn.Linear) or type(model.lm_head) is not torch.nn.Linear
    logits = sequence_logits(model, PROMPT)
    assert torch.nn.functional.cosine_similarity(logits, reference, dim=-1).min() > 0.98
    out = generate(model, [PROMPT], sampling=SamplingConfig(temperature=0.0, max_length=len(PROMPT) + 12))[0]
    assert len(out) == 11 and all(65536 <= t < 65536 + 5120 for t in out)


def test_quantization_switch_errors():
    model = Step1ForCausalLM(CFG)
    with pytest.raises(ValidationError):
        apply_quantization(model, "int8", torch.device("cuda"))
    with pytest.raises(ValidationError, match="CUDA or the CPU"):
        apply_quantization(model, "bnb4", torch.device("meta"))
    with pytest.raises(ValidationError):
        apply_quantization(model, "awq", torch.device("cpu"))
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        with pytest.raises(BackendUnsupportedError, match="bitsandbytes"):
            apply_quantization(model, "bnb8", torch.device("cuda"))


def test_loading_keeps_one_copy_of_the_weights(tmp_path):
    # ~160 MB of bf16 weights loaded as bf16: peak RSS growth must stay near that, not twice it.
    cfg = CFG.with_(hidden_size=512, intermediate_size=512, num_attention_heads=8, num_attention_groups=4)
    zeros = {}
    with torch.device("meta"):
        shapes = {k: p.shape for k, p in Step1ForCausalLM(cfg).named_parameters()}
    for key in checkpoint_keys(cfg):
        zeros[key] = torch.zeros(shapes[key], dtype=torch.bfloat16)
    _write(tmp_path, zeros, cfg=cfg)
    weight_bytes = sum(t.numel() * 2 for t in zeros.values())
    del zeros
    script = textwrap.dedent(f"""
        import torch
        from editx.lm.loader import load_step1

        def status(field):  # kB values from /proc (ru_maxrss would carry the parent's peak over fork)
            for line in open("/proc/self/status"):
                if line.startswith(field):
                    return int(line.split()[1]) * 1024

        torch.zeros(1)
        before = status("VmHWM:")
        model = load_step1({str(tmp_path)!r}, dtype=torch.bfloat16)
        print(status("VmHWM:") - before)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    growth = int(out.stdout.strip().splitlines()[-1])
    assert growth < 1.3 * weight_bytes, (growth, weight_bytes)
    assert growth > 0.8 * weight_bytes  # the weights really were loaded
