"""The compute-bound section of `editx bench`: FLOPs counted from shapes agree with torch's own
FlopCounterMode on real forwards; the matmul peak and the per-stage summary are consistent."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from editx import bench_compute
from editx.decoder.config import EstimatorConfig
from editx.decoder.dit import DiT
from editx.fixtures import lm as lm_fixture
from editx.lm.generate import decode_one, prefill
from editx.lm.kv_cache import KVCache
from editx.lm.loader import load_step1


def _counted(fn) -> float:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    counter = FlopCounterMode(display=False)
    # the math kernel decomposes attention into matmuls the counter sees (the fused CPU kernel it misses)
    with counter, torch.inference_mode(), sdpa_kernel(SDPBackend.MATH):
        fn()
    return counter.get_total_flops() / 1e9


@pytest.mark.parametrize("frames,cached", [(60, 0), (24, 40)])
def test_dit_flops_match_torchs_counter(frames, cached):
    cfg = EstimatorConfig(in_channels=320, out_channels=80, hidden_size=64, depth=2, num_heads=2, head_dim=32)
    dit = DiT(cfg).eval()
    x, mu, cond = (torch.randn(2, 80, frames) for _ in range(3))
    t, spk = torch.rand(1), torch.randn(2, 80)
    att = [torch.randn(2, 2, cached, 64) for _ in range(2)] if cached else None
    got = _counted(lambda: dit.forward_chunk(x, t, mu, spk, cond, None, att))  # one Euler step, both CFG rows
    # the counter also sees the per-row timestep MLP and modulation (not per frame): a few percent here
    assert bench_compute.dit_gflop(cfg, frames, cached, steps=1) == pytest.approx(got, rel=0.08)


def test_lm_flops_match_torchs_counter(tmp_path):
    lm_fixture.write(tmp_path, "tiny", 0)
    model = load_step1(tmp_path / lm_fixture.LM_DIR)
    prompt = list(range(100, 140))
    cache = KVCache.for_model(model, 1, 64)
    pre = _counted(lambda: prefill(model, cache, [0], [prompt], [0]))
    dec = _counted(lambda: decode_one(model, cache, [0], [5], [len(prompt)]))
    est = bench_compute.lm_gflop(model.config, prompt_tokens=len(prompt), new_tokens=2)
    # the decode estimate is for a mean context of prompt + 1; the step above is at prompt + 0
    assert est["lm_decode"] / 2 == pytest.approx(dec, rel=0.05)
    # the prefill's attention is counted as causal (half the square); torch counts the whole square
    assert est["lm_prefill"] == pytest.approx(pre, rel=0.1)
    # a restored voice prefix: only the rest of the prompt is computed, attending to the prefix too
    cache = KVCache.for_model(model, 1, 64)
    prefill(model, cache, [0], [prompt[:30]], [0])
    rest = _counted(lambda: prefill(model, cache, [0], [prompt[30:]], [30]))
    cached = bench_compute.lm_gflop(model.config, prompt_tokens=len(prompt), cached_tokens=30)["lm_prefill"]
    assert cached == pytest.approx(rest, rel=0.1) and cached < est["lm_prefill"]


def test_peak_and_summary_are_consistent():
    peak = bench_compute.matmul_peak_gflop_s(torch.float32, n=256, repeats=2)
    assert peak > 0
    runs = [{"stages": {"flow": 2.0, "vocoder": 1.0}, "gflop": {"flow": 10.0, "vocoder": 1.0}},
            {"stages": {"flow": 4.0, "vocoder": 1.0}, "gflop": {"flow": 10.0, "vocoder": 3.0}},
            {"stages": {"flow": 1.0}, "gflop": {}}]
    s = bench_compute.summarize(runs, {"float32": 10.0, "bfloat16": 20.0}, "float32")
    assert s["flow"] == {"gflop_s": 3.75, "fraction_of_peak": 0.375}  # median of 5 and 2.5
    assert s["vocoder"]["gflop_s"] == 2.0
    assert bench_compute.summarize(runs, {"float32": 10.0, "bfloat16": 20.0}, "bfloat16")["flow"][
        "fraction_of_peak"] == pytest.approx(3.75 / 20)
