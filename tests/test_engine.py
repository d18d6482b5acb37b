"""The Engine on the tiny fixture: clone and every edit end to end, cache, batching, queue, cancel."""

import math
import threading
import time

import numpy as np
import pytest
from conftest import assert_close_rel, speechlike

from editx.errors import CancelledError, QueueFullError, ValidationError
from editx.lm.prompts import EDIT_OPTIONS
from editx.pipeline.types import CloneRequest, EditRequest

pytestmark = pytest.mark.slow

SAMPLES_PER_ROW = 2 * 480  # one 25 Hz flow row = two 50 Hz mel frames = 2 × 480 samples at 24 kHz


def expected_samples(lm_tokens: int) -> int:
    # groups of 5 LM tokens (2 vq02 + 3 vq06) become 3 flow rows; a partial group is padded to one
    return 3 * math.ceil(lm_tokens / 5) * SAMPLES_PER_ROW


def test_clone_end_to_end(make_engine):
    eng = make_engine()
    r = eng.clone(speechlike(), "hello world", "this is a test", seed=1)
    assert r.sample_rate == 24000 and r.audio.dtype == np.float32 and np.isfinite(r.audio).all()
    assert r.lm_tokens > 0 and r.audio.size == expected_samples(r.lm_tokens)
    names = [s["name"] for s in r.timeline["stages"]]
    for stage in ("prompt_encode", "tokenize", "lm_prefill", "lm_decode", "flow", "vocoder"):
        assert stage in names
    assert r.timeline["cache"]["prompt"] == "miss" and r.timeline["lm_tokens"] == r.lm_tokens
    assert r.timeline["audio_s"] == pytest.approx(r.audio.size / 24000)


EDIT_CASES = [(t, (v[0] if v else None), "hello [Laughter] world" if t == "paralinguistic" else None)
              for t, v in EDIT_OPTIONS.items()]


@pytest.mark.parametrize("edit_type,info,text", EDIT_CASES, ids=[c[0] for c in EDIT_CASES])
def test_every_edit_type_runs(make_engine, edit_type, info, text):
    eng = make_engine()
    r = eng.edit(speechlike(seed=2), "hello world", edit_type, info, text=text, seed=5)
    assert np.isfinite(r.audio).all() and r.audio.size == expected_samples(r.lm_tokens)
    assert r.iterations[0]["edit_type"] == edit_type


def test_iterations_chain_outputs(make_engine):
    eng = make_engine()
    r = eng.edit(speechlike(seed=3), "hello world", "style", "whisper", iterations=3, seed=7)
    assert len(r.iterations) == 3
    # each round re-encodes the previous round's output (bypassing the cache), the first uses the cache
    encodes = [s for s in r.timeline["stages"] if s["name"] == "prompt_encode"]
    assert [s.get("cache") for s in encodes] == ["miss", "bypass", "bypass"]
    assert r.audio.size == expected_samples(r.iterations[-1]["lm_tokens"])


def test_cached_equals_uncached_and_hit_skips_tokenizer(make_engine):
    cached = make_engine()
    first = cached.clone(speechlike(seed=4), "hi there", "same text", seed=11)
    second = cached.clone(speechlike(seed=4), "hi there", "same text", seed=11)
    names = [s["name"] for s in second.timeline["stages"]]
    assert second.timeline["cache"]["prompt"] == "memory"
    assert "tokenize" not in names and "speaker" not in names
    assert second.timeline["cache"]["lm_prefix"] == "memory"
    uncached = make_engine(cache=False).clone(speechlike(seed=4), "hi there", "same text", seed=11)
    assert np.array_equal(first.audio, second.audio) and np.array_equal(first.audio, uncached.audio)


def test_concurrent_requests_batch_and_equal_serial(make_engine):
    eng = make_engine()
    reqs = [CloneRequest(speechlike(seed=10 + i), "prompt text", f"sentence number {i}", seed=100 + i)
            for i in range(3)]
    serial = [eng.run(r).audio for r in reqs]
    gate = threading.Event()
    eng._q.call(gate.wait)  # hold the worker so the three queue up together
    futures = [eng.submit(r) for r in reqs]  # queued together: decoded as one LM batch
    seen = []
    futures[0].add_done_callback(lambda _f: seen.append((futures[1].done(), futures[2].job.output is None)))
    gate.set()
    batched = [f.result(timeout=120) for f in futures]
    assert all(s.get("batch") == 3 for r in batched for s in r.timeline["stages"] if s["name"] == "lm_decode")
    assert seen == [(False, True)]  # the first is settled before the last one's vocoder even ran
    flow = [s for r in batched for s in r.timeline["stages"] if s["name"] == "flow"]
    assert [s.get("batch") for s in flow] == [3, 3, 3]  # one shared DiT solve per Euler step
    for a, b in zip(serial, batched):
        # float32 flow in a batch of three: only the summation order of larger matmuls differs
        assert a.shape == b.audio.shape
        np.testing.assert_allclose(b.audio, a, rtol=0, atol=1e-3 * np.abs(a).max())


