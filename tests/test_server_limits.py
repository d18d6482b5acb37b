"""The server's limits over real HTTP, each mixed with good requests: 413 for any oversize body on
every route, a stalled voice store that leaves /healthz answering, prompt length bounds, the
bound on open streams, disconnects that cancel, and a shutdown that drains and closes the engine."""

from __future__ import annotations

import base64
import concurrent.futures as cf
import io
import threading
import time

import numpy as np
import pytest
import soundfile as sf
from conftest import speechlike
from live_server import LiveServer

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from editx.audio.io import AudioTooLongError, encode_audio, load_audio  # noqa: E402
from editx.server.app import create_app  # noqa: E402
from editx.server.settings import ServerSettings  # noqa: E402
from editx.server.voices import SQLiteVoiceStore  # noqa: E402

pytestmark = pytest.mark.slow

LIMIT = 300_000  # bytes: a 2 s float32 clip (128 kB) fits, the oversize bodies below do not
WAIT_S = 120  # generous: the suite must pass on a loaded machine


def wav_bytes(audio=None) -> bytes:
    audio = audio or speechlike()
    buf = io.BytesIO()
    sf.write(buf, audio.samples, audio.sample_rate, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def settings(tmp_path, **kw) -> ServerSettings:
    kw.setdefault("warm_builtin_voices", False)  # /readyz would say "warming" while lite matches 16 voices
    return ServerSettings(data_dir=tmp_path / "data", max_request_bytes=LIMIT, **kw)


def register(c, seed: int = 0) -> str:
    r = c.post("/v1/voices", files={"file": ("r.wav", wav_bytes(speechlike(seed=seed)), "audio/wav")},
               data={"prompt_text": "hello world"})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def speech(vid: str, seed: int = 1, **kw) -> dict:
    return {"input": "good morning", "voice": vid, "response_format": "pcm", "editx": {"seed": seed}, **kw}


def chunked(total: int, piece: int = 64 * 1024):
    """A body of `total` bytes sent with Transfer-Encoding: chunked (no Content-Length)."""
    sent = 0
    while sent < total:
        n = min(piece, total - sent)
        sent += n
        yield b"x" * n


def multipart(fields: dict, data: bytes, boundary: str = "editxboundary") -> tuple[dict, bytes]:
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
                 f"Content-Type: audio/wav\r\n\r\n".encode() + data + b"\r\n")
    return {"content-type": f"multipart/form-data; boundary={boundary}"}, b"".join(parts) + f"--{boundary}--\r\n".encode()


@pytest.fixture()
def live(make_engine, tmp_path):
    engine = make_engine(max_streams=2)
    with LiveServer(create_app(engine, settings=settings(tmp_path))) as srv:
        with httpx.Client(base_url=srv.url, timeout=WAIT_S) as c:
            yield srv, c, engine


def oversize_requests(vid: str):
    """(route, headers, body) for every route that takes a body, each over LIMIT."""
    big_wav = b"RIFF" + b"\0" * (LIMIT + 1000)
    h_mp, mp = multipart({"prompt_text": "hello"}, big_wav)
    h_ed, ed = multipart({"audio_text": "hi", "edit_type": "vad"}, big_wav)
    js = {"content-type": "application/json"}
    edit_json = b'{"audio_text": "hi", "edit_type": "vad", "audio_base64": "' + base64.b64encode(big_wav) + b'"}'
    return [("/v1/voices", h_mp, mp), ("/v1/audio/edits", h_ed, ed), ("/v1/audio/edits", js, edit_json),
            ("/v1/audio/speech", js, b'{"input": "' + b"a" * (LIMIT + 10) + b'", "voice": "' + vid.encode() + b'"}'),
            ("/v1/voices/" + vid, js, b"x" * (LIMIT + 1)), ("/v1/cache/clear", js, b"x" * (LIMIT + 1))]


def test_oversize_bodies_get_413_on_every_route_chunked_or_not(live):
    srv, c, _ = live
    vid = register(c)
    good = c.post("/v1/audio/speech", json=speech(vid)).content
    cases = []
    for path, headers, body in oversize_requests(vid):
        cases.append((path, headers, body))  # Content-Length: refused from the header
        cases.append((path, headers, chunked(len(body))))  # chunked: refused by counting
    cases.append(("/v1/audio/speech", {"content-type": "application/json"}, chunked(64 * 2**20)))  # 64 MiB upload

    def send(case):
        path, headers, body = case
        if not isinstance(body, bytes):
            body = chunked(sum(len(p) for p in body))  # a fresh generator per attempt
        with httpx.Client(base_url=srv.url, timeout=WAIT_S) as own:
            return own.post(path, headers=headers, content=body)

    with cf.ThreadPoolExecutor(6) as pool:  # bad and good requests at once
        goods = [pool.submit(c.post, "/v1/audio/speech", json=speech(vid)) for _ in range(3)]
        bads = list(pool.map(send, cases))
        assert [g.result(WAIT_S).content for g in goods] == [good] * 3
    for (path, _, _), r in zip(cases, bads):
        assert r.status_code == 413, (path, r.status_code, r.text)
        err = r.json()["error"]
        assert err["type"] == "too_large" and f"{LIMIT} byte limit" in err["message"], (path, err)
        assert "Traceback" not in r.text
    assert c.post("/v1/audio/speech", json=speech(vid)).content == good  # and the server is fine after


