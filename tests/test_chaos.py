"""Chaos over real HTTP: valid, invalid, oversize, cancelled and disconnected requests at once.

Every valid request must get the audio it gets alone (same seed; within one 16-bit step, the rounding
of flow batched across requests), every invalid one its
own clear 4xx, and afterwards the server must be back where it started: no stream slot, queue
entry, in-flight gauge or thread left behind, and a valid request answered at once.
"""

from __future__ import annotations

import concurrent.futures as cf
import re
import threading
import time

import pytest
from conftest import speechlike
from live_server import LiveServer

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from editx.pipeline.types import PromptAudio  # noqa: E402
from editx.server.app import create_app  # noqa: E402
from editx.server.chaos import VALID, ChaosClient, mishandled, reference, same_audio, wav_bytes  # noqa: E402
from editx.server.settings import ServerSettings  # noqa: E402
from editx.server.voices import SQLiteVoiceStore  # noqa: E402

pytestmark = pytest.mark.slow

LIMIT = 300_000
WAIT_S = 180  # generous: the suite runs on loaded machines


def metric(text: str, name: str) -> float | None:
    m = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def settle(srv, engine, limit_s: float = WAIT_S) -> dict:
    """Wait until nothing is open or queued; returns what is held then."""
    from anyio.to_thread import current_default_thread_limiter

    def held():
        health = engine.health()
        return {"streams": health["streams"], "queue": health["queue_depth"], "in_flight": health["in_flight"],
                "pool_threads_busy": srv.in_loop(lambda: current_default_thread_limiter().borrowed_tokens),
                "store_threads_busy": srv.app.state.voices._limiter.borrowed_tokens}

    deadline = time.monotonic() + limit_s
    while any((now := held()).values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return now


def wait_ready(client, limit_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + limit_s
    while (r := client.get("/readyz")).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert r.status_code == 200, r.text


STARTUP_THREADS = ("editx-load", "editx-prepare")  # EngineHolder's start-up threads (editx/server/app.py)


def wait_gone(names: tuple[str, ...], limit_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + limit_s
    while (alive := [t.name for t in threading.enumerate() if t.name in names]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive, f"start-up threads still running after {limit_s} s: {alive}"


def non_pool_threads() -> int:
    # idle threadpool workers linger by design (anyio reuses them); every other thread must be gone
    return sum(type(t).__name__ != "WorkerThread" for t in threading.enumerate())


def test_chaos_every_request_gets_its_own_answer_and_nothing_leaks(make_engine, tmp_path):
    engine = make_engine(max_streams=16)  # 10 clients at once: the stream bound is never what answers
    store = SQLiteVoiceStore(tmp_path / "data")
    app = create_app(engine, store=store, settings=ServerSettings(
        data_dir=tmp_path / "data", max_request_bytes=LIMIT))
    with LiveServer(app) as srv, httpx.Client(base_url=srv.url, timeout=WAIT_S) as c:
        clip = speechlike(seed=7)
        r = c.post("/v1/voices", files={"file": ("r.wav", wav_bytes(clip.samples, clip.sample_rate), "audio/wav")},
                   data={"prompt_text": "hello world"})
        assert r.status_code == 201, r.text
        long, short, edit = speechlike(seconds=61), speechlike(seconds=0.05), speechlike(seed=3)
        client = ChaosClient(srv.url, r.json()["id"], store.add("old", "hi", PromptAudio(long.samples, 16000)).id,
                             wav_bytes(edit.samples, 16000), wav_bytes(short.samples, 16000), LIMIT, WAIT_S)
        errors = client.expected_errors(engine.config.min_prompt_s, engine.config.max_prompt_s)
        alone = reference(client, (0, 1))  # each valid request alone
        assert all(status == 200 and len(body) > 0 for status, body in alone.values())
        base = settle(srv, engine)
        wait_ready(c)  # start-up preparation (built-in voice warming) runs on a thread of its own: let it end first
        # /readyz says ready as the preparation finishes, a moment before its thread exits: wait for the exit
        wait_gone(STARTUP_THREADS)
        base_threads = non_pool_threads()

        plan = [(k, s) for k in VALID for s in (0, 1)] * 2 + [(k, 0) for k in errors] * 2
        plan += [("cancelled", s) for s in (0, 1)] + [("disconnected", s) for s in (0, 1)] * 2
        plan = plan[::2] + plan[1::2]  # interleave the kinds
        with cf.ThreadPoolExecutor(10) as pool:
            outcomes = list(pool.map(lambda ks: client.run(*ks), plan))
        problems = [mishandled(k, s, out, alone, errors) for (k, s), out in zip(plan, outcomes)]
        assert [p for p in problems if p] == []

        # everything is released: stream slots, the queue, threadpool threads, other threads, gauges
        assert settle(srv, engine) == base == {"streams": 0, "queue": 0, "in_flight": 0, "pool_threads_busy": 0,
                                               "store_threads_busy": 0}
        assert non_pool_threads() == base_threads
        text = c.get("/metrics").text
        for gauge in ("editx_queue_depth", "editx_in_flight"):
            assert metric(text, gauge) in (None, 0.0), (gauge, metric(text, gauge))
        assert c.get("/healthz").json() == {"status": "ok"}
        # and a valid request right after gets exactly its answer
        assert same_audio(client.run("speech", 1), alone[("speech", 1)])
        assert same_audio(client.run("stream", 0), alone[("stream", 0)])
