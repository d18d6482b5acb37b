"""`editx bench --memory`: the release's sizes come out right, and the formula's parts equal what
editx really allocates (loaded weights, KV cache, a voice's flow prime) on the tiny fixture."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from editx import bench_memory as mem
from editx.lm.kv_cache import KVCache


def test_release_sizes_match_the_published_facts():
    t = mem.release_table()
    lm = t["lm_params"]
    # 291 tensors, 7.06 GB of bfloat16 safetensors (release README): 3.53 B parameters
    assert sum(lm.values()) * 2 == pytest.approx(7.06e9, rel=0.005)
    assert lm["lm_head"] == lm["embedding"] == 74752 * 3072  # untied: the checkpoint has its own head
    assert t["decoder_params"]["flow"] == pytest.approx(153.75e6, rel=1e-3)  # 605 keys, 153.75 M
    w = t["weights_bytes"]
    assert w["bfloat16"]["lm"] == pytest.approx(w["float32"]["lm"] / 2)
    assert w["nf4"]["lm"] < w["bnb8"]["lm"] < w["int8"]["lm"] < w["bfloat16"]["lm"]
    for p in mem.PRECISIONS:
        assert w[p]["total"] == pytest.approx(sum(v for k, v in w[p].items() if k != "total"))
    # 32 layers x 4 groups x 64 dims x 2 (K, V) x 2 bytes = 32 KiB per position per row
    assert t["runtime_bytes"]["bfloat16"]["kv_cache"] == 32 * 1024 * 8 * 8193


def test_kv_cache_formula_equals_the_allocation(tiny_backend):
    lm = tiny_backend.lm
    cache = KVCache.for_model(lm, 3, 50)
    allocated = sum(t.numel() * t.element_size() for t in list(cache.k) + list(cache.v))
    assert mem.kv_cache_bytes(lm.config, batch=3, max_len=50, itemsize=lm.dtype.itemsize) == allocated


def test_flow_prime_formula_equals_a_real_prime(tiny_backend):
    dec = tiny_backend.decoder
    rng = np.random.default_rng(0)
    prime = dec.prime_stream(rng.integers(0, 5120, 50), torch.randn(60, 80), torch.randn(192), n_steps=3)
    att = sum(t.numel() * t.element_size() for per_step in prime.cache.att for t in per_step)
    est = dec.flow.cfg.estimator
    assert mem.flow_prime_bytes(est, frames=prime.cache.prompt_frames, steps=3, itemsize=4) == att
    assert att <= prime.nbytes  # the rest: encoder and conv context, the held tail rows


def test_weight_formula_equals_the_loaded_backend(tiny_backend, tiny_model_dir):
    from editx.bench_runs import loaded_weight_bytes

    formula = mem.model_dir_weights(tiny_model_dir)
    # the tokenizer's k-means centroids (.npy) are held too but are no torch weights: within 2%
    assert formula["total"] == pytest.approx(loaded_weight_bytes(tiny_backend), rel=0.02)
    keys = json.loads((mem.RELEASE / "flow.keys.json").read_text())
    est = mem.estimator_from_keys(keys)
    assert (est.hidden_size, est.depth, est.num_heads, est.head_dim) == (512, 16, 8, 64)


def test_memory_markdown_has_every_precision():
    text = "\n".join(mem.markdown({"release": mem.release_table()}))
    for p in mem.PRECISIONS:
        assert f"| {p} |" in text
    assert "LM KV cache" in text and "Not counted" in text
