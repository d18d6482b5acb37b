"""bitsandbytes 8-bit (LLM.int8) and NF4 LM weights on the CPU (bitsandbytes >= 0.50): load, bytes,
logits and greedy tokens against the unquantized model on the tiny fixture."""

from __future__ import annotations

import warnings

import pytest
import torch

from editx.config import SamplingConfig
from editx.fixtures import lm as lm_fixture
from editx.lm.generate import generate, sequence_logits
from editx.lm.loader import load_step1
from editx.lm.throughput import bytes_per_token

bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (pip install 'editx[dev]')")

# Bounds: 8-bit rows keep ~1/254 of each row's range (outlier columns stay in float), so logits move
# by well under 2% (measured 0.3%); NF4 keeps 16 levels per 64-weight block (measured 4.2%).
BOUNDS = {"bnb8": (0.02, 16), "bnb4": (0.10, 1)}  # (max relative logit error, greedy tokens that agree)


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("lm_q")
    lm_fixture.write(root, "tiny", 0)
    return root / lm_fixture.LM_DIR


def _prompt() -> list[int]:
    g = torch.Generator().manual_seed(1)
    return ([1, 4] + torch.randint(100, 60000, (20,), generator=g).tolist() + [3, 4]
            + (65536 + torch.randint(0, 5120, (30,), generator=g)).tolist())


@pytest.mark.parametrize("mode", ["bnb8", "bnb4"])
def test_bnb_on_cpu_loads_shrinks_and_keeps_tokens(lm_dir, mode):
    ref = load_step1(lm_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bitsandbytes warns about its CPU fallbacks
        q = load_step1(lm_dir, quantize=mode)
        prompt = _prompt()
        want, got = sequence_logits(ref, prompt), sequence_logits(q, prompt)
        greedy = SamplingConfig(temperature=0.0, max_length=len(prompt) + 33, repetition_window=0)
        tokens_ref, tokens_q = generate(ref, [prompt], sampling=greedy)[0], generate(q, [prompt], sampling=greedy)[0]
    layer = q.model.layers[0].mlp.up_proj
    assert type(layer).__name__ == ("Linear8bitLt" if mode == "bnb8" else "Linear4bit")
    assert layer.weight.dtype == (torch.int8 if mode == "bnb8" else torch.uint8)
    assert type(q.lm_head) is torch.nn.Linear  # kept in full precision, as HF's bitsandbytes path does
    # the per-token bytes of the quantized Linear layers are 1/4 (8-bit) or 1/8 (4-bit) of float32's
    linear_fp32 = sum(m.weight.numel() * 4 for m in ref.model.layers.modules() if isinstance(m, torch.nn.Linear))
    saved = bytes_per_token(ref, 64) - bytes_per_token(q, 64)
    assert saved == pytest.approx(linear_fp32 * (0.75 if mode == "bnb8" else 0.875), rel=0.01)
    max_err, agree = BOUNDS[mode]
    rel = ((got - want).norm(dim=-1) / want.norm(dim=-1)).max().item()
    assert rel < max_err
    assert tokens_q[:agree] == tokens_ref[:agree]