class StallingStore(SQLiteVoiceStore):
    """A store whose `get` blocks until released, like a Redis that stopped answering."""

    def __init__(self, data_dir) -> None:
        super().__init__(data_dir)
        self.stalled, self.release = threading.Event(), threading.Event()
        self.stall = False

    def get(self, voice_id):
        if self.stall:
            self.stalled.set()
            self.release.wait(WAIT_S)
        return super().get(voice_id)


def test_a_stalled_voice_store_leaves_healthz_and_other_routes_answering(make_engine, tmp_path):
    store = StallingStore(tmp_path / "store")
    app = create_app(make_engine(), settings=settings(tmp_path), store=store)
    with LiveServer(app) as srv, httpx.Client(base_url=srv.url, timeout=WAIT_S) as c, cf.ThreadPoolExecutor(4) as pool:
        vid = register(c)
        store.stall = True
        stuck = [pool.submit(c.post, "/v1/audio/speech", json=speech(vid)) for _ in range(2)]
        assert store.stalled.wait(WAIT_S), "the speech request never reached the store"
        # the loop is free: health, readiness and an edit (no store involved) are answered meanwhile
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/readyz").status_code == 200
        r = c.post("/v1/audio/edits", files={"file": ("a.wav", wav_bytes(), "audio/wav")},
                   data={"audio_text": "hello world", "edit_type": "vad", "seed": "1"})
        assert r.status_code == 200, r.text
        assert not any(f.done() for f in stuck)
        store.stall = False
        store.release.set()
        assert [f.result(WAIT_S).status_code for f in stuck] == [200, 200]


def test_prompt_length_bounds_named_in_the_message(live, tmp_path):
    srv, c, _ = live
    short = speechlike(seconds=0.3)
    long = speechlike(seconds=61)
    r = c.post("/v1/voices", files={"file": ("a.wav", wav_bytes(short), "audio/wav")}, data={"prompt_text": "hi"})
    assert r.status_code == 400 and "0.30 s long; the minimum is 0.5 s" in r.json()["error"]["message"], r.text
    silent_minute = encode_audio(np.zeros(61 * 16000, np.float32), 16000, "flac")  # a few kB: under the body limit
    r = c.post("/v1/voices", files={"file": ("a.flac", silent_minute, "audio/flac")},
               data={"prompt_text": "hi"})
    assert r.status_code == 413 and "61.0 s long; the limit is 60 s" in r.json()["error"]["message"], r.text
    # a voice stored before the bounds were set is refused from its metadata, before its audio is read
    store = SQLiteVoiceStore(tmp_path / "data")
    from editx.pipeline.types import PromptAudio

    old = store.add("old", "hello", PromptAudio(long.samples, long.sample_rate))
    r = c.post("/v1/audio/speech", json=speech(old.id))
    assert r.status_code == 413 and f"voice {old.id}" in r.json()["error"]["message"]
    r = c.post("/v1/audio/edits", files={"file": ("a.wav", wav_bytes(short), "audio/wav")},
               data={"audio_text": "hi", "edit_type": "vad"})
    assert r.status_code == 400 and "minimum is 0.5 s" in r.json()["error"]["message"]


def test_a_long_file_is_refused_before_it_is_decoded(monkeypatch):
    ten_minutes = np.zeros(600 * 8000, np.float32)
    wav, mp3 = encode_audio(ten_minutes, 8000, "wav"), encode_audio(ten_minutes[: 70 * 8000], 8000, "mp3")

    def never(*_a, **_k):
        raise AssertionError("decoded a file whose header already showed it is too long")

    monkeypatch.setattr(sf.SoundFile, "blocks", never)
    with pytest.raises(AudioTooLongError, match="600.0 s long; the limit is 60 s"):
        load_audio(wav, max_seconds=60)
    import av.container

    monkeypatch.setattr(av.container.InputContainer, "decode", never)
    with pytest.raises(AudioTooLongError, match="the limit is 60 s"):
        load_audio(mp3, max_seconds=60)


