"""Prompt cache: keys, fingerprints, entries, memory LRU, disk tier, single-flight, maintenance."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import torch

from editx.cache import CacheEntry, TieredCache, decode_entry, default_cache_dir, encode_entry
from editx.cache.disk import DiskTier
from editx.cache.keys import fingerprint_files, prompt_key
from editx.cache.memory import MemoryTier
from editx.config import EngineConfig
from editx.errors import CancelledError, ModelFilesError, ValidationError

KEY = "a" * 64


def make_entry(seed: int = 0, n: int = 16, **meta) -> CacheEntry:
    g = torch.Generator().manual_seed(seed)
    return CacheEntry(
        tensors={
            "mel": torch.randn(n, 80, generator=g),
            "tokens": torch.randint(0, 5120, (n * 2,), generator=g),
            "spk": torch.randn(192, generator=g).to(torch.bfloat16),
        },
        meta={"sample_rate": 16000, "text": "hello", "seed": seed, **meta},
    )


def wait_until(cond, what: str, limit_s: float = 20.0) -> None:
    """Poll a condition (synchronisation only; never a timing assertion)."""
    deadline = time.monotonic() + limit_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


# ---- keys ------------------------------------------------------------------------------------
def test_prompt_key_stable_and_sensitive_to_every_part():
    x = np.sin(np.arange(1600, dtype=np.float32) / 10)
    base = prompt_key(x, 16000, "hello", "feat-v1", "fp1")
    assert base == prompt_key(x.copy(), 16000, "hello", "feat-v1", "fp1")
    assert base == prompt_key(x.astype(np.float64), 16000, "hello", "feat-v1", "fp1")
    assert len(base) == 64 and int(base, 16) >= 0
    y = x.copy()
    y[800] += 1e-3
    variants = [
        prompt_key(y, 16000, "hello", "feat-v1", "fp1"),
        prompt_key(x[:-1], 16000, "hello", "feat-v1", "fp1"),
        prompt_key(x, 24000, "hello", "feat-v1", "fp1"),
        prompt_key(x, 16000, "hello!", "feat-v1", "fp1"),
        prompt_key(x, 16000, None, "feat-v1", "fp1"),
        prompt_key(x, 16000, "", "feat-v1", "fp1"),
        prompt_key(x, 16000, "hello", "feat-v2", "fp1"),
        prompt_key(x, 16000, "hello", "feat-v1", "fp2"),
    ]
    assert len({base, *variants}) == len(variants) + 1
    # Length prefixes: moving a boundary between adjacent string parts changes the key.
    assert prompt_key(x, 16000, "ab", "c", "fp") != prompt_key(x, 16000, "a", "bc", "fp")


def test_fingerprint_files(tmp_path):
    d = tmp_path / "model"
    (d / "sub").mkdir(parents=True)
    big = d / "weights.bin"
    big.write_bytes(bytes(range(256)) * (12 * 4096))  # 3 MiB: head and tail hashed, middle not
    (d / "sub" / "config.json").write_text('{"a": 1}')
    (d / ".hidden").write_text("ignored")
    fp = fingerprint_files([d])
    assert fp == fingerprint_files([d])
    assert fp == fingerprint_files([big, d / "sub" / "config.json"])
    (d / ".hidden").write_text("still ignored")
    assert fingerprint_files([d]) == fp

    full = fingerprint_files([d], full=True)
    assert full != fp
    # A same-size edit in the middle: the fast mode's documented blind spot.
    with open(big, "r+b") as f:
        f.seek(3 * 2**20 // 2)
        f.write(b"\xff\xff")
    assert fingerprint_files([d]) == fp
    assert fingerprint_files([d], full=True) != full
    # A touched mtime alone changes nothing; a changed head, tail, size or config is seen.
    st = big.stat()
    os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert fingerprint_files([d]) == fp
    with open(big, "r+b") as f:
        f.write(b"\xfe\xfd")
    fp2 = fingerprint_files([d])
    assert fp2 != fp
    (d / "sub" / "config.json").write_text('{"a": 2}')
    assert fingerprint_files([d]) != fp2
    with pytest.raises(ModelFilesError, match="no such file"):
        fingerprint_files([d / "missing.bin"])


def test_fingerprints_ignore_location_and_mtime(tmp_path):
    """Two hosts that downloaded the same weights separately (other folder, other mtimes) share
    cache entries: neither mode hashes mtimes; a different file content still differs."""
    for name, mtime in (("a", 10**18), ("b", 2 * 10**18)):
        (tmp_path / name).mkdir()
        f = tmp_path / name / "w.bin"
        f.write_bytes(b"weights" * 400_000)  # 2.8 MB: the fast mode reads its head and tail only
        (tmp_path / name / "config.json").write_text('{"layers": 2}')
        os.utime(f, ns=(mtime, mtime))
    for full in (False, True):
        assert fingerprint_files([tmp_path / "a"], full=full) == fingerprint_files([tmp_path / "b"], full=full)
    (tmp_path / "b" / "config.json").write_text('{"layers": 3}')
    assert fingerprint_files([tmp_path / "a"]) != fingerprint_files([tmp_path / "b"])


# ---- entries ---------------------------------------------------------------------------------
def test_entry_bytes_round_trip_bit_exact():
    tensors = {
        "f32": torch.randn(3, 5),
        "bf16": torch.randn(7).to(torch.bfloat16),
        "f16": torch.randn(2, 2, 2).half(),
        "i64": torch.tensor([0, -1, 2**40]),
        "u8": torch.arange(10, dtype=torch.uint8),
        "bool": torch.tensor([True, False]),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
        "view": torch.arange(20.0).reshape(4, 5)[:, 1],  # non-contiguous view of a larger storage
    }
    entry = CacheEntry(tensors, {"a": [1, 2.5, "x"], "n": None, "t": (1, 2)})
    assert entry.meta["t"] == [1, 2]  # normalized through JSON
    back = decode_entry(KEY, encode_entry(KEY, entry))
    assert back.equal(entry)
    for name, t in tensors.items():
        assert back.tensors[name].dtype == t.dtype and back.tensors[name].shape == t.shape
        assert torch.equal(back.tensors[name], t)
    assert not back.equal(make_entry(0))
    with pytest.raises(TypeError, match="JSON"):
        CacheEntry({"x": torch.zeros(1)}, {"bad": object()})
    with pytest.raises(ValidationError):
        TieredCache(1000, None, 0).get("../etc/passwd")


# ---- memory tier -----------------------------------------------------------------------------
def test_memory_lru_bound_and_attachments():
    e = make_entry(0)
    size = e.nbytes
    mem = MemoryTier(3 * size)
    for i in range(3):
        assert mem.put(f"k{i}", make_entry(i))
    assert mem.get("k0") is not None  # k0 becomes most recent; k1 is now the LRU
    assert mem.put("k3", make_entry(3))
    assert mem.keys() == ["k2", "k0", "k3"]
    assert mem.evictions == 1 and mem.usage()[1] <= mem.max_bytes
    assert not mem.put("huge", make_entry(9, n=1000))  # larger than the bound: not kept
    assert "huge" not in mem and len(mem.keys()) == 3

    # Attachments count against the bound and go with their entry.
    assert mem.attach("k3", "kv", {"snapshot": 1}, nbytes=size // 2)
    assert mem.keys() == ["k0", "k3"]  # k2 evicted to make room
    assert mem.attachment("k3", "kv") == {"snapshot": 1}
    assert not mem.attach("k3", "too_big", object(), nbytes=3 * size)
    assert not mem.attach("absent", "kv", object(), nbytes=1)
    mem.delete("k3")
    assert mem.attachment("k3", "kv") is None and mem.usage()[1] == size


def test_attachment_stays_in_memory_only(tmp_path):
    cache = TieredCache(10**6, tmp_path, 10**7)
    cache.put(KEY, make_entry(0))
    assert cache.attach(KEY, "kv", ["not", "serializable", object()], nbytes=100)
    assert cache.attachment(KEY, "kv")[0] == "not"
    assert cache.stats()["memory"]["attachments"] == 1
    fresh = TieredCache(10**6, tmp_path, 10**7)
    assert fresh.get(KEY)[1] == "disk" and fresh.attachment(KEY, "kv") is None
    assert not TieredCache(0, tmp_path, 10**7).attach(KEY, "kv", object(), 1)


# ---- disk tier -------------------------------------------------------------------------------
def test_disk_round_trip_and_restart(tmp_path):
    entry = make_entry(1)
    calls = []
    cache = TieredCache(10**6, tmp_path, 10**7)
    got, outcome = cache.get_or_compute(KEY, lambda: calls.append(1) or entry)
    assert outcome == "miss" and got is entry and calls == [1]
    assert cache.get_or_compute(KEY, lambda: calls.append(1) or entry)[1] == "memory"
    assert [p.name for p in tmp_path.iterdir()] == [f"{KEY}.safetensors"]  # no temp or lock files left

    restarted = TieredCache(10**6, tmp_path, 10**7)
    got, outcome = restarted.get_or_compute(KEY, lambda: calls.append(1) or entry)
    assert outcome == "disk" and calls == [1] and got.equal(entry)
    assert got.tensors["spk"].dtype == torch.bfloat16 and got.meta == entry.meta
    assert restarted.get_or_compute(KEY, lambda: calls.append(1) or entry)[1] == "memory"
    disk_only = TieredCache(0, tmp_path, 10**7)
    assert disk_only.get(KEY)[1] == "disk" and disk_only.get(KEY)[1] == "disk"


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "empty"])
def test_corrupt_file_recomputed_and_replaced(tmp_path, damage):
    entry = make_entry(2)
    TieredCache(0, tmp_path, 10**7).put(KEY, entry)
    path = tmp_path / f"{KEY}.safetensors"
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-5] ^= 0x01  # inside the tensor bytes
    elif damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "garbage":
        data = bytearray(os.urandom(len(data)))
    else:
        data = bytearray()
    path.write_bytes(bytes(data))

    cache = TieredCache(10**6, tmp_path, 10**7)
    calls = []
    _got, outcome = cache.get_or_compute(KEY, lambda: calls.append(1) or entry)
    assert outcome == "miss" and calls == [1]
    assert cache.stats()["disk"]["corrupt"] == 1
    assert decode_entry(KEY, path.read_bytes()).equal(entry)  # replaced with a valid file
    assert TieredCache(0, tmp_path, 10**7).get(KEY)[1] == "disk"


def test_unserializable_entry_stays_in_memory_without_failing(tmp_path):
    entry = CacheEntry({"x": torch.empty(3, device="meta")})  # cannot be copied to the CPU
    cache = TieredCache(10**6, tmp_path, 10**7)
    assert cache.get_or_compute(KEY, lambda: entry) == (entry, "miss")
    assert cache.get(KEY) == (entry, "memory") and list(tmp_path.iterdir()) == []


def test_file_under_wrong_name_is_rejected(tmp_path):
    cache = TieredCache(0, tmp_path, 10**7)
    cache.put(KEY, make_entry(0))
    other = "b" * 64
    os.replace(tmp_path / f"{KEY}.safetensors", tmp_path / f"{other}.safetensors")
    assert cache.get(other) == (None, "miss")
    assert not (tmp_path / f"{other}.safetensors").exists()


def test_disk_eviction_by_bytes(tmp_path):
    size = len(encode_entry(KEY, make_entry(0)))
    disk = DiskTier(tmp_path, max_bytes=int(3.5 * size))  # room for 3 entries
    keys = [f"{i:02d}" + "c" * 62 for i in range(6)]

    def stamp(key: str, i: int) -> None:  # explicit, distinct mtimes: no reliance on clock granularity
        t = 10**18 + i * 10**9
        os.utime(disk.path(key), ns=(t, t))

    for i, key in enumerate(keys[:3]):
        assert disk.put(key, make_entry(i))
        stamp(key, i)
    assert disk.get(keys[0]) is not None
    assert disk.path(keys[0]).stat().st_mtime_ns > 10**18 + 2 * 10**9  # a read refreshes the mtime
    stamp(keys[0], 3)  # keys[0] is now the most recently used of the three
    for i, key in enumerate(keys[3:], start=3):
        assert disk.put(key, make_entry(i))
        _, total = disk.usage()
        assert total <= disk.max_bytes
        stamp(key, i + 1)
    assert sorted(p.name[:2] for p in tmp_path.iterdir()) == ["03", "04", "05"]  # evicted: 01, 02, 00
    assert disk.evictions == 3
    assert not disk.put("d" * 64, make_entry(9, n=1000))  # larger than the whole bound: skipped


def test_stats_verify_clear(tmp_path):
    cache = TieredCache(10**6, tmp_path, 10**7)
    keys = [f"{i}" * 64 for i in range(1, 4)]
    for i, key in enumerate(keys):
        cache.get_or_compute(key, lambda i=i: make_entry(i))
    cache.get_or_compute(keys[0], lambda: make_entry(0))
    (tmp_path / f"{keys[1]}.safetensors").write_bytes(b"\x00" * 40)
    stale = tmp_path / f".{keys[2]}.123.abcd.tmp"
    stale.write_bytes(b"partial")
    os.utime(stale, (1, 1))
    live = tmp_path / f".{keys[2]}.456.ef01.tmp"
    live.write_bytes(b"being written")

    s = cache.stats()
    assert s["memory"]["entries"] == 3 and s["memory"]["hits"] == 1 and s["memory"]["misses"] == 3
    assert s["disk"]["entries"] == 3 and s["disk"]["misses"] == 3 and s["computes"] == 3
    report = cache.verify()
    assert report["checked"] == 3 and report["ok"] == 2 and report["corrupt"] == [keys[1]]
    assert report["stale_removed"] == 1 and not stale.exists() and live.exists()
    assert cache.stats()["disk"]["entries"] == 2

    assert cache.clear() == {"memory": 3, "disk": 2}
    s = cache.stats()
    assert s["memory"]["entries"] == 0 and s["disk"]["entries"] == 0 and live.exists()
    assert cache.get(keys[0]) == (None, "miss")


def test_default_cache_dir_and_from_config(tmp_path, monkeypatch):
    assert default_cache_dir(tmp_path) == tmp_path / "prompts"
    monkeypatch.setenv("EDITX_CACHE_DIR", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env" / "prompts"
    monkeypatch.delenv("EDITX_CACHE_DIR")
    assert default_cache_dir().name == "prompts" and "editx" in str(default_cache_dir())

    cache = TieredCache.from_config(
        EngineConfig(cache_dir=tmp_path, cache_memory_bytes=1000, cache_disk_bytes=5000)
    )
    assert cache.tiers == ("memory", "disk") and cache.disk.root == tmp_path / "prompts"
    off = TieredCache.from_config(EngineConfig(cache_enabled=False))
    assert off.tiers == ()
    calls = []
    assert off.get_or_compute(KEY, lambda: calls.append(1) or make_entry(0))[1] == "miss"
    assert off.get_or_compute(KEY, lambda: calls.append(1) or make_entry(0))[1] == "miss"
    assert calls == [1, 1]


# ---- single flight ---------------------------------------------------------------------------
def _run_leader_and_waiter(cache: TieredCache, leader_compute):
    """Start a leader whose compute blocks, then a waiter; release once the waiter is waiting."""
    started, release = threading.Event(), threading.Event()
    results: dict[str, object] = {}

    def compute():
        started.set()
        release.wait(20)
        return leader_compute()

    def call(name, fn):
        try:
            results[name] = cache.get_or_compute(KEY, fn)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertions
            results[name] = exc

    waiter_calls = []
    t1 = threading.Thread(target=call, args=("leader", compute))
    t1.start()
    started.wait(20)
    t2 = threading.Thread(target=call, args=("waiter", lambda: waiter_calls.append(1) or make_entry(7)))
    t2.start()
    wait_until(lambda: cache.stats()["coalesced"] == 1, "the second caller to join the flight")
    release.set()
    t1.join(20)
    t2.join(20)
    return results, waiter_calls


def test_single_flight_computes_once(tmp_path):
    cache = TieredCache(10**6, tmp_path, 10**7)
    leader_calls = []
    entry = make_entry(3)
    results, waiter_calls = _run_leader_and_waiter(cache, lambda: leader_calls.append(1) or entry)
    assert leader_calls == [1] and waiter_calls == []
    assert results["leader"] == (entry, "miss") and results["waiter"] == (entry, "miss")
    assert cache.stats()["computes"] == 1


def test_single_flight_shares_errors_but_not_cancellation(tmp_path):
    def boom():
        raise ValueError("bad prompt audio")

    cache = TieredCache(10**6, tmp_path, 10**7)
    results, waiter_calls = _run_leader_and_waiter(cache, boom)
    assert isinstance(results["leader"], ValueError) and results["waiter"] is results["leader"]
    assert waiter_calls == [] and cache.get(KEY) == (None, "miss")

    def cancelled():
        raise CancelledError("caller went away")

    cache = TieredCache(10**6, tmp_path / "2", 10**7)
    results, waiter_calls = _run_leader_and_waiter(cache, cancelled)
    assert isinstance(results["leader"], CancelledError)
    assert waiter_calls == [1] and results["waiter"][1] == "miss"
    assert cache.stats()["computes"] == 2


def test_cross_process_lock_file_makes_waiter_reuse_result(tmp_path):
    # Another "process" (a separate DiskTier on the same folder) holds the key's lock file.
    other = DiskTier(tmp_path, 10**7)
    token = other.try_lock(KEY, ttl_s=60)
    assert token is not None and other.try_lock(KEY, ttl_s=60) is None
    cache = TieredCache(10**6, tmp_path, 10**7, poll_s=0.01)
    calls, out = [], {}
    t = threading.Thread(
        target=lambda: out.setdefault("r", cache.get_or_compute(KEY, lambda: calls.append(1)))
    )
    t.start()
    wait_until(lambda: cache.stats()["lock_waits"] == 1, "the cache to wait on the lock")
    entry = make_entry(4)
    other.put(KEY, entry)
    other.unlock(KEY, token)
    t.join(20)
    got, outcome = out["r"]
    assert calls == [] and outcome == "disk" and got.equal(entry)


def test_stale_lock_is_taken_over(tmp_path):
    disk = DiskTier(tmp_path, 10**7)
    assert disk.try_lock(KEY, ttl_s=60) is not None
    os.utime(tmp_path / f".{KEY}.lock", (1, 1))  # its holder died long ago
    cache = TieredCache(10**6, tmp_path, 10**7)
    assert cache.get_or_compute(KEY, lambda: make_entry(5))[1] == "miss"
    assert not (tmp_path / f".{KEY}.lock").exists()


def test_lock_of_a_dead_process_is_taken_over_at_once(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(60)
    lock = tmp_path / f".{KEY}.lock"
    lock.write_text(f"{socket.gethostname()}:{dead.pid}:0123")  # fresh mtime, but its process is gone
    cache = TieredCache(10**6, tmp_path, 10**7)
    assert cache.get_or_compute(KEY, lambda: make_entry(6))[1] == "miss"
    assert cache.stats()["lock_waits"] == 0 and not lock.exists()


_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from editx.cache import CacheEntry, TieredCache
    root, key, seed, go = sys.argv[1:]
    g = torch.Generator().manual_seed(int(seed))
    entry = CacheEntry({"x": torch.randn(256, 256, generator=g)}, {"writer": int(seed)})
    cache = TieredCache(0, Path(root), 1 << 30)
    Path(root, f"ready{seed}").touch()
    while not Path(go).exists():
        time.sleep(0.005)
    for _ in range(15):
        cache.put(key, entry)
    """
)


