"""Chaos over real HTTP: valid, invalid, oversize, cancelled and disconnected requests at once.

Every valid request must get exactly the bytes it gets alone (same seed), every invalid one its
own clear 4xx, and afterwards the server must be back where it started: no stream slot, queue
entry, in-flight gauge or thread left behind, and a valid request answered at once.
"""

from __future__ import annotations

import concurrent.futures as cf
import io
import re
import threading
import time

import pytest
import soundfile as sf
from conftest import speechlike
from live_server import LiveServer

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from editx.pipeline.types import PromptAudio  # noqa: E402
from editx.server.app import create_app  # noqa: E402
from editx.server.settings import ServerSettings  # noqa: E402
from editx.server.voices import SQLiteVoiceStore  # noqa: E402

pytestmark = pytest.mark.slow

LIMIT = 300_000
WAIT_S = 180  # per request; generous, the suite runs on loaded machines


def wav_bytes(audio) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio.samples, audio.sample_rate, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def speech(vid: str, seed: int, **kw) -> dict:
    return {"input": f"chaos number {seed}", "voice": vid, "response_format": "pcm", "editx": {"seed": seed}, **kw}


def chunked(total: int, piece: int = 256 * 1024):
    for start in range(0, total, piece):
        yield b"x" * min(piece, total - start)


class Client:
    """One kind of request, run on its own connection; returns what the test compares."""

    def __init__(self, url: str, vid: str, too_long: str) -> None:
        self.url, self.vid, self.too_long = url, vid, too_long

    def run(self, kind: str, seed: int = 0):
        with httpx.Client(base_url=self.url, timeout=WAIT_S) as c:
            return getattr(self, kind)(c, seed)

    # ---- valid ---------------------------------------------------------------------------------
    def speech(self, c, seed):
        r = c.post("/v1/audio/speech", json=speech(self.vid, seed))
        return r.status_code, r.content

    def stream(self, c, seed):
        with c.stream("POST", "/v1/audio/speech", json=speech(self.vid, seed, stream_format="audio")) as r:
            return r.status_code, b"".join(r.iter_bytes())

    def edit(self, c, seed):
        r = c.post("/v1/audio/edits", files={"file": ("a.wav", wav_bytes(speechlike(seed=3)), "audio/wav")},
                   data={"audio_text": "hello world", "edit_type": "style", "edit_info": "whisper",
                         "seed": str(seed), "response_format": "pcm"})
        return r.status_code, r.content

    # ---- invalid: (status, error message) -----------------------------------------------------------
    def unknown_voice(self, c, seed):
        r = c.post("/v1/audio/speech", json=speech("voice_00000000000000ff", seed))
        return r.status_code, r.json()["error"]["message"]

    def malformed(self, c, seed):
        r = c.post("/v1/audio/speech", content=b'{"input": "half a body', headers={"content-type": "application/json"})
        return r.status_code, r.json()["error"]["message"]

    def too_long_voice(self, c, seed):
        r = c.post("/v1/audio/speech", json=speech(self.too_long, seed))
        return r.status_code, r.json()["error"]["message"]

    def too_short_prompt(self, c, seed):
        r = c.post("/v1/voices", files={"file": ("a.wav", wav_bytes(speechlike(seconds=0.05)), "audio/wav")},
                   data={"prompt_text": "hi"})
        return r.status_code, r.json()["error"]["message"]

    def oversize(self, c, seed):
        r = c.post("/v1/audio/edits", content=chunked(64 * 2**20), headers={"content-type": "application/json"})
        return r.status_code, r.json()["error"]["message"]

    # ---- clients that give up ------------------------------------------------------------------
    def cancelled(self, c, seed):
        """Gives up after 0.2 s of waiting (if the answer came first, it must be the right one)."""
        try:
            r = c.post("/v1/audio/speech", json=speech(self.vid, seed), timeout=0.2)
        except httpx.TimeoutException:
            return "gave up", None
        return r.status_code, r.content

    def disconnected(self, c, seed):
        with c.stream("POST", "/v1/audio/speech", json=speech(self.vid, seed, stream_format="audio")) as r:
            first = next(r.iter_raw(), b"")
        return "left", (r.status_code, len(first) > 0)


INVALID = {"unknown_voice": (404, "unknown voice"), "malformed": (422, "JSON"),
           "too_long_voice": (413, "the limit is 60 s"), "too_short_prompt": (400, "the minimum is 0.5 s"),
           "oversize": (413, f"{LIMIT} byte limit")}
VALID = ("speech", "stream", "edit")


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


def non_pool_threads() -> int:
    # idle threadpool workers linger by design (anyio reuses them); every other thread must be gone
    return sum(type(t).__name__ != "WorkerThread" for t in threading.enumerate())


def test_chaos_every_request_gets_its_own_answer_and_nothing_leaks(make_engine, tmp_path):
    engine = make_engine(max_streams=16)  # 10 clients at once: the stream bound is never what answers
    store = SQLiteVoiceStore(tmp_path / "data")
    app = create_app(engine, store=store, settings=ServerSettings(
        data_dir=tmp_path / "data", max_request_bytes=LIMIT))
    with LiveServer(app) as srv, httpx.Client(base_url=srv.url, timeout=WAIT_S) as c:
        r = c.post("/v1/voices", files={"file": ("r.wav", wav_bytes(speechlike(seed=7)), "audio/wav")},
                   data={"prompt_text": "hello world"})
        assert r.status_code == 201, r.text
        long = speechlike(seconds=61)  # stored before the server's bounds existed
        client = Client(srv.url, r.json()["id"], store.add("old", "hi", PromptAudio(long.samples, 16000)).id)
        alone = {(k, s): client.run(k, s) for k in VALID for s in (0, 1)}  # the serial reference
        assert all(status == 200 and len(body) > 0 for status, body in alone.values())
        base = settle(srv, engine)
        base_threads = non_pool_threads()

        plan = [(k, s) for k in VALID for s in (0, 1)] * 2 + [(k, 0) for k in INVALID] * 2
        plan += [("cancelled", s) for s in (0, 1)] + [("disconnected", s) for s in (0, 1)] * 2
        plan = plan[::2] + plan[1::2]  # interleave the kinds
        with cf.ThreadPoolExecutor(10) as pool:
            outcomes = list(pool.map(lambda ks: client.run(*ks), plan))

        for (kind, seed), (status, body) in zip(plan, outcomes):
            if kind in VALID:
                assert (status, body) == alone[(kind, seed)], f"{kind} seed {seed}: {status}"
            elif kind in INVALID:
                want, needle = INVALID[kind]
                assert status == want and needle in body and "Traceback" not in body, (kind, status, body)
            elif kind == "cancelled" and status != "gave up":
                assert (status, body) == alone[("speech", seed)], "a request that finished first is still right"
            elif kind == "disconnected":
                assert body == (200, True), body

        # everything is released: stream slots, the queue, threadpool threads, other threads, gauges
        assert settle(srv, engine) == base == {"streams": 0, "queue": 0, "in_flight": 0, "pool_threads_busy": 0,
                                               "store_threads_busy": 0}
        assert non_pool_threads() == base_threads
        text = c.get("/metrics").text
        for gauge in ("editx_queue_depth", "editx_in_flight"):
            assert metric(text, gauge) in (None, 0.0), (gauge, metric(text, gauge))
        assert c.get("/healthz").json() == {"status": "ok"}
        # and a valid request right after gets exactly its answer
        assert client.run("speech", 1) == alone[("speech", 1)]
        assert client.run("stream", 0) == alone[("stream", 0)]
