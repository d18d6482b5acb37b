"""One request's failure is its own: the Engine's queue, batching, admission and shutdown, on a
model-free backend (tests/engine_fakes.py) so hundreds of requests run in seconds.

Each property: every future settles; a failing request gets its own error; its batch mates give
exactly their solo result; queue, in-flight, streams and the backend's slots return to zero; no
thread is left behind.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from engine_fakes import PREPARE_FAULT_SR, FakeBackend, tone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from editx.config import EngineConfig
from editx.errors import (
    CancelledError,
    EngineClosedError,
    QueueFullError,
    StreamBackpressureError,
    StreamLimitError,
    ValidationError,
)
from editx.pipeline.engine import Engine
from editx.pipeline.types import CloneRequest, PromptAudio

WAIT_S = 60.0  # generous: the suite may run on a loaded machine


def make(backend=None, cache=None, **config) -> Engine:
    eng = Engine(EngineConfig(**config), backend or FakeBackend(), cache)
    eng.ready = True
    return eng


def request(i: int, fault: str | None = None, seed: int | None = None) -> CloneRequest:
    text = f"request {i}" + (f" fail:{fault}" if fault and fault not in ("prepare", "cancel") else "")
    audio = tone(seed=i)
    if fault == "prepare":
        audio = PromptAudio(audio.samples, PREPARE_FAULT_SR)
    return CloneRequest(audio, "prompt", text, seed=1000 + i if seed is None else seed)


def solo(req: CloneRequest, seconds_per_job: float = 0.05) -> np.ndarray:
    """The request's audio when it runs alone on a fresh engine."""
    eng = make(FakeBackend(seconds_per_job=seconds_per_job))
    try:
        return eng.run(req, timeout=WAIT_S).audio
    finally:
        eng.close()


