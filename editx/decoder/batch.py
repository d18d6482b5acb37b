"""The flow's Euler solve for several requests at once: one DiT call per Euler step for all of them.

Each request's flow work arrives as a FlowJob (one-pass offline: `CosyVoiceFlow.prepare`; a last
chunk against a voice's StreamPrime: `StreamPrime.first_job`). Jobs are bucketed by length
(`buckets`), right-padded to the bucket's longest and stacked, cond rows first, then the CFG
unconditional rows, as `solve_euler` lays out its batch of two. Why padding is exact:
- the DiT is per frame everywhere except attention and its causal convolutions;
- attention gets a key mask: a job's rows read only its own frames and its own cache (both padded
  parts masked out);
- the convolutions only look left, so frames added on the right never reach a real frame.
So a batched job's mel equals its solo mel up to the summation order of the larger matrix products
(tests/test_flow_batch.py). What it buys: each Euler step reads the DiT's weights once for the whole
bucket, and short outputs make larger matrices; on a CPU already near its matmul peak it saves
little, on a GPU (or with short chunks) it turns N small calls into one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from editx.decoder.dit import DiT
from editx.decoder.flow import CosyVoiceFlow, FlowJob, cosine_t_span, solve_euler
from editx.decoder.streaming import solve_euler_chunk

MAX_PAD = 0.25  # a bucket's padding at most this fraction of its real frames
MAX_JOBS = 8


def buckets(lengths: Sequence[int], *, max_pad: float = MAX_PAD, max_jobs: int = MAX_JOBS) -> list[list[int]]:
    """Indices of `lengths` grouped so that padding every group to its longest costs at most
    `max_pad` of the group's real length; shortest first, at most `max_jobs` per group."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    for i in order:
        g = groups[-1] if groups else None
        if g is not None and len(g) < max_jobs:
            real = sum(lengths[j] for j in g) + lengths[i]
            if lengths[i] * (len(g) + 1) - real <= max_pad * real:  # i is the longest so far
                g.append(i)
                continue
        groups.append([i])
    return groups


def _pad(t: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    extra = size - t.shape[dim]
    if extra == 0:
        return t
    shape = list(t.shape)
    shape[dim] = extra
    return torch.cat([t, t.new_zeros(shape)], dim=dim)


def _stack_cfg(parts: list[torch.Tensor]) -> torch.Tensor:
    """Per-job (2, ...) [cond; uncond] tensors → (2B, ...) with all cond rows first."""
    return torch.cat([p[:1] for p in parts] + [p[1:] for p in parts], dim=0)


def key_mask(jobs: Sequence[FlowJob], frames: int, cached: int, device) -> torch.Tensor:
    """(2B, 1, 1, frames + cached) bool: job b reads its own new frames, then its own cache frames."""
    keys = torch.arange(frames + cached, device=device)
    rows = []
    for job in jobs:
        rows.append((keys < job.frames) | ((keys >= frames) & (keys < frames + job.cached)))
    mask = torch.stack(rows)
    return torch.cat([mask, mask])[:, None, None, :]


@torch.inference_mode()
def solve_euler_batch(flow: CosyVoiceFlow, jobs: Sequence[FlowJob], *, n_steps: int = 10) -> list[torch.Tensor]:
    """Each job's mel (80, frames - keep), from one batched DiT call per Euler step. A single job
    runs exactly the solo path (`solve_euler`, or `solve_euler_chunk` for a cached job)."""
    estimator, cfg_rate = flow.estimator, flow.cfg.cfg_rate
    if not jobs:
        return []
    if len(jobs) == 1:
        (job,) = jobs
        if job.att is None:
            x = solve_euler(estimator, job.noise, job.mu, job.spk, job.cond, n_steps=n_steps, cfg_rate=cfg_rate)
        else:
            x, _, _ = solve_euler_chunk(flow, job.noise, job.mu, job.spk, job.cond, job.conv, job.att,
                                        n_steps=n_steps)
        return [x[0, :, job.keep:]]
    frames = max(j.frames for j in jobs)
    cached = max(j.cached for j in jobs)
    x = torch.cat([_pad(j.noise, frames, 2) for j in jobs])  # (B, 80, T)
    mu = torch.cat([_pad(j.mu, frames, 2) for j in jobs])
    cond = torch.cat([_pad(j.cond, frames, 2) for j in jobs])
    spk = torch.cat([j.spk for j in jobs])  # (B, 80)
    mu_in, spk_in, cond_in = (torch.cat([a, torch.zeros_like(a)]) for a in (mu, spk, cond))
    mask = key_mask(jobs, frames, cached, x.device)
    t_span = cosine_t_span(n_steps, device=mu.device, dtype=mu.dtype)
    t, dt = t_span[:1], t_span[1] - t_span[0]
    b = len(jobs)
    for step in range(1, n_steps + 1):
        conv, att = _step_caches(estimator, jobs, step - 1, cached, x)
        v, _, _ = estimator.forward_chunk(torch.cat([x, x]), t, mu_in, spk_in, cond_in, conv, att, mask)
        x = x + dt * ((1.0 + cfg_rate) * v[:b] - cfg_rate * v[b:])
        t = t + dt
        if step < n_steps:
            dt = t_span[step + 1] - t
    return [x[i, :, j.keep:j.frames] for i, j in enumerate(jobs)]


def _step_caches(estimator: DiT, jobs: Sequence[FlowJob], step: int, cached: int, x: torch.Tensor):
    """This Euler step's per-block caches for the batch (built one step at a time: a voice's cache
    is ~1.3 MB per prompt frame over all steps in float32, so stacking all steps at once would copy
    it whole). Jobs without a cache get zeros (= the one-pass flow's zero padding)."""
    if cached == 0 and all(j.conv is None for j in jobs):
        return None, None
    depth, channels = len(estimator.blocks), estimator.cfg.hidden_size
    pad = estimator.blocks[0].conv.pad
    conv, att = [], []
    for blk in range(depth):
        conv.append(_stack_cfg([j.conv[step][blk] if j.conv is not None
                                else x.new_zeros(2, 2 * channels, pad) for j in jobs]))
        if cached:
            ref = next(j.att[step][blk] for j in jobs if j.att)
            att.append(_stack_cfg([_pad(j.att[step][blk], cached, 2) if j.att
                                   else ref.new_zeros(2, ref.shape[1], cached, ref.shape[3]) for j in jobs]))
    return conv, (att if cached else None)


__all__ = ["MAX_JOBS", "MAX_PAD", "buckets", "key_mask", "solve_euler_batch"]
