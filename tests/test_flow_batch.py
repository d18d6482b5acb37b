"""Flow batched across requests (editx.decoder.batch): equal to each request alone, any mix of lengths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from editx.decoder.batch import buckets, key_mask

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def decoder(tiny_backend):
    return tiny_backend.decoder  # the tiny fixture's decoder, float32


def _voice(rng, seconds: float):
    groups = int(seconds * 25 / 3)  # 3 flow rows (5 mixed ids) per group, 25 rows per second
    return (rng.integers(0, 5120, groups * 5), torch.from_numpy(rng.normal(-5, 2, (int(seconds * 50), 80))).float(),
            torch.from_numpy(rng.normal(0, 1, 192)).float())


def _close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    # float32: only the summation order of larger matrix products differs; relative to the mel's scale
    assert got.shape == want.shape
    scale = float(want.abs().max())
    tol = (1e-4 if dtype == torch.float32 else 2e-2) * scale
    torch.testing.assert_close(got.float(), want.float(), rtol=0, atol=tol)


def test_buckets_bound_padding_and_keep_every_index():
    lengths = [100, 30, 105, 31, 400, 98, 32]
    groups = buckets(lengths, max_pad=0.25, max_jobs=3)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        longest, real = max(lengths[i] for i in g), sum(lengths[i] for i in g)
        assert longest * len(g) - real <= 0.25 * real and len(g) <= 3
    assert groups == [[1, 3, 6], [5, 0, 2], [4]]
    assert buckets([]) == [] and buckets([5]) == [[0]]
    assert buckets([10, 10, 10], max_jobs=1) == [[0], [1], [2]]


def test_key_mask_reads_own_frames_then_own_cache(decoder):
    class J:  # the two attributes key_mask reads
        def __init__(self, frames, cached):
            self.frames, self.cached = frames, cached

    m = key_mask([J(3, 0), J(5, 2)], 5, 2, "cpu")[:, 0, 0]
    assert m.shape == (4, 7)
    assert m[0].tolist() == [1, 1, 1, 0, 0, 0, 0] and m[1].tolist() == [1, 1, 1, 1, 1, 1, 1]
    assert torch.equal(m[2:], m[:2])  # the CFG unconditional rows read the same keys


def test_batched_flow_equals_each_request_alone(decoder):
    rng = np.random.default_rng(3)
    v1, v2 = _voice(rng, 2.0), _voice(rng, 3.2)
    p1, p2 = decoder.prime_stream(*v1, n_steps=4), decoder.prime_stream(*v2, n_steps=4)
    targets = [rng.integers(0, 5120, n * 5) for n in (4, 9, 5, 12, 3)]
    # one-pass jobs in two voices and primed jobs against two primes, lengths mixed
    plan = [(v1, None, targets[0]), (v2, None, targets[1]), (v1, p1, targets[2]), (v2, p2, targets[3]),
            (v2, p1, targets[4])]
    solo = [decoder.token2mel_primed(p, t, n_steps=4) if p is not None else decoder.token2mel(*v, t, n_steps=4)
            for v, p, t in plan]
    jobs = [decoder.flow_job(*v, t, primed=p, n_steps=4) for v, p, t in plan]
    from editx.decoder.batch import solve_euler_batch

    together = solve_euler_batch(decoder.flow, jobs, n_steps=4)  # one batch of five, no bucketing
    for got, want in zip(together, solo):
        _close(got, want, torch.float32)
    for got, want in zip(decoder.solve_flow_jobs(jobs, n_steps=4), solo):  # bucketed
        _close(got, want, torch.float32)
    # a batch of one is the solo path itself, bit for bit
    assert torch.equal(decoder.solve_flow_jobs(jobs[:1], n_steps=4)[0], solo[0])
    assert torch.equal(decoder.solve_flow_jobs(jobs[2:3], n_steps=4)[0], solo[2])


def test_a_prime_for_other_steps_is_refused(decoder):
    from editx.errors import ValidationError

    rng = np.random.default_rng(4)
    v = _voice(rng, 2.0)
    with pytest.raises(ValidationError, match="Euler steps"):
        decoder.flow_job(*v, rng.integers(0, 5120, 10), primed=decoder.prime_stream(*v, n_steps=3), n_steps=4)
