"""The compute bound beside the bandwidth bound: the machine's measured matmul peak, and the FLOPs
each stage of a request did (counted from its shapes), so a report shows every stage's achieved
GFLOP/s and how far it is from the peak.

Counting (multiply-adds x 2; elementwise work, norms and the softmax are left out, so the fraction is
a slight under-estimate):
- flow: the DiT only (the token encoder runs once per request, not per Euler step: < 2% of it);
  per Euler step both CFG rows, every Linear and causal conv per frame, attention over the frame's
  keys (its own frames plus a primed or streamed chunk's cache).
- LM: every Linear weight once per token (lm_head once per row at prefill, as the loop does), plus
  attention over the context.
- vocoder: HiFT's FLOPs per mel frame, counted once by torch's FlopCounterMode (all convolutions).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

PEAK_N = 1024  # square matmul side for the peak: large enough to saturate, 2 GFLOP per call
GIGA = 1e9


def matmul_peak_gflop_s(dtype: torch.dtype = torch.float32, *, n: int = PEAK_N, repeats: int = 5,
                        device: str | torch.device = "cpu") -> float:
    """Best observed GFLOP/s of an (n, n) @ (n, n) matmul in `dtype` on the current torch threads."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, generator=g, device=device).to(dtype)
    b = torch.randn(n, n, generator=g, device=device).to(dtype)
    torch.mm(a, b)  # first call: allocation, kernel selection
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / GIGA


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def dit_gflop(cfg, frames: int, cached: int = 0, steps: int = 10) -> float:
    """GFLOP of a flow solve: `steps` Euler steps of the DiT over `frames` new frames that also
    attend to `cached` frames, both CFG rows. `cfg` is an EstimatorConfig."""
    h, inner = cfg.hidden_size, cfg.num_heads * cfg.head_dim
    per_frame = cfg.in_channels * h + cfg.depth * (4 * h * inner + 2 * h * cfg.mlp_hidden + 2 * 3 * h * h) \
        + h * cfg.out_channels
    attention = cfg.depth * 2 * frames * (frames + cached) * inner
    return 2 * 2 * steps * (frames * per_frame + attention) / GIGA


def lm_linear_params(cfg) -> tuple[int, int]:
    """(Linear weights of the layers, lm_head weights) of a Step1Config."""
    c, kv, ff = cfg.hidden_size, cfg.kv_dim, cfg.intermediate_size
    per_layer = 2 * c * c + 2 * c * kv + 3 * c * ff
    return cfg.num_hidden_layers * per_layer, c * cfg.vocab_size


def lm_gflop(cfg, *, prompt_tokens: int = 0, new_tokens: int = 0, cached_tokens: int = 0) -> dict[str, float]:
    """GFLOP of prefilling `prompt_tokens` (the first `cached_tokens` restored from a voice prefix's
    KV, not computed) and decoding `new_tokens` after them, one row."""
    layers, head = lm_linear_params(cfg)
    attn = 2 * 2 * cfg.num_hidden_layers * cfg.hidden_size  # q·K and p·V per (query, key) pair
    new = prompt_tokens - cached_tokens
    # causal: query i reads cached_tokens + i + 1 keys
    prefill = 2 * layers * new + 2 * head + attn * (new * cached_tokens + new * (new + 1) / 2)
    ctx = prompt_tokens + new_tokens / 2  # mean context over the decode
    decode = new_tokens * (2 * (layers + head) + attn * ctx)
    return {"lm_prefill": prefill / GIGA, "lm_decode": decode / GIGA}


def vocoder_gflop_per_frame(hift, frames: int = 20) -> float:
    """HiFT GFLOP per mel frame, counted by FlopCounterMode on a short random mel."""
    from torch.utils.flop_counter import FlopCounterMode

    w = next(hift.parameters())
    mel = torch.randn(1, hift.cfg.in_channels, frames, generator=torch.Generator().manual_seed(0)).to(w.device, w.dtype)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        hift.inference(mel, generator=torch.Generator().manual_seed(0))
    return counter.get_total_flops() / frames / GIGA


class StageFlops:
    """FLOP counts for the stages of one loaded editx backend's request timelines."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self._vocoder: float | None = None

    def request(self, timeline: dict) -> dict[str, float]:
        """GFLOP per stage name (summed over its records) for one request's timeline."""
        out: dict[str, float] = {}
        prompt_tokens = 0
        for s in timeline.get("stages", ()):
            attrs = s.get("attrs") or s
            if s["name"] == "lm_prefill":
                prompt_tokens = int(attrs.get("prompt_tokens") or 0)
            g = self.stage(s["name"], attrs, prompt_tokens)
            if g is not None:
                out[s["name"]] = out.get(s["name"], 0.0) + g
        return out

    def stage(self, name: str, attrs: dict, prompt_tokens: int = 0) -> float | None:
        dec, lm = getattr(self.backend, "decoder", None), getattr(self.backend, "lm", None)
        if name == "flow" and dec is not None and attrs.get("frames"):
            return dit_gflop(dec.flow.cfg.estimator, int(attrs["frames"]), int(attrs.get("cached_frames") or 0),
                             int(attrs.get("steps") or 10))
        if name == "vocoder" and dec is not None and attrs.get("frames"):
            if self._vocoder is None:
                self._vocoder = vocoder_gflop_per_frame(dec.hift)
            return self._vocoder * int(attrs["frames"])
        if name == "lm_prefill" and lm is not None:
            return lm_gflop(lm.config, prompt_tokens=int(attrs.get("prompt_tokens") or 0),
                            cached_tokens=int(attrs.get("cached_tokens") or 0))["lm_prefill"]
        if name == "lm_decode" and lm is not None:
            return lm_gflop(lm.config, prompt_tokens=prompt_tokens,
                            new_tokens=int(attrs.get("tokens") or 0))["lm_decode"]
        return None


def peaks(device: str | torch.device = "cpu") -> dict[str, float]:
    """The measured matmul peak (GFLOP/s) in float32 and bfloat16 on the current torch threads."""
    from editx.config import cpu_supports_bf16

    # emulated bf16 runs ~1% of float32's speed: a smaller matmul measures it as well, in seconds, not a minute
    emulated = torch.device(device).type == "cpu" and not cpu_supports_bf16()
    return {"float32": matmul_peak_gflop_s(torch.float32, device=device),
            "bfloat16": matmul_peak_gflop_s(torch.bfloat16, n=256 if emulated else PEAK_N, device=device)}


def summarize(runs: list[dict], peak: dict[str, float], dtype: str) -> dict[str, Any]:
    """Median achieved GFLOP/s per stage over warm runs that carry `gflop`, and its fraction of the
    peak of the dtype the stages ran in."""
    per_stage: dict[str, list[float]] = {}
    for r in runs:
        for name, g in (r.get("gflop") or {}).items():
            s = (r.get("stages") or {}).get(name)
            if s:
                per_stage.setdefault(name, []).append(g / s)
    top = peak.get(dtype) or peak.get("float32")
    return {name: {"gflop_s": statistics.median(v), "fraction_of_peak": statistics.median(v) / top if top else None}
            for name, v in sorted(per_stage.items())}


__all__ = ["StageFlops", "dit_gflop", "lm_gflop", "matmul_peak_gflop_s", "peaks", "summarize",
           "vocoder_gflop_per_frame"]
