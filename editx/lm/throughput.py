"""LM decode throughput: our static-cache loop vs the way upstream's HF `generate` runs the same
weights, and the memory-bandwidth bound.

Why not time `transformers` itself: upstream runs `modeling_step1.py` under `trust_remote_code`, and
no built-in HF class computes Step1's square-root ALiBi (Llama would be a different model). So the
comparator here re-creates what HF `generate` does with upstream's modeling code, on our modules
and weights: a dynamic cache that concatenates every layer's K/V each step (`DynamicCache`),
K/V repeated to all heads (`repeat_interleave`), the full (H, S, S) ALiBi matrix rebuilt in every
layer of every step and sliced to the query rows (`build_alibi_cache(k.size(1))[..., -q:, :]`), and
logits for every prompt position at prefill. Both loops decode greedily without the sampling
pipeline, so the numbers compare forward passes only.

The bound: a decode step must stream every weight used per token (all Linear weights, lm_head
included, plus the K/V cache read so far) from memory once, so tokens/s <= bandwidth / bytes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from editx.config import SamplingConfig
from editx.lm.generate import DecodeSession, decode_one, prefill
from editx.lm.kv_cache import KVCache
from editx.lm.model import Step1ForCausalLM


def memcpy_bandwidth(nbytes: int = 256 * 2**20, repeats: int = 5, device: str | torch.device = "cpu") -> float:
    """Best observed copy bandwidth in bytes/s, counting bytes read plus bytes written."""
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * nbytes / best


def bytes_per_token(model: Step1ForCausalLM, context: int) -> int:
    """Weight + KV-cache bytes one decode step must read at a context of `context` tokens."""
    cfg = model.config
    linear = sum(_nbytes(m) for m in model.modules() if _is_linear(m))
    norms = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if n.endswith("norm.weight"))
    embed_row = cfg.hidden_size * model.dtype.itemsize
    kv = 2 * cfg.num_hidden_layers * cfg.kv_dim * context * model.dtype.itemsize
    return linear + norms + embed_row + kv


def _is_linear(m) -> bool:
    # torch Linear (bitsandbytes' Linear8bitLt/Linear4bit are subclasses) and torch's dynamic int8 one
    return isinstance(m, torch.nn.Linear) or type(m).__name__ in ("Linear", "DynamicQuantizedLinear")


def _nbytes(m) -> int:
    w = m.weight() if callable(m.weight) else m.weight
    return w.numel() * w.element_size()


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def ours_tokens_per_s(model: Step1ForCausalLM, prompts: Sequence[Sequence[int]], new_tokens: int, *,
                      narrow_threads: bool = True) -> dict:
    """Prefill time and decode tokens/s of DecodeSession (greedy, all rows in one batch)."""
    sampling = SamplingConfig(temperature=0.0, max_length=max(map(len, prompts)) + new_tokens + 1,
                              repetition_window=0)
    session = DecodeSession(model, max_batch=len(prompts), max_length=sampling.max_length,
                            narrow_threads=narrow_threads)
    for p in prompts:
        session.add(p, sampling=sampling)
    t = time.perf_counter()
    session.step()  # prefill + first token
    _sync(model.device)
    t_prefill = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(new_tokens - 1):
        session.step()
    _sync(model.device)
    dt = time.perf_counter() - t
    return {"prefill_s": t_prefill, "decode_tok_s": len(prompts) * (new_tokens - 1) / dt,
            "step_ms": 1000 * dt / (new_tokens - 1)}


def _hf_alibi(slopes: torch.Tensor, size: int, q_len: int, dtype) -> torch.Tensor:
    # As upstream: the whole (1, H, size, size) matrix, then its last q_len rows.
    i = torch.arange(size, device=slopes.device)
    dist = (i[:, None] - i[None, :]).to(torch.float32)
    bias = -dist.clamp_min(0).sqrt()[None] * slopes.view(-1, 1, 1)
    bias = bias.masked_fill(dist[None] < 0, float("-inf"))[None]
    return bias[:, :, -q_len:, :].contiguous().to(dtype)


def _hf_style_forward(model: Step1ForCausalLM, tokens: torch.Tensor, past: list) -> torch.Tensor:
    """One HF-style forward over (1, T) tokens with a concatenating cache; returns all logits."""
    cfg = model.config
    H, G, D = cfg.num_attention_heads, cfg.num_attention_groups, cfg.head_dim
    x = model.model.embed_tokens(tokens)
    B, T, C = x.shape
    for i, layer in enumerate(model.model.layers):
        attn, h = layer.self_attn, layer.input_layernorm(x)
        q, k, v = attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)
        if past[i] is not None:
            k, v = torch.cat([past[i][0], k], dim=1), torch.cat([past[i][1], v], dim=1)
        past[i] = (k, v)
        S = k.shape[1]
        q = q.view(B, T, H, D).transpose(1, 2)
        k = k.view(B, S, G, D).repeat_interleave(H // G, dim=2).transpose(1, 2)
        v = v.view(B, S, G, D).repeat_interleave(H // G, dim=2).transpose(1, 2)
        mask = _hf_alibi(model.alibi_slopes, S, T, x.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(B, T, C)
        x = x + attn.o_proj(out)
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return model.logits(model.model.norm(x))


@torch.inference_mode()
def hf_style_tokens_per_s(model: Step1ForCausalLM, prompt: Sequence[int], new_tokens: int) -> dict:
    """Prefill time and decode tokens/s of the upstream/HF-style loop (batch 1, greedy)."""
    past: list = [None] * model.config.num_hidden_layers
    ids = torch.tensor([list(prompt)], device=model.device)
    t = time.perf_counter()
    token = _hf_style_forward(model, ids, past)[:, -1].argmax(-1, keepdim=True)
    _sync(model.device)
    t_prefill = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(new_tokens - 1):
        token = _hf_style_forward(model, token, past)[:, -1].argmax(-1, keepdim=True)
    _sync(model.device)
    dt = time.perf_counter() - t
    return {"prefill_s": t_prefill, "decode_tok_s": (new_tokens - 1) / dt, "step_ms": 1000 * dt / (new_tokens - 1)}


@torch.inference_mode()
def check_same_greedy(model: Step1ForCausalLM, prompt: Sequence[int], new_tokens: int = 8) -> bool:
    """Both loops must pick the same greedy tokens (no repetition rule) for the comparison to be fair."""
    past: list = [None] * model.config.num_hidden_layers
    token = _hf_style_forward(model, torch.tensor([list(prompt)], device=model.device), past)[:, -1].argmax(-1)
    hf = [int(token)]
    for _ in range(new_tokens - 1):
        hf.append(int(_hf_style_forward(model, token[:, None], past)[:, -1].argmax(-1)))
        token = torch.tensor([hf[-1]], device=model.device)
    cache = KVCache.for_model(model, 1, len(prompt) + new_tokens)
    ours = [int(prefill(model, cache, [0], [list(prompt)], [0])[0].argmax())]
    for i in range(new_tokens - 1):
        ours.append(int(decode_one(model, cache, [0], [ours[-1]], [len(prompt) + i])[0].argmax()))
    return ours == hf


def compare(model: Step1ForCausalLM, *, prompt_len: int = 512, new_tokens: int = 64, batch: int = 1,
            seed: int = 0) -> dict:
    """Everything a benchmark report needs, measured now on `model`'s device."""
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    prompts = [torch.randint(0, vocab, (prompt_len,), generator=g).tolist() for _ in range(batch)]
    ours_single = ours_tokens_per_s(model, prompts[:1], new_tokens)
    # The same loop with every small op on all intra-op threads (before issue 22's narrowing)
    wide = (ours_tokens_per_s(model, prompts[:1], new_tokens, narrow_threads=False)
            if torch.get_num_threads() > 1 and torch.device(model.device).type == "cpu" else ours_single)
    floor = weight_read_floor(model, prompts[0], steps=min(16, new_tokens))
    ours_batch = ours_tokens_per_s(model, prompts, new_tokens) if batch > 1 else ours_single
    hf = hf_style_tokens_per_s(model, prompts[0], new_tokens)
    bandwidth = memcpy_bandwidth(device=model.device)
    per_token = bytes_per_token(model, prompt_len + new_tokens // 2)
    bound = bandwidth / per_token
    return {
        "threads": torch.get_num_threads(), "device": str(model.device), "dtype": str(model.dtype),
        "prompt_len": prompt_len, "new_tokens": new_tokens, "batch": batch,
        "same_greedy_tokens": check_same_greedy(model, prompts[0][:64]),
        "ours": ours_single, "ours_batched": ours_batch, "hf_style": hf, "ours_all_threads": wide,
        "narrow_speedup": ours_single["decode_tok_s"] / wide["decode_tok_s"],
        "decode_speedup": ours_single["decode_tok_s"] / hf["decode_tok_s"],
        "prefill_speedup": hf["prefill_s"] / ours_single["prefill_s"],
        "copy_bandwidth_gb_s": bandwidth / 1e9, "bytes_per_token_mb": per_token / 1e6,
        "bandwidth_bound_tok_s": bound, "fraction_of_bound": ours_single["decode_tok_s"] / bound,
        "weight_floor": floor,
    }


@torch.inference_mode()
def weight_read_floor(model: Step1ForCausalLM, prompt: Sequence[int], *, steps: int = 16) -> dict:
    """How much of a decode step is weight reading: decode steps alternated with a pass that only
    multiplies one activation row by every Linear weight of the step (same GEMV shapes, same threads),
    medians of both. On a shared CPU this ratio is steadier than a step against a memcpy probed at
    another moment, and what it leaves (1 - fraction) is exactly the step's non-weight work."""
    from editx.lm.model import linear

    layers = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    x = {m.in_features: torch.zeros(1, m.in_features, device=model.device, dtype=model.dtype) for m in layers}
    session = DecodeSession(model, max_batch=1, max_length=len(prompt) + steps + 2)
    session.add(prompt, sampling=SamplingConfig(temperature=0.0, max_length=len(prompt) + steps + 2,
                                                repetition_window=0))
    session.step()
    step_s, pass_s = [], []
    for _ in range(steps):
        _sync(model.device)
        t = time.perf_counter()
        session.step()
        _sync(model.device)
        step_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        for m in layers:
            linear(m, x[m.in_features])
        _sync(model.device)
        pass_s.append(time.perf_counter() - t)
    step, weights = sorted(step_s)[len(step_s) // 2], sorted(pass_s)[len(pass_s) // 2]
    return {"steps": steps, "step_ms": 1000 * step, "weights_ms": 1000 * weights, "fraction": weights / step}
