"""Shared Redis tier against a real, throwaway redis-server on a loopback port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch

from editx.cache import CacheEntry, RedisTier, TieredCache, decode_entry, encode_entry
from editx.errors import ValidationError

KEY = "e" * 64
needs_server = pytest.mark.skipif(
    shutil.which("redis-server") is None,
    reason="redis-server binary not found (apt-get install redis-server)",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_entry(seed: int) -> CacheEntry:
    g = torch.Generator().manual_seed(seed)
    return CacheEntry(
        {"mel": torch.randn(20, 80, generator=g), "ids": torch.arange(seed, seed + 30)}, {"seed": seed}
    )


def wait_until(cond, what: str, limit_s: float = 20.0) -> None:
    deadline = time.monotonic() + limit_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class RedisServer:
    def __init__(self) -> None:
        redis = pytest.importorskip("redis", reason="the 'redis' package (editx[redis]) is not installed")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.client = redis.Redis.from_url(self.url)

        def up() -> bool:
            try:
                return bool(self.client.ping())
            except redis.RedisError:
                return False

        wait_until(up, "redis-server to answer PING")

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def server():
    srv = RedisServer()
    yield srv
    srv.stop()


def test_missing_package_gives_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ValidationError, match=r"editx\[redis\]"):
        RedisTier("redis://127.0.0.1:1/0")


@pytest.mark.redis
@needs_server
def test_shared_hit_from_a_second_cache(server, tmp_path):
    entry = make_entry(1)
    a = TieredCache(10**6, tmp_path / "a", 10**7, RedisTier(server.url, ttl_s=600))
    assert a.get_or_compute(KEY, lambda: entry)[1] == "miss"
    assert 0 < server.client.pttl(f"editx:prompt:{KEY}") <= 600_000
    assert decode_entry(KEY, server.client.get(f"editx:prompt:{KEY}")).equal(entry)

    b = TieredCache(10**6, tmp_path / "b", 10**7, RedisTier(server.url))
    calls = []
    got, outcome = b.get_or_compute(KEY, lambda: calls.append(1) or entry)
    assert outcome == "shared" and calls == [] and got.equal(entry)
    assert (tmp_path / "b" / f"{KEY}.safetensors").exists()  # promoted to disk and memory
    assert b.get(KEY)[1] == "memory"
    s = b.stats()["shared"]
    assert s["hits"] == 1 and s["entries"] == 1 and s["bytes"] == len(encode_entry(KEY, entry))
    a.close()
    b.close()


@pytest.mark.redis
@needs_server
def test_corrupt_shared_value_is_recomputed(server, tmp_path):
    server.client.set(f"editx:prompt:{KEY}", b"not an entry")
    cache = TieredCache(0, None, 0, RedisTier(server.url))
    calls = []
    _, outcome = cache.get_or_compute(KEY, lambda: calls.append(1) or make_entry(2))
    assert outcome == "miss" and calls == [1]
    assert cache.stats()["shared"]["corrupt"] == 1
    assert decode_entry(KEY, server.client.get(f"editx:prompt:{KEY}")).equal(make_entry(2))


@pytest.mark.redis
@needs_server
def test_redis_outage_is_a_miss_not_an_error(server, tmp_path):
    tier = RedisTier(server.url, timeout_s=0.5, retry_after_s=0.0)
    cache = TieredCache(10**6, tmp_path, 10**7, tier)
    cache.put(KEY, make_entry(3))
    server.stop()  # the server goes away while the cache is in use
    fresh = TieredCache(10**6, tmp_path / "other", 10**7, tier)
    calls = []
    _, outcome = fresh.get_or_compute(KEY, lambda: calls.append(1) or make_entry(3))
    assert outcome == "miss" and calls == [1]
    assert tier.errors >= 1 and fresh.stats()["shared"]["entries"] is None
    assert fresh.get(KEY)[1] == "memory"
    assert fresh.clear()["shared"] == 0


def test_unreachable_redis_from_the_start(tmp_path):
    pytest.importorskip("redis", reason="the 'redis' package (editx[redis]) is not installed")
    tier = RedisTier(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
    cache = TieredCache(0, tmp_path, 10**7, tier)
    assert cache.get_or_compute(KEY, lambda: make_entry(4))[1] == "miss"
    assert cache.get_or_compute(KEY, lambda: make_entry(4))[1] == "disk"
    assert tier.errors >= 1 and not tier.available  # backing off: later calls skip the network


@pytest.mark.redis
@needs_server
def test_redis_lock_lets_another_host_reuse_the_result(server, tmp_path):
    other = RedisTier(server.url)
    token = other.try_lock(KEY, ttl_s=60)
    assert token is not None and other.try_lock(KEY, ttl_s=60) is None
    cache = TieredCache(10**6, tmp_path, 10**7, RedisTier(server.url), poll_s=0.01)
    calls, out = [], {}
    t = threading.Thread(
        target=lambda: out.setdefault("r", cache.get_or_compute(KEY, lambda: calls.append(1)))
    )
    t.start()
    wait_until(lambda: cache.stats()["lock_waits"] == 1, "the cache to wait on the Redis lock")
    entry = make_entry(5)
    other.put(KEY, encode_entry(KEY, entry))
    other.unlock(KEY, token)
    t.join(20)
    got, outcome = out["r"]
    assert calls == [] and outcome == "shared" and got.equal(entry)
    assert not server.client.exists(f"editx:prompt:lock:{KEY}")


@pytest.mark.redis
@needs_server
def test_clear_only_touches_the_prefix(server, tmp_path):
    server.client.set("someone-else", b"keep me")
    tier = RedisTier(server.url, prefix="editx:test:")
    cache = TieredCache(0, None, 0, tier)
    for i in range(3):
        cache.put(f"{i}" * 64, make_entry(i))
    assert tier.usage()[0] == 3
    assert cache.clear() == {"shared": 3}
    assert tier.usage() == (0, 0) and server.client.get("someone-else") == b"keep me"