def wait_until(cond, what: str, limit_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + limit_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit_s} s waiting for {what}")
        time.sleep(0.05)


def test_stream_bound_429_and_a_disconnect_cancels_and_frees_its_slot(live, monkeypatch):
    from editx.errors import CancelledError

    srv, c, engine = live
    vid = register(c)
    gate, futures, streamed = threading.Event(), [], []
    run_round, submit, stream = engine.backend.run_round, engine.submit, engine.stream

    def gated_round(jobs, done):
        assert gate.wait(WAIT_S)
        return run_round(jobs, done)

    def recording_submit(*a, **kw):
        futures.append(submit(*a, **kw))
        return futures[-1]

    def recording_stream(*a, **kw):
        s = stream(*a, **kw)
        streamed.append(s.future)
        return s

    monkeypatch.setattr(engine.backend, "run_round", gated_round)  # streams stay open until the gate opens
    monkeypatch.setattr(engine, "submit", recording_submit)
    monkeypatch.setattr(engine, "stream", recording_stream)
    body = speech(vid, stream_format="audio", response_format="wav")
    with cf.ThreadPoolExecutor(2) as pool, c.stream("POST", "/v1/audio/speech", json=body) as a:
        whole = pool.submit(c.post, "/v1/audio/speech", json=speech(vid))
        with httpx.Client(base_url=srv.url, timeout=WAIT_S) as other, \
                other.stream("POST", "/v1/audio/speech", json=body) as b:
            assert a.status_code == 200 and b.status_code == 200
            b_bytes = b.iter_raw()  # (kept: a dropped iterator closes its response)
            assert next(b_bytes)[:4] == b"RIFF"  # the header went out; no audio yet
            third = c.post("/v1/audio/speech", json=body)  # both slots taken
            assert third.status_code == 429 and int(third.headers["retry-after"]) >= 1
            assert "2 streams are open, the limit is 2" in third.json()["error"]["message"]
        # b's client left: the server cancels its job at once (before any of it ran)
        wait_until(lambda: streamed[1].job.cancelled.is_set(), "the server to cancel the disconnected stream")
        gate.set()
        wav = b"".join(a.iter_bytes())
        assert wav[:4] == b"RIFF" and len(wav) > 44
        assert whole.result(WAIT_S).status_code == 200  # whole-file requests never needed a stream slot
    wait_until(lambda: engine.health()["streams"] == 0 and engine.queue_depth == 0, "every slot to be released")
    cancelled = [f for f in futures + streamed if isinstance(f.exception(), CancelledError)]
    assert len(futures) == 1 and len(streamed) == 2 and cancelled == [streamed[1]]  # b's alone
    with c.stream("POST", "/v1/audio/speech", json=body) as r:
        assert r.status_code == 200 and len(b"".join(r.iter_bytes())) > 44


def test_shutdown_lets_a_stream_finish_then_closes_engine_and_cache(make_engine, tmp_path, monkeypatch):
    engine = make_engine()
    gate, closed = threading.Event(), []
    run_round = engine.backend.run_round
    monkeypatch.setattr(engine.backend, "run_round", lambda jobs, done: gate.wait(WAIT_S) and run_round(jobs, done))
    cache_close = engine.cache.close
    monkeypatch.setattr(engine.cache, "close", lambda: closed.append("cache") or cache_close())
    srv = LiveServer(create_app(engine, settings=settings(tmp_path), owns_engine=True), grace_s=WAIT_S)
    with srv, httpx.Client(base_url=srv.url, timeout=WAIT_S) as c:
        vid = register(c)
        with c.stream("POST", "/v1/audio/speech", json=speech(vid, stream_format="audio", response_format="wav")) as r:
            chunks = r.iter_raw()
            assert next(chunks)[:4] == b"RIFF"
            stopper = threading.Thread(target=srv.stop)
            stopper.start()  # SIGTERM, in effect: the server stops taking requests, the stream goes on
            wait_until(lambda: srv.server.should_exit, "the server to begin its shutdown")
            assert engine.alive and not closed
            gate.set()
            rest = b"".join(chunks)
        assert len(rest) > 0 and r.status_code == 200
        stopper.join(WAIT_S)
    assert not stopper.is_alive() and not engine.alive and closed == ["cache"]


def test_healthz_reports_a_dead_model_worker(make_engine, tmp_path):
    from fastapi.testclient import TestClient

    engine = make_engine()
    with TestClient(create_app(engine, settings=settings(tmp_path))) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        engine.close()
        r = c.get("/healthz")
        assert r.status_code == 503 and "engine is closed" in r.json()["error"] and r.json()["closed"] is True
