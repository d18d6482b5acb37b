"""The official `openai` client against a live editx server (lite backend, 127.0.0.1): every speech call,
built-in and custom voices with consent, all six formats decoded back, speed, instructions, streaming."""

import base64
import io
import json
import threading

import numpy as np
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

from editx.audio.io import load_audio  # noqa: E402
from editx.server.app import create_app  # noqa: E402
from editx.server.consent import CONSENT_PHRASE  # noqa: E402
from editx.server.settings import ServerSettings  # noqa: E402

pytestmark = pytest.mark.slow
TEXT = "Hello there, how are you?"
SAMPLE = "The garden is full of roses this summer, and the bees are busy all day long."


@pytest.fixture(scope="module")
def server(lite_engine, live_app, tmp_path_factory):
    settings = ServerSettings(data_dir=tmp_path_factory.mktemp("data"), warm_builtin_voices=False)
    return live_app(create_app(lite_engine, settings=settings))


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(api_key="unused", base_url=server + "/v1", max_retries=0, timeout=300)


def decode(data: bytes, fmt: str):
    if fmt == "pcm":
        return np.frombuffer(data, "<i2").astype(np.float32) / 32768.0, 24000
    clip = load_audio(io.BytesIO(data))
    return clip.samples, clip.sample_rate


def wav(samples, sr=24000) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, samples, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def test_builtin_voice_default_mp3(client):
    r = client.audio.speech.with_raw_response.create(model="gpt-4o-mini-tts", voice="alloy", input=TEXT)
    assert r.headers["content-type"] == "audio/mpeg"
    samples, sr = decode(r.content, "mp3")
    assert 0.8 < samples.size / sr < 6 and np.abs(samples).max() > 0.05


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav", "pcm"])
def test_every_format_decodes(client, fmt):
    data = client.audio.speech.create(model="tts-1", voice="coral", input="Good morning.", response_format=fmt).content
    samples, sr = decode(data, fmt)
    assert sr in (24000, 48000) and 0.4 < samples.size / sr < 4 and np.abs(samples).max() > 0.05


def test_speed_range_is_the_specs(client):
    def seconds(speed):
        data = client.audio.speech.create(model="tts-1", voice="echo", input=TEXT, response_format="wav",
                                          speed=speed).content
        samples, sr = decode(data, "wav")
        return samples.size / sr

    base, slow, fast = seconds(1.0), seconds(0.25), seconds(4.0)
    assert slow / base == pytest.approx(4.0, rel=0.25)  # Kokoro at 0.5, then WSOLA ×0.5
    assert base / fast == pytest.approx(4.0, rel=0.25)


def test_instructions_in_plain_words(client):
    r = client.audio.speech.with_raw_response.create(model="tts-1", voice="nova", input=TEXT, response_format="wav",
                                                     instructions="a bit faster, please")
    assert r.headers["x-editx-edits"] == "speed:faster"
    with pytest.raises(openai.BadRequestError) as err:  # lite cannot do emotions: says what was understood
        client.audio.speech.create(model="tts-1", voice="nova", input=TEXT, instructions="Speak cheerfully")
    assert "emotion:happy" in str(err.value) and "Step-Audio-EditX" in str(err.value)
    with pytest.raises(openai.BadRequestError) as err:
        client.audio.speech.create(model="tts-1", voice="nova", input=TEXT, instructions="talk in purple")
    assert "closest" in str(err.value)


def test_sse_events_have_the_specs_shape(client):
    with client.audio.speech.with_streaming_response.create(model="gpt-4o-mini-tts", voice="sage", input=TEXT,
                                                            response_format="pcm", stream_format="sse") as r:
        events = [json.loads(line[5:]) for line in r.iter_lines() if line.startswith("data:")]
    deltas, done = events[:-1], events[-1]
    assert deltas and all(set(e) == {"type", "audio"} and e["type"] == "speech.audio.delta" for e in deltas)
    pcm = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    assert len(pcm) > 24000  # > 0.5 s of 16-bit audio
    assert done["type"] == "speech.audio.done"
    u = done["usage"]
    assert u["input_tokens"] == len(TEXT) and u["total_tokens"] == u["input_tokens"] + u["output_tokens"]


def test_audio_stream_and_formats_that_cannot_stream(client):
    with client.audio.speech.with_streaming_response.create(model="tts-1", voice="ash", input=TEXT,
                                                            response_format="wav", stream_format="audio") as r:
        data = r.read()
    assert data[:4] == b"RIFF" and len(data) > 44 + 24000
    with pytest.raises(openai.BadRequestError) as err:
        client.audio.speech.create(model="tts-1", voice="ash", input=TEXT, stream_format="audio")
    assert "wav or pcm" in str(err.value)


