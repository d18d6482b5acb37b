"""Intra-op threads during a CPU decode step: the weight reads get every thread, the small ops one.

A decode step is ~60 weight GEMVs (worth splitting across cores: they stream hundreds of MB) and
~200 small ops (norms, the K/V write, attention over a few hundred keys, the ALiBi row) that finish
in microseconds. Each small op that opens an OpenMP parallel region (scaled_dot_product_attention
always does) pays a fork/join, and on a CPU shared with other processes the second thread may wait
a whole scheduler slice (~20 ms measured here with two busy loops beside it) for a core: a step of
the small fixture went from 160 ms on one thread to 540 ms on two. So inside `narrow()` the calling
thread runs with one intra-op thread, and `wide()` restores the full count around each GEMV.

torch's thread count is per OS thread under OpenMP (and MKL's local setting), so this changes only
the thread that runs the step; both context managers restore what they found. One side effect to
know: torch also keeps the last count as the default that a thread adopts at its first parallel op,
so a thread whose first torch op falls inside a decode step starts with one intra-op thread (the
engine's other threads do little torch work; the engine worker, which runs the model, is unaffected).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_state = threading.local()


@contextmanager
def narrow(enabled: bool = True) -> Iterator[None]:
    """Run the block with one intra-op thread (GEMVs inside `wide()` keep the caller's count)."""
    n = torch.get_num_threads()
    if not enabled or n <= 1 or getattr(_state, "wide", None) is not None:
        yield
        return
    _state.wide = n
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
        _state.wide = None


@contextmanager
def wide() -> Iterator[None]:
    """Inside `narrow()`: the caller's full thread count for this block; elsewhere a no-op."""
    n = getattr(_state, "wide", None)
    if n is None:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(1)
