"""Step1 LM against the Hugging Face reference: logits, greedy and seeded sampling on the tiny fixture.

Goldens in tests/golden/lm/ were made by upstream's modeling_step1.py under transformers 4.53.3 on
the same fixture (see tests/golden/lm/README.md).
"""

from __future__ import annotations

import pytest
import torch
from conftest import GOLDEN, assert_close_rel
from safetensors.torch import load_file

from editx.config import SamplingConfig
from editx.fixtures import lm as lm_fixture
from editx.lm.generate import generate, sequence_logits
from editx.lm.loader import load_step1


@pytest.fixture(scope="module")
def golden():
    return load_file(str(GOLDEN / "lm" / "step1_tiny.safetensors"))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("lm_golden")
    lm_fixture.write(root, "tiny", 0)
    return load_step1(root / lm_fixture.LM_DIR)


@pytest.mark.parametrize("name", ["a", "b"])
def test_logits_match_reference(model, golden, name):
    prompt = golden[f"prompt_{name}"].tolist()
    logits = sequence_logits(model, prompt)  # (T, V); prompt b spans two prefill chunks
    ref = golden[f"logits_{name}"]
    ours = logits[-ref.shape[0]:, golden["vocab_idx"]]
    assert_close_rel(ours, ref)
    assert torch.equal(logits.argmax(-1), golden[f"argmax_{name}"])
    top = torch.topk(logits[-1], 64)
    assert_close_rel(top.values, golden[f"last_logits_top_{name}"])
    assert torch.equal(top.indices, golden[f"last_logits_topidx_{name}"])


@pytest.mark.parametrize("name", ["a", "b"])
def test_greedy_matches_reference_token_for_token(model, golden, name):
    prompt = golden[f"prompt_{name}"].tolist()
    sampling = SamplingConfig(temperature=0.0, max_length=len(prompt) + 41)
    out = generate(model, [prompt], sampling=sampling)[0]
    assert out == golden[f"greedy_{name}"].tolist()
    # upstream slices off the last generated token even though no EOS came
    assert out == golden[f"greedy_full_{name}"].tolist()[:-1]


@pytest.mark.parametrize("name", ["a", "b"])
@pytest.mark.parametrize("seed", [1234, 99])
def test_seeded_sampling_matches_reference(model, golden, name, seed):
    # Upstream settings: temperature 0.7, HF's default top_k 50, repetition-aware processor.
    prompt = golden[f"prompt_{name}"].tolist()
    sampling = SamplingConfig(temperature=0.7, top_k=50, max_length=len(prompt) + 41)
    out = generate(model, [prompt], sampling=sampling, generators=[torch.Generator().manual_seed(seed)])[0]
    assert out == golden[f"sample{seed}_{name}"].tolist()


@pytest.mark.parametrize("name", ["a", "b"])
def test_sampling_until_eos_matches_reference(model, golden, name):
    prompt = golden[f"prompt_{name}"].tolist()
    full = golden[f"sample7long_full_{name}"].tolist()
    assert full[-1] == 3  # the reference run ended on EOS
    sampling = SamplingConfig(temperature=0.7, top_k=50, max_length=len(prompt) + 600)
    out = generate(model, [prompt], sampling=sampling, generators=[torch.Generator().manual_seed(7)])[0]
    assert out == full[:-1]


def test_repetition_rule_matches_reference_processor(golden):
    from editx.lm.sampling import banned_repeat

    ids, banned = golden["rep_input_ids"], golden["rep_banned"]
    assert (banned >= 0).any() and (banned < 0).any()
    for row, ban in zip(ids.tolist(), banned.tolist()):
        assert banned_repeat(row) == (None if ban < 0 else ban)
        assert banned_repeat(row[:9]) is None  # under a full window the reference left scores alone
