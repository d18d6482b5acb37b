"""HTTP API contract on the tiny fixture: every endpoint, its errors, auth, limits, concurrency."""

import base64
import io
import json
import threading

import pytest
import soundfile as sf
from conftest import assert_pcm_close, speechlike

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from editx.errors import ValidationError  # noqa: E402
from editx.server.app import create_app  # noqa: E402
from editx.server.settings import ServerSettings  # noqa: E402

pytestmark = pytest.mark.slow


def wav_bytes(audio=None) -> bytes:
    audio = audio or speechlike()
    buf = io.BytesIO()
    sf.write(buf, audio.samples, audio.sample_rate, format="WAV", subtype="FLOAT")
    return buf.getvalue()


@pytest.fixture()
def client(make_engine, tmp_path):
    eng = make_engine()
    app = create_app(eng, settings=ServerSettings(data_dir=tmp_path / "data", max_request_bytes=2_000_000,
                                                  max_audio_seconds=20))
    with TestClient(app) as c:
        yield c


@pytest.fixture()
def keyed_client(make_engine, tmp_path):
    app = create_app(make_engine(), settings=ServerSettings(data_dir=tmp_path / "d", api_keys=frozenset({"k1"})))
    with TestClient(app) as c:
        yield c


def register(c, **headers) -> str:
    r = c.post("/v1/voices", files={"file": ("ref.wav", wav_bytes(), "audio/wav")},
               data={"prompt_text": "hello world", "name": "tester"}, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_health_ready_models_edits(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    import time

    deadline = time.monotonic() + 300  # built-in voices are warmed in the background first
    while (ready := client.get("/readyz").json()["status"]) == "warming" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ready == "ready"
    models = client.get("/v1/models").json()
    assert models["data"][0]["backend"] == "editx"
    edits = client.get("/v1/edits").json()
    assert "happy" in edits["emotion"] and "vad" in edits
    assert "editx_" in client.get("/metrics").text or client.get("/metrics").status_code == 200


def test_voice_registry_and_speech(client):
    vid = register(client)
    listed = client.get("/v1/voices").json()["data"]
    assert [v["id"] for v in listed if not v["builtin"]] == [vid] and "alloy" in [v["id"] for v in listed]
    assert client.get(f"/v1/voices/{vid}").json()["prompt_text"] == "hello world"
    # registration warmed the cache: the first synthesis is already a hit
    r = client.post("/v1/audio/speech", json={"input": "good morning", "voice": vid, "response_format": "wav",
                                              "editx": {"seed": 3}})
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    timeline = json.loads(r.headers["x-editx-timeline"])
    assert timeline["cache"]["prompt"] in ("memory", "disk")
    audio, sr = sf.read(io.BytesIO(r.content), dtype="float32")
    assert sr == 24000 and audio.size > 0
    for fmt in ("flac", "mp3", "opus", "aac", "pcm"):
        r = client.post("/v1/audio/speech", json={"input": "hi", "voice": vid, "response_format": fmt,
                                                  "editx": {"seed": 3}})
        assert r.status_code == 200 and len(r.content) > 0, fmt
    assert client.delete(f"/v1/voices/{vid}").json()["deleted"] is True
    assert client.get(f"/v1/voices/{vid}").status_code == 404


def test_speech_with_instructions_runs_an_edit(client):
    vid = register(client)
    r = client.post("/v1/audio/speech", json={"input": "good", "voice": vid, "instructions": "emotion:happy",
                                              "editx": {"seed": 1}})
    assert r.status_code == 200
    names = [s["name"] for s in json.loads(r.headers["x-editx-timeline"])["stages"]]
    assert names.count("flow") == 2  # clone round + edit round


def test_streaming_wav_and_sse(client):
    vid = register(client)
    with client.stream("POST", "/v1/audio/speech", json={"input": "stream me", "voice": vid, "response_format": "wav",
                                                          "stream_format": "audio", "editx": {"seed": 2}}) as r:
        body = b"".join(r.iter_bytes())
    assert r.status_code == 200 and body[:4] == b"RIFF" and len(body) > 44
    r = client.post("/v1/audio/speech", json={"input": "stream me", "voice": vid, "stream_format": "sse",
                                              "response_format": "pcm", "editx": {"seed": 2}})
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1]["type"] == "speech.audio.done"
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta")
    assert pcm == body[44:]  # same seed, same audio as the chunked WAV
    done = events[-1]["editx"]  # how it went: the stream's own timeline
    assert 0 < done["ttfa_s"] <= done["total_s"] and done["audio_s"] == len(pcm) / 2 / 24000


@pytest.mark.parametrize("exc,message", [(MemoryError("out of memory"), "internal error (see the server log)"),
                                         (ValidationError("prompt too odd"), "prompt too odd")])
def test_sse_stream_that_fails_ends_with_an_error_event(client, monkeypatch, exc, message):
    vid = register(client)

    def broken(*_a, **_k):
        raise exc

    monkeypatch.setattr(client.app.state.holder.engine.backend.decoder, "prime_stream", broken)
    r = client.post("/v1/audio/speech", json={"input": "stream me", "voice": vid, "stream_format": "sse",
                                              "response_format": "pcm"})
    events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert r.status_code == 200 and events[-1]["type"] == "error"
    assert events[-1]["error"]["message"] == message and "Traceback" not in r.text


def test_edits_multipart_and_json(client):
    r = client.post("/v1/audio/edits", files={"file": ("in.wav", wav_bytes(), "audio/wav")},
                    data={"audio_text": "hello world", "edit_type": "style", "edit_info": "whisper", "seed": "4"})
    assert r.status_code == 200, r.text
    r2 = client.post("/v1/audio/edits", json={"audio_base64": base64.b64encode(wav_bytes()).decode(),
                                              "audio_text": "hello world", "edit_type": "style",
                                              "edit_info": "whisper", "seed": 4})
    assert r2.status_code == 200 and r2.content == r.content


@pytest.mark.parametrize("body,status,needle", [
    ({"input": "x", "voice": "voice_0123456789abcdef"}, 404, "unknown voice"),
    ({"input": "x", "voice": "../../etc/passwd"}, 404, "unknown voice"),
    ({"input": "", "voice": "alloy"}, 400, "text"),
    ({"input": "x", "voice": "v"}, 404, "alloy"),
    ({"input": "x", "voice": "v", "response_format": "aiff"}, 422, "response_format"),
    ({"input": "x", "voice": "v", "speed": 9}, 422, "speed"),
    ({"input": 3, "voice": "v"}, 422, "input"),
    ({"input": "x", "voice": "v", "surprise": 1}, 422, "surprise"),
])
def test_speech_errors_are_clear_json(client, body, status, needle):
    r = client.post("/v1/audio/speech", json=body)
    assert r.status_code == status
    err = r.json()["error"]
    assert needle in err["message"] and "Traceback" not in r.text


def test_edit_errors(client):
    def post(**data):
        return client.post("/v1/audio/edits", files={"file": ("in.wav", data.pop("audio", wav_bytes()))}, data=data)

    assert "allowed" in post(audio_text="t", edit_type="emotion", edit_info="ecstatic").json()["error"]["message"]
    assert post(audio_text="t", edit_type="reverb").status_code == 400
    bad = post(audio=b"this is not audio", audio_text="t", edit_type="vad")
    assert bad.status_code == 400 and "audio" in bad.json()["error"]["message"]
    long = speechlike(seconds=25)
    assert "the limit is 20 s" in post(audio=wav_bytes(long), audio_text="t", edit_type="vad").json()["error"]["message"]
    big = client.post("/v1/audio/edits", content=b"x" * 3_000_000, headers={"content-type": "application/json"})
    assert big.status_code == 413


def test_api_keys(keyed_client):
    c = keyed_client
    assert c.get("/healthz").status_code == 200
    assert c.get("/v1/voices").status_code == 401
    assert c.get("/v1/voices", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert c.post("/v1/cache/clear").status_code == 401
    ok = {"Authorization": "Bearer k1"}
    vid = register(c, **ok)
    assert c.delete(f"/v1/voices/{vid}").status_code == 401
    assert c.delete(f"/v1/voices/{vid}", headers=ok).status_code == 200
    assert c.post("/v1/cache/clear", headers=ok).json()["cleared"] is True


def test_concurrent_requests_all_answered_equal_to_serial(client):
    vid = register(client)
    n = 8

    def body(i):
        return {"input": f"request {i % 3}", "voice": vid, "response_format": "pcm", "editx": {"seed": i % 3}}

    serial = [client.post("/v1/audio/speech", json=body(i)).content for i in range(3)]
    results: list = [None] * n

    def worker(i):
        results[i] = client.post("/v1/audio/speech", json=body(i))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert all(r is not None and r.status_code == 200 for r in results)
    for i, r in enumerate(results):  # flow is batched across requests: equal within float32 rounding
        assert_pcm_close(r.content, serial[i % 3], what=f"request {i}")