def test_unknown_voice_lists_names(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.audio.speech.create(model="tts-1", voice="nobody", input=TEXT)
    assert "alloy" in str(err.value)
    with pytest.raises(openai.NotFoundError):
        client.audio.speech.create(model="tts-1", voice={"id": "voice_0000000000000000"}, input=TEXT)


@pytest.fixture(scope="module")
def speakers(lite_engine):
    """Clips by two synthetic speakers: the consent phrase and a sample by A, a sample by B."""
    lite = lite_engine.backend.lite
    a, b = lite.voice("jf_alpha"), lite.voice("jm_kumo")
    return {"consent_a": wav(lite.synthesize(CONSENT_PHRASE, a)),
            "sample_a": wav(lite.synthesize(SAMPLE, a)), "sample_b": wav(lite.synthesize(SAMPLE, b)),
            "wrong_words_a": wav(lite.synthesize("Bananas are yellow and the sky is blue today.", a))}


def test_custom_voice_with_consent(client, speakers, server):
    import httpx

    consent = client.audio.voice_consents.create(name="Alpha", language="en-US",
                                                 recording=("consent.wav", speakers["consent_a"], "audio/wav"))
    assert consent.id.startswith("cons_") and consent.language == "en-US"
    assert consent.id in [c.id for c in client.audio.voice_consents.list()]
    assert client.audio.voice_consents.retrieve(consent.id).name == "Alpha"
    assert client.audio.voice_consents.update(consent.id, name="Alpha 2").name == "Alpha 2"

    voice = client.audio.voices.create(name="mine", consent=consent.id,
                                       audio_sample=("s.wav", speakers["sample_a"], "audio/wav"))
    assert voice.id.startswith("voice_") and voice.name == "mine"
    data = client.audio.speech.create(model="tts-1", voice={"id": voice.id}, input=TEXT, response_format="flac").content
    assert decode(data, "flac")[0].size > 12000
    listed = httpx.get(server + "/v1/voices").json()["data"]
    assert {v["id"]: v["builtin"] for v in listed}[voice.id] is False and sum(v["builtin"] for v in listed) >= 13

    with pytest.raises(openai.BadRequestError) as err:  # another speaker's sample
        client.audio.voices.create(name="theirs", consent=consent.id,
                                   audio_sample=("b.wav", speakers["sample_b"], "audio/wav"))
    assert "different speakers" in str(err.value)
    with pytest.raises(openai.BadRequestError) as err:  # a recording that does not say the phrase
        client.audio.voice_consents.create(name="x", language="en", recording=("c.wav", speakers["wrong_words_a"]))
    assert "consent phrase" in str(err.value)
    with pytest.raises(openai.NotFoundError):
        client.audio.voices.create(name="x", consent="cons_0000000000000000",
                                   audio_sample=("s.wav", speakers["sample_a"], "audio/wav"))
    client.audio.voices.delete(voice.id)
    with pytest.raises(openai.NotFoundError):
        client.audio.speech.create(model="tts-1", voice={"id": voice.id}, input=TEXT)
    assert client.audio.voice_consents.delete(consent.id).deleted


def test_builtin_voices_cannot_be_deleted(server):
    import httpx

    r = httpx.delete(server + "/v1/voices/alloy")
    assert r.status_code == 400 and "built-in" in r.json()["error"]["message"]


def test_bad_and_good_requests_concurrently(client):
    calls = {
        "good": lambda: client.audio.speech.create(model="tts-1", voice="verse", input=TEXT, response_format="wav"),
        "unknown_voice": lambda: client.audio.speech.create(model="tts-1", voice="zzz", input=TEXT),
        "empty_input": lambda: client.audio.speech.create(model="tts-1", voice="verse", input=" "),
        "bad_instruction": lambda: client.audio.speech.create(model="tts-1", voice="verse", input=TEXT,
                                                              instructions="qwzx"),
        "good_fast": lambda: client.audio.speech.create(model="tts-1", voice="marin", input=TEXT, speed=2.5,
                                                        response_format="pcm"),
    }
    results = {}

    def run(name):
        try:
            results[name] = ("ok", calls[name]().content)
        except openai.APIStatusError as exc:
            results[name] = (exc.status_code, str(exc))

    threads = [threading.Thread(target=run, args=(n,)) for n in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert results["good"][0] == "ok" and decode(results["good"][1], "wav")[0].size > 12000
    assert results["good_fast"][0] == "ok" and len(results["good_fast"][1]) > 4000
    assert results["unknown_voice"][0] == 404
    assert results["empty_input"][0] == 400 and "text" in results["empty_input"][1]
    assert results["bad_instruction"][0] == 400 and "closest" in results["bad_instruction"][1]
