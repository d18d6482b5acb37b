"""The throughput comparator is honest: the HF-style loop decodes the same tokens as ours, and the
bandwidth arithmetic counts exactly the weights a decode step reads."""

from __future__ import annotations

import pytest
import torch

from editx.fixtures import lm as lm_fixture
from editx.lm.loader import load_step1
from editx.lm.throughput import bytes_per_token, check_same_greedy, compare, memcpy_bandwidth


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("lm_tp")
    lm_fixture.write(root, "tiny", 0)
    return load_step1(root / lm_fixture.LM_DIR)


def test_hf_style_loop_matches_ours(model):
    prompt = [1, 4, 500, 600, 3, 4] + [65536 + i for i in range(0, 400, 3)]
    assert check_same_greedy(model, prompt, new_tokens=6)


def test_bytes_per_token_counts_weights_and_cache(model):
    cfg = model.config
    H, F, V, L = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_hidden_layers
    per_layer = H * H * 2 + 2 * H * cfg.kv_dim + 3 * H * F + 2 * H
    expected = 4 * (L * per_layer + H + V * H + H + 2 * L * cfg.kv_dim * 100)
    assert bytes_per_token(model, 100) == expected


def test_compare_reports_everything(model):
    report = compare(model, prompt_len=64, new_tokens=4, batch=2)
    assert report["same_greedy_tokens"] is True
    for key in ("ours", "ours_batched", "hf_style", "ours_all_threads"):
        assert report[key]["decode_tok_s"] > 0 and report[key]["prefill_s"] > 0
    floor = report["weight_floor"]
    assert floor["steps"] == 4 and floor["weights_ms"] > 0 and floor["step_ms"] > 0
    assert floor["fraction"] == pytest.approx(floor["weights_ms"] / floor["step_ms"])
    assert report["bandwidth_bound_tok_s"] > 0 and memcpy_bandwidth(2**20, repeats=1) > 0