def test_seed_reproduces_and_differs(make_engine):
    eng = make_engine(cache=False)
    a = eng.clone(speechlike(seed=6), "p", "t", seed=1).audio
    b = eng.clone(speechlike(seed=6), "p", "t", seed=1).audio
    c = eng.clone(speechlike(seed=6), "p", "t", seed=2).audio
    assert np.array_equal(a, b) and not (a.shape == c.shape and np.array_equal(a, c))


def test_bad_requests_rejected_before_model_work(make_engine):
    with pytest.raises(ValidationError, match="allowed"):
        EditRequest(speechlike(), "text", "emotion", "ecstatic")
    with pytest.raises(ValidationError, match="unknown edit type"):
        EditRequest(speechlike(), "text", "reverb", None)
    with pytest.raises(ValidationError, match="text"):
        CloneRequest(speechlike(), "prompt", "   ")
    with pytest.raises(ValidationError, match="iterations"):
        EditRequest(speechlike(), "text", "vad", None, iterations=0)


def test_queue_full_and_cancel(make_engine):
    eng = make_engine(queue_size=1)
    gate = threading.Event()
    # occupy the worker with a call that waits on the gate, and wait until it has taken it
    eng._q.call(gate.wait)
    deadline = time.monotonic() + 30
    while eng.queue_depth and time.monotonic() < deadline:
        time.sleep(0.01)
    fut = eng.submit(CloneRequest(speechlike(), "p", "queued", seed=1))
    with pytest.raises(QueueFullError, match="queue is full"):
        eng.submit(CloneRequest(speechlike(), "p", "one too many", seed=1))
    eng.cancel(fut)
    gate.set()
    with pytest.raises(CancelledError):
        fut.result(timeout=60)
    # the engine is free for the next request
    assert eng.clone(speechlike(), "p", "after cancel", seed=1).audio.size > 0
    assert eng.alive
    eng.close()
    assert not eng.alive  # a closed engine reports itself dead to health checks


@pytest.mark.parametrize("where", ["add", "step"])
def test_a_request_failing_in_the_lm_fails_alone_and_leaks_no_slot(make_engine, monkeypatch, where):
    """Issue 15, point 2: a failure in session.add or session.step failed the whole batch and kept
    the decode slots already taken; two such rounds and every request got QueueFullError. Now the
    bad request fails alone (a failed batched step is retried one job at a time), its batch mates
    give exactly their serial result, and every slot comes back."""
    from editx.lm.generate import DecodeSession

    eng = make_engine(cache=False)
    goods = [CloneRequest(speechlike(seed=20 + i), "prompt text", f"sentence {i}", seed=200 + i) for i in range(2)]
    serial = [eng.run(r).audio for r in goods]
    poisoned: set = set()  # generators of the requests the LM refuses
    real_add, real_step = DecodeSession.add, DecodeSession.step

    def add(self, prompt, *, generator=None, **kw):
        if where == "add" and generator in poisoned:
            raise RuntimeError("the LM refused this prompt")
        return real_add(self, prompt, generator=generator, **kw)

    def step(self):
        if where == "step" and any(r.generator in poisoned for r in self._requests.values()):
            raise RuntimeError("the LM step failed")
        return real_step(self)

    monkeypatch.setattr(DecodeSession, "add", add)
    monkeypatch.setattr(DecodeSession, "step", step)
    for _ in range(3):  # more rounds than there are spare slots: a leak would show
        gate = threading.Event()
        eng._q.call(gate.wait)  # hold the worker so the three go in one round
        futures = [eng.submit(goods[0])]
        bad = eng.submit(CloneRequest(speechlike(seed=9), "prompt text", "the bad one", seed=9))
        poisoned.add(bad.job.generator)
        futures.append(eng.submit(goods[1]))
        gate.set()
        with pytest.raises(RuntimeError, match="LM"):
            bad.result(timeout=120)
        for fut, want in zip(futures, serial):  # flow batched: float32 tolerance
            assert_close_rel(fut.result(timeout=120).audio, want, scale=1.0,  # audio full scale
                             what="batch mate vs serial")
        assert eng.backend._session().free_slots == eng.config.max_batch
    deadline = time.monotonic() + 60  # the counts are released by the futures' done callbacks
    while eng.health()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.005)
    assert eng.health()["in_flight"] == 0 and eng.alive