def assert_idle(eng: Engine, backend: FakeBackend) -> None:
    """Queue, in-flight and stream counts and the backend's slots back to zero. A future's waiters
    wake before its done callbacks (which release the counts) and the rest of its round have run,
    so this waits for them (synchronisation only)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        h = eng.health()
        idle = (h["queue_depth"], h["in_flight"], h["streams"], backend.slots) == (0, 0, 0, 0)
        if idle or time.monotonic() > deadline:
            break
        time.sleep(0.005)
    assert (h["queue_depth"], h["in_flight"], h["streams"]) == (0, 0, 0), h
    assert backend.slots == 0


def hold(eng: Engine) -> threading.Event:
    """Keep the worker busy until the returned event is set, so what is submitted meanwhile batches."""
    gate = threading.Event()
    eng._q.call(gate.wait)
    return gate


def read_all(stream, into: list) -> None:
    try:
        into.extend(c.samples for c in stream)
    except Exception:  # noqa: BLE001 - the test reads the request's error from its future
        pass


FAULTS = st.sampled_from([None, None, None, "round", "job", "emit", "prepare", "check", "cancel"])


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=st.lists(st.tuples(FAULTS, st.booleans()), min_size=1, max_size=8),
       max_batch=st.integers(1, 4))
def test_random_failures_stay_with_their_request(plan, max_batch):
    threads_before = {t.ident for t in threading.enumerate()}
    backend = FakeBackend(seconds_per_job=0.05)  # as solo()
    eng = make(backend, max_batch=max_batch, queue_size=16)
    gate = hold(eng)
    outcomes: list = []  # (index, fault, streamed, future or error)
    readers = []
    for i, (fault, streamed) in enumerate(plan):
        req = request(i, fault)
        try:
            if fault == "emit":
                def emit(chunk, i=i):
                    raise RuntimeError(f"consumer {i} went away")
                fut = eng.submit(req, emit=emit, keep_audio=False)
            elif streamed:
                stream = eng.stream(req)
                got: list = []
                t = threading.Thread(target=read_all, args=(stream, got))
                t.start()
                readers.append(t)
                fut = (stream, got)
            else:
                fut = eng.submit(req)
            if fault == "cancel":
                eng.cancel(fut[0].future if isinstance(fut, tuple) else fut)
        except ValidationError as exc:
            assert fault == "check" and f"request {i}" in str(exc)
            continue
        outcomes.append((i, fault, fut))
    gate.set()
    for t in readers:
        t.join(WAIT_S)
        assert not t.is_alive(), "a stream reader never saw the end of its stream"
    for i, fault, fut in outcomes:
        future = fut[0].future if isinstance(fut, tuple) else fut
        try:
            result = future.result(timeout=WAIT_S)
        except CancelledError:
            assert fault == "cancel"
            continue
        except RuntimeError as exc:  # its own error, never a batch mate's
            assert fault in ("round", "job", "emit", "prepare"), (fault, exc)
            if fault != "prepare":
                assert f"{i}" in str(exc)
            continue
        assert fault in (None, "cancel"), (i, fault)  # a cancel that came after the end is fine
        audio = np.concatenate(fut[1]) if isinstance(fut, tuple) else result.audio
        assert np.array_equal(audio, solo(request(i, None if fault == "cancel" else fault)))
    assert_idle(eng, backend)
    assert backend.max_slots <= max_batch
    eng.close()
    assert not eng._worker.is_alive()
    leaked = [t for t in threading.enumerate() if t.ident not in threads_before and t.is_alive()]
    assert leaked == []


def test_worker_cannot_wedge_submitters_and_warm_prompt_queue_size_2(tmp_path):
    """Issue 15, point 1: 4 submitters and warm_prompt against a queue of 2 used to block the worker
    on its own queue forever. Every caller must finish (served or refused), and the engine stays alive."""
    from editx.cache import TieredCache

    backend = FakeBackend(seconds_per_job=0.01)
    eng = make(backend, TieredCache(2**20, None, 0), queue_size=2, max_batch=2)
    served, refused, errors = [], [], []

    def submitter(k: int) -> None:
        for j in range(15):
            try:
                served.append(eng.run(request(100 * k + j), timeout=WAIT_S))
            except QueueFullError as exc:
                assert exc.retry_after_s >= 1
                refused.append(k)
            except Exception as exc:  # noqa: BLE001 - collected, asserted empty below
                errors.append(exc)

    def warmer() -> None:
        for j in range(15):
            try:
                eng.warm_prompt(tone(seed=500 + j))
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

    threads = [threading.Thread(target=submitter, args=(k,)) for k in range(4)]
    threads.append(threading.Thread(target=warmer))
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    assert not any(t.is_alive() for t in threads), "a caller is blocked: the worker wedged"
    assert errors == [] and len(served) + len(refused) == 60 and served
    assert eng.alive and eng.health()["stuck"] is False
    assert_idle(eng, backend)
    eng.close()


def run_in_thread(fn):
    """fn() in a thread; (returned, raised) once it ends, or AssertionError if it blocks."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001
            box["error"] = exc

    t = threading.Thread(target=target)
    t.start()
    t.join(WAIT_S)
    assert not t.is_alive(), "the call blocked"
    return box.get("value"), box.get("error")


def test_a_closed_engine_refuses_at_once(tmp_path):
    from editx.cache import TieredCache

    eng = make(cache=TieredCache(2**20, None, 0))
    eng.close()
    assert not eng.alive and eng.health()["closed"]
    for fn in (lambda: eng._call(lambda: 1), lambda: eng.warm_prompt(tone()), lambda: eng.submit(request(1)),
               lambda: eng.stream(request(2)), lambda: eng.run(request(3))):
        _, err = run_in_thread(fn)
        assert isinstance(err, EngineClosedError) and "closed" in str(err)


def test_close_drains_within_grace_then_fails_the_rest():
    backend = FakeBackend(seconds_per_job=0.01)
    eng = make(backend, max_batch=1)
    gate = hold(eng)
    futs = [eng.submit(request(i)) for i in range(3)]
    threading.Timer(0.2, gate.set).start()
    eng.close(grace_s=WAIT_S)  # drains: all three finish
    assert all(f.result(timeout=1).audio.size for f in futs)
    with pytest.raises(EngineClosedError):
        eng.submit(request(9))

    stuck = threading.Event()
    backend = FakeBackend(gate=stuck)
    eng = make(backend, max_batch=1)
    futs = [eng.submit(request(i)) for i in range(3)]
    threading.Timer(0.5, stuck.set).start()  # the round in progress ends after the grace period
    eng.close(grace_s=0.1)
    for f in futs:
        err = f.exception(timeout=WAIT_S)
        assert err is None or isinstance(err, EngineClosedError)
    assert any(isinstance(f.exception(), EngineClosedError) for f in futs)
    assert "grace period" in str(next(f.exception() for f in futs if f.exception()))
    assert not eng._worker.is_alive()


