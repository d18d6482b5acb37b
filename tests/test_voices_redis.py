"""Redis voice registry against a real redis-server: bit-exact audio, atomicity, sharing, outages, factory."""

import secrets
import threading

import numpy as np
import pytest

from editx.errors import ValidationError
from editx.pipeline.types import PromptAudio
from editx.server.settings import ServerSettings
from editx.server.voices import SQLiteVoiceStore, UnknownVoiceError
from editx.server.voices_redis import (
    CorruptVoiceError,
    RedisVoiceStore,
    StoreUnavailableError,
    make_voice_store,
)

pytestmark = pytest.mark.redis


def _audio(seed=0, sr=16000):
    return PromptAudio(np.random.default_rng(seed).uniform(-0.5, 0.5, sr).astype(np.float32), sr)


@pytest.fixture()
def store(redis_url):
    s = RedisVoiceStore(redis_url, prefix=f"editx:test:{secrets.token_hex(4)}:")
    yield s
    s.close()


def test_roundtrip_is_bit_exact_and_seen_by_another_store(store, redis_url, tmp_path):
    a = _audio(seed=1, sr=22050)
    v = store.add("../../etc/passwd", "hello there", a)
    assert v.id.startswith("voice_") and "/" not in v.id
    other = RedisVoiceStore(redis_url, prefix=store.prefix)  # another replica, another process
    assert other.get(v.id) == v
    back = other.audio(v.id)
    assert back.sample_rate == 22050 and back.samples.dtype == np.float32 and np.array_equal(back.samples, a.samples)
    # the very bytes the SQLite store writes: moving a registry between stores keeps cache keys valid
    sq = SQLiteVoiceStore(tmp_path)
    sv = sq.add("x", "hello there", a)
    assert (tmp_path / "voices" / f"{sv.id}.wav").read_bytes() == store._client.hget(f"{store.prefix}voice:{v.id}",
                                                                                        "audio")
    v2 = store.add("second", "again", _audio(seed=2))
    assert [x.id for x in other.list()] == [v.id, v2.id]  # creation order
    other.delete(v.id)  # deleting through one removes it for all
    with pytest.raises(UnknownVoiceError):
        store.audio(v.id)
    with pytest.raises(UnknownVoiceError):
        store.delete(v.id)
    assert [x.id for x in store.list()] == [v2.id]
    other.close()


def test_bad_ids_and_empty_transcript(store):
    for bad in ("../x", "voice_zzzzzzzzzzzzzzzz", "", "voice_0123456789abcdef"):
        with pytest.raises(UnknownVoiceError, match="unknown voice"):
            store.get(bad)
    with pytest.raises(ValidationError, match="prompt_text"):
        store.add("x", "  ", _audio())
    assert store.list() == []


def test_corrupt_audio_is_refused_not_served(store):
    v = store.add("v", "text", _audio())
    key = f"{store.prefix}voice:{v.id}"
    data = bytearray(store._client.hget(key, "audio"))
    data[-1] ^= 0xFF
    store._client.hset(key, "audio", bytes(data))
    with pytest.raises(CorruptVoiceError, match="register the clip again"):
        store.audio(v.id)


def test_concurrent_adds_and_deletes_leave_a_consistent_index(store):
    ids: list = []
    lock = threading.Lock()

    def worker(i):
        v = store.add(f"v{i}", "text", _audio(seed=i))
        with lock:
            ids.append(v.id)
        if i % 2:
            store.delete(v.id)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    left = {v.id for v in store.list()}
    assert len(ids) == 12 and len(left) == 6
    assert store._client.zcard(store._index) == 6  # no orphan index entries
    assert len(store._client.keys(f"{store.prefix}voice:*")) == 6  # no orphan hashes


def test_unreachable_redis_is_a_clear_retryable_error():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = RedisVoiceStore(f"redis://:secret@127.0.0.1:{port}/0", timeout_s=0.5)
    with pytest.raises(StoreUnavailableError, match="cannot be reached") as info:
        dead.list()
    assert "secret" not in str(info.value)
    with pytest.raises(StoreUnavailableError):
        dead.add("v", "text", _audio())


def test_factory_picks_redis_when_configured(tmp_path, redis_url, monkeypatch):
    settings = ServerSettings(data_dir=tmp_path)
    monkeypatch.delenv("EDITX_VOICES_URL", raising=False)
    monkeypatch.delenv("EDITX_REDIS_URL", raising=False)
    assert isinstance(make_voice_store(settings), SQLiteVoiceStore)
    assert isinstance(make_voice_store(settings, redis_url), RedisVoiceStore)
    monkeypatch.setenv("EDITX_REDIS_URL", redis_url)
    assert isinstance(make_voice_store(settings), RedisVoiceStore)
