"""The CPU decode step's fast path (issue 22): the cache's precomputed ALiBi row equals the full bias
bit for bit, and narrowing the small ops to one intra-op thread changes neither the numbers nor the
caller's thread count."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close_rel

from editx.fixtures import lm as lm_fixture
from editx.lm import threads
from editx.lm.generate import decode_one, prefill, sequence_logits
from editx.lm.kv_cache import KVCache
from editx.lm.loader import load_step1
from editx.lm.model import alibi_bias, alibi_slopes


@pytest.fixture(scope="module")
def lm_tiny_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_step")
    lm_fixture.write(root, "tiny", 0)
    return load_step1(root / lm_fixture.LM_DIR)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_bias_equals_full_alibi_bias(dtype):
    cache = KVCache(1, 4, 64, 2, 8)
    slopes = alibi_slopes(12)  # 8 power-of-two slopes + 4 interleaved ones
    # ragged rows: the longest row fills kv_len, shorter ones need -inf above their position;
    # the same cache serves calls of other batch sizes and lengths (buffer reuse)
    for positions, kv_len in (([63, 10, 0, 40], 64), ([5], 6), ([0, 2], 3), ([30, 31], 32)):
        got = cache.decode_bias(slopes, positions, kv_len, dtype)
        want = alibi_bias(slopes, torch.tensor(positions)[:, None], kv_len, dtype)
        assert got.dtype == dtype and got.shape == want.shape == (len(positions), 12, 1, kv_len)
        assert torch.equal(got, want)


def test_narrow_restores_threads_and_widens_only_inside():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = {}
        with threads.narrow():
            seen["narrow"] = torch.get_num_threads()
            with threads.wide():
                seen["wide"] = torch.get_num_threads()
            seen["after_wide"] = torch.get_num_threads()
            with threads.narrow():  # nested: no change
                seen["nested"] = torch.get_num_threads()
        assert seen == {"narrow": 1, "wide": 2, "after_wide": 1, "nested": 1}
        assert torch.get_num_threads() == 2
        with threads.narrow(enabled=False):
            assert torch.get_num_threads() == 2
        with threads.wide():  # outside narrow: untouched
            assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), threads.narrow():
            raise RuntimeError("a failing step still restores the count")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_narrowed_decode_equals_wide_decode_and_full_sequence(lm_tiny_model):
    model = lm_tiny_model
    prompts = [[1, 4, 900, 70000, 71000, 3], [1, 4, 901, 902, 903, 70001, 70002, 70003, 70004, 3]]
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = {}
        for narrow in (True, False):
            cache = KVCache.for_model(model, 2, 32)
            prefill(model, cache, [0, 1], prompts, [0, 0])
            steps, toks = [], [70010, 70020]
            for i in range(4):
                logits = decode_one(model, cache, [0, 1], toks, [len(p) + i for p in prompts],
                                    narrow_threads=narrow)
                steps.append(logits)
                toks = [70030 + i, 70040 + i]
            out[narrow] = torch.stack(steps)
            assert torch.get_num_threads() == 2
        assert_close_rel(out[True], out[False], what="narrowed vs wide decode logits")
        # row 0's decoded steps against one full forward over its whole sequence
        seq = prompts[0] + [70010, 70030, 70031, 70032]
        full = sequence_logits(model, seq)[len(prompts[0]):]
        assert_close_rel(out[True][:, 0], full, what="decode vs full-sequence logits")
    finally:
        torch.set_num_threads(before)