def test_health_reports_a_stuck_worker_and_recovers():
    gate = threading.Event()
    eng = make(FakeBackend(gate=gate), stuck_after_s=0.2)
    assert eng.health()["alive"] and not eng.health()["stuck"]
    fut = eng.submit(request(1))
    deadline = time.monotonic() + WAIT_S
    while not eng.health()["stuck"] and time.monotonic() < deadline:
        time.sleep(0.02)
    h = eng.health()
    assert h["stuck"] and not h["alive"] and not eng.alive and h["heartbeat_age_s"] > 0.2 and h["in_flight"] == 1
    gate.set()
    assert fut.result(timeout=WAIT_S).audio.size
    assert not eng.health()["stuck"] and eng.alive
    eng.close()


def test_stream_limit_is_its_own_429_and_frees_with_the_stream():
    gate = threading.Event()
    eng = make(FakeBackend(gate=gate), max_streams=1)
    first = eng.stream(request(1))
    with pytest.raises(StreamLimitError, match="max_streams") as err:
        eng.stream(request(2))
    assert isinstance(err.value, QueueFullError) and err.value.retry_after_s >= 1
    assert eng.submit(request(3))  # a non-streaming request is not counted against streams
    gate.set()
    assert sum(c.samples.size for c in first) > 0 and first.result is not None
    with eng.stream(request(4)) as again:  # the slot came back
        assert sum(c.samples.size for c in again) > 0
    eng.close()


def test_slow_reader_pauses_its_stream_then_a_stalled_one_is_cancelled():
    """Backpressure: a long-form stream whose reader is more than stream_buffer_s behind waits between
    rounds (the worker serves others meanwhile); a reader that stops for stream_stall_s loses it."""
    backend = FakeBackend(seconds_per_job=1.0, segments_text=True)
    eng = make(backend, stream_buffer_s=2.0, stream_stall_s=0.5, segment_max_chars=20)
    text = " ".join(f"Sentence number {k} is here." for k in range(12))
    stalled = eng.stream(CloneRequest(tone(), "prompt", text, seed=1))
    other = eng.run(request(7), timeout=WAIT_S)  # served while the stream is paused
    assert other.audio.size
    stalled.future.exception(timeout=WAIT_S)  # nobody reads: cancelled once idle for stream_stall_s
    with pytest.raises(StreamBackpressureError, match="read nothing"):
        list(stalled)
    eng.close()
    eng = make(backend, stream_buffer_s=2.0, stream_stall_s=WAIT_S, segment_max_chars=20)  # a loaded machine
    reader = eng.stream(CloneRequest(tone(), "prompt", text, seed=1))
    got = []
    for chunk in reader:
        got.append(chunk.samples)
        time.sleep(0.01)
    assert sum(g.size for g in got) >= 12 * 1000 and reader.result is not None
    assert_idle(eng, backend)
    eng.close()


def test_prompt_length_is_checked_before_admission():
    eng = make(min_prompt_s=0.5, max_prompt_s=5.0)
    with pytest.raises(ValidationError, match=r"0\.05 s.*minimum is 0\.5 s \(min_prompt_s\)"):
        eng.submit(CloneRequest(tone(0.05), "p", "t"))
    with pytest.raises(ValidationError, match=r"6\.0 s.*maximum is 5 s \(max_prompt_s\)"):
        eng.submit(CloneRequest(tone(6.0), "p", "t"))
    assert eng.health()["queue_depth"] == 0 and eng.run(request(1), timeout=WAIT_S).audio.size
    eng.close()