def test_two_processes_writing_one_key_leave_one_valid_file(tmp_path):
    root = tmp_path / "cache"
    root.mkdir()
    go = tmp_path / "go"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(root), KEY, str(seed), str(go)], env=env)
        for seed in (1, 2)
    ]
    try:
        wait_until(lambda: all((root / f"ready{s}").exists() for s in (1, 2)), "both writers", limit_s=60)
        go.touch()
        assert [p.wait(60) for p in procs] == [0, 0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    names = sorted(p.name for p in root.iterdir() if not p.name.startswith("ready"))
    assert names == [f"{KEY}.safetensors"]  # no temp files left behind
    entry = decode_entry(KEY, (root / names[0]).read_bytes())
    seed = entry.meta["writer"]
    assert seed in (1, 2)
    g = torch.Generator().manual_seed(seed)
    assert torch.equal(entry.tensors["x"], torch.randn(256, 256, generator=g))


_KILLED_WRITER = textwrap.dedent(
    """
    import builtins, sys, time
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    import editx.cache.disk as disk
    from editx.cache import CacheEntry, TieredCache
    root, key = sys.argv[1:]

    class Torn:  # writes half the entry, says so, then hangs until it is killed
        def __init__(self, f):
            self.f = f
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            self.f.close()
        def write(self, data):
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            Path(root, "half-written").touch()
            time.sleep(600)
        def flush(self):
            self.f.flush()
        def fileno(self):
            return self.f.fileno()

    disk.open = lambda path, mode="r", *a, **k: (Torn(builtins.open(path, mode, *a, **k)) if "w" in mode
                                                 else builtins.open(path, mode, *a, **k))
    entry = CacheEntry({"x": torch.ones(256, 256)}, {"writer": "killed"})
    TieredCache(0, Path(root), 1 << 30).get_or_compute(key, lambda: entry)
    """
)


def test_kill_9_during_a_disk_write_serves_no_corrupt_entry_and_recomputes(tmp_path):
    """A process killed (SIGKILL) halfway through writing an entry leaves a torn temp file and its
    lock behind: neither is ever served; the next process sees the dead lock holder at once,
    computes the entry again and stores a valid file."""
    root = tmp_path / "cache"
    root.mkdir()
    writer = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(root), KEY],
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        wait_until(lambda: (root / "half-written").exists() or writer.poll() is not None, "the torn write",
                   limit_s=120)
        assert writer.poll() is None, "the writer ended before it was killed"
        writer.kill()  # SIGKILL: no cleanup runs
        writer.wait(60)
    finally:
        if writer.poll() is None:
            writer.kill()
    leftovers = {p.suffix for p in root.iterdir() if p.name != "half-written"}
    assert leftovers == {".tmp", ".lock"} and not (root / f"{KEY}.safetensors").exists()
    cache = TieredCache(0, root, 1 << 30)
    assert cache.get(KEY) == (None, "miss")
    entry, outcome = cache.get_or_compute(KEY, lambda: make_entry(7))
    assert outcome == "miss" and cache.stats()["computes"] == 1 and cache.stats()["lock_waits"] == 0
    again, tier = TieredCache(0, root, 1 << 30).get(KEY)
    assert tier == "disk" and again.meta["seed"] == 7
    assert all(torch.equal(again.tensors[k], make_entry(7).tensors[k]) for k in again.tensors)