def test_lm_window_refuses_a_prompt_too_long_before_any_work():
    from editx.config import SamplingConfig
    from editx.pipeline.stepaudio import StepAudioBackend

    backend = StepAudioBackend.__new__(StepAudioBackend)  # check() needs only the config
    backend.config = EngineConfig(sampling=SamplingConfig(max_length=8192))
    long = CloneRequest(tone(240.0, sr=1000), "p", "t")
    with pytest.raises(ValidationError, match=r"240\.0 s.*8192 \(max_length\).*under 195 s"):
        backend.check(long)
    backend.check(CloneRequest(tone(30.0, sr=1000), "p", "t"))


def test_failures_are_counted_once_with_their_backend_and_cache_tiers_that_exist():
    pytest.importorskip("prometheus_client")
    from editx.cache import TieredCache
    from editx.telemetry.metrics import get_metrics

    v = get_metrics().registry.get_sample_value

    def count(status):
        return v("editx_requests_total", {"op": "clone", "status": status, "backend": "fake"}) or 0

    def lookups(tier, result):
        return v("editx_cache_lookups_total", {"tier": tier, "result": result}) or 0

    ok0, err0, miss0, disk0 = count("ok"), count("error"), lookups("memory", "miss"), lookups("disk", "miss")
    eng = make(cache=TieredCache(2**20, None, 0))
    eng.run(request(1), timeout=WAIT_S)
    with pytest.raises(RuntimeError):
        eng.run(request(2, "job"), timeout=WAIT_S)
    assert count("ok") - ok0 == 1 and count("error") - err0 == 1
    assert lookups("memory", "miss") - miss0 == 2 and lookups("disk", "miss") == disk0  # no disk tier here
    assert_idle(eng, eng.backend)
    deadline = time.monotonic() + WAIT_S  # the worker sets the gauges after each round
    while v("editx_in_flight") and time.monotonic() < deadline:
        time.sleep(0.005)
    assert v("editx_queue_depth") == 0 and v("editx_in_flight") == 0
    eng.close()


def test_a_prompt_another_process_encodes_parks_its_job_not_the_worker(tmp_path):
    """Issue 15, point 7: while another process holds a prompt's cache lock, its job waits parked and
    the worker serves the rest of the queue; once the lock goes, the job finishes normally."""
    import os
    import socket

    from editx.cache import TieredCache
    from editx.pipeline.backends import prompt_cache_key

    backend = FakeBackend(seconds_per_job=0.05)  # as solo()
    cache = TieredCache(2**20, tmp_path, 2**30)
    eng = make(backend, cache)
    locked = request(1)
    lock = tmp_path / f".{prompt_cache_key(backend, locked.prompt_audio)}.lock"
    lock.write_text(f"{socket.gethostname()}:{os.getpid()}:someone-else")  # a live holder
    parked = eng.submit(locked)
    others = [eng.run(request(i), timeout=WAIT_S) for i in range(2, 5)]
    assert all(r.audio.size for r in others) and not parked.done()
    lock.unlink()
    result = parked.result(timeout=WAIT_S)
    assert np.array_equal(result.audio, solo(locked)) and result.timeline["cache"]["prompt"] == "miss"
    eng.close()


def test_a_worker_that_dies_fails_what_it_holds_and_reports_dead():
    gate = threading.Event()
    eng = make(FakeBackend(gate=gate), max_batch=1)
    first = eng.submit(request(1))
    deadline = time.monotonic() + WAIT_S
    while eng.health()["in_flight"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    second = eng.submit(request(2))  # waits in the queue behind the first round

    def broken() -> list:
        raise RuntimeError("a bug in the worker loop")

    eng._next_batch = broken  # the next loop after the first round hits it
    gate.set()
    assert first.result(timeout=WAIT_S).audio.size
    err = second.exception(timeout=WAIT_S)
    assert isinstance(err, EngineClosedError) and "worker stopped" in str(err)
    h = eng.health()
    assert not h["alive"] and not h["worker_running"] and not eng.alive
    _, err = run_in_thread(lambda: eng._call(lambda: 1))
    assert isinstance(err, EngineClosedError)
    eng.close()  # closing a dead engine returns at once
