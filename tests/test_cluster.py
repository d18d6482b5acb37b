"""Ray Serve cluster on the tiny fixture: 2 replicas, a shared Redis, spread, equality, sharing, faults, 429.

One local Ray instance (num_cpus=2) and one deployment serve the whole module (the tests run in file
order and share its registered voice). Skipped when ray or redis-server is missing.
"""

from __future__ import annotations

import concurrent.futures as cf
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import soundfile as sf
from conftest import assert_pcm_close, speechlike

from editx.config import EngineConfig, SamplingConfig
from editx.errors import EditxError, ValidationError
from editx.server.cluster import REPLICA_HEADER, ClusterOptions, deploy, start_ray
from editx.server.settings import ServerSettings

APP = "editx"
SEEDS = (0, 1, 2, 3)
# Bounds for a loaded machine (two busy loops beside the suite), each for one kind of wait: starting
# Ray (retried when its raylet misses Ray's own 30 s), deploying two replicas that load and warm a model
# on two busy cores, and one test's own waits. pytest-timeout's per-test limit (pyproject: 600 s) also
# covers the module fixture's set-up in the first test, so the module's limit is their sum.
RAY_START_S, DEPLOY_S, TEST_S = 600, 900, 900
pytestmark = [pytest.mark.slow, pytest.mark.timeout(RAY_START_S + DEPLOY_S + TEST_S)]


def wav_bytes(audio) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio.samples, audio.sample_rate, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def speech_body(vid: str, i: int) -> dict:
    return {"input": f"request number {i % len(SEEDS)}", "voice": vid, "response_format": "pcm",
            "editx": {"seed": SEEDS[i % len(SEEDS)]}}


def wait_until(cond, what: str, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit_s} s waiting for {what}")
        time.sleep(0.2)


def running_replicas() -> int:
    from ray import serve

    app = serve.status().applications.get(APP)
    if app is None or "EngineReplica" not in app.deployments:
        return 0
    return dict(app.deployments["EngineReplica"].replica_states).get("RUNNING", 0)


def test_plain_serve_never_imports_ray():
    code = ("import sys, editx.cli, editx.server.run, editx.server.cluster, editx.server.cluster_replica, "
            "editx.server.app; "
            "a = editx.cli.build_parser().parse_args(['serve']); "
            "assert not editx.server.cluster.cluster_requested(a); "
            "assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_options_from_flags_and_their_validation():
    from editx.cli import build_parser

    args = build_parser().parse_args(["serve", "--replicas", "3", "--replica-cpus", "2", "--replica-gpus", "0.5",
                                      "--max-queued-requests", "5", "--ray-address", "ray://u:pw@head:10001"])
    opts = ClusterOptions.from_args(args)
    d = opts.engine_deployment_options()
    assert d["num_replicas"] == 3 and d["ray_actor_options"] == {"num_cpus": 2.0, "num_gpus": 0.5}
    assert d["max_queued_requests"] == 5 and "autoscaling_config" not in d
    assert opts.describe()["ray_address"] == "head:10001"  # no credentials in the start-up log
    auto = ClusterOptions.from_args(build_parser().parse_args(
        ["serve", "--min-replicas", "1", "--max-replicas", "4", "--target-ongoing-requests", "3"]))
    a = auto.engine_deployment_options()["autoscaling_config"]
    assert a == {"min_replicas": 1, "max_replicas": 4, "initial_replicas": 1, "target_ongoing_requests": 3.0}
    assert ClusterOptions.from_mapping({"replicas": "3", "replica_gpus": "0.5"}) == ClusterOptions(3, replica_gpus=0.5)
    with pytest.raises(ValidationError, match="unknown cluster option 'replica'"):
        ClusterOptions.from_mapping({"replica": 2})
    with pytest.raises(ValidationError, match="not a valid int"):
        ClusterOptions.from_mapping({"replicas": "two"})
    for bad in ({"replicas": 0}, {"min_replicas": 2}, {"min_replicas": 3, "max_replicas": 2},
                {"max_queued_requests": 0}, {"replica_gpus": -1}):
        with pytest.raises(ValidationError):
            ClusterOptions(**bad)


def test_a_replica_refuses_to_run_other_code_than_the_deployers():
    from editx.server.cluster_replica import check_same_code, code_fingerprint

    mine = code_fingerprint()
    assert len(mine) == 16 and mine == code_fingerprint()
    check_same_code(mine)
    check_same_code(None)  # an application built without one (an older deployer)
    with pytest.raises(EditxError, match=f"fingerprint {mine}.*not the one that deployed.*0123456789abcdef"):
        check_same_code("0123456789abcdef")


def test_a_local_start_gives_the_proxy_time_and_retries_a_slow_raylet(monkeypatch):
    ray = pytest.importorskip("ray")
    from editx.server.cluster import PROXY_TIMEOUT_ENV

    calls = []

    def fake_init(**kw):
        calls.append(kw)
        if len(calls) == 1:  # what Ray raises when its raylet misses the 30 s registration
            raise Exception("The current node timed out during startup. This could happen because ...")

    for name in PROXY_TIMEOUT_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(PROXY_TIMEOUT_ENV[1], "500")  # an explicit setting wins
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setattr(ray, "init", fake_init)
    assert start_ray(ClusterOptions(ray_num_cpus=2, health_check_timeout_s=77)) == "local"
    assert len(calls) == 2 and calls[1]["num_cpus"] == 2
    assert calls[1]["_system_config"]["worker_niceness"] == 0  # replicas are not starved beside busy processes
    assert float(os.environ[PROXY_TIMEOUT_ENV[0]]) == 77 and os.environ[PROXY_TIMEOUT_ENV[1]] == "500"
    monkeypatch.setattr(ray, "init", lambda **kw: (_ for _ in ()).throw(Exception("port 6379 in use")))
    with pytest.raises(Exception, match="port 6379 in use"):  # anything else is not retried
        start_ray(ClusterOptions())


class FakeHandle:
    """Stands in for the engine deployment's handle: each call plays the next scripted outcome."""

    def __init__(self, *outcomes) -> None:
        self.outcomes, self.calls = list(outcomes), 0

    def options(self, **_kw):
        return self

    @property
    def handle(self):
        return self

    def remote(self, _req):
        self.calls += 1
        outcome = self.outcomes.pop(0)

        async def gen():
            if isinstance(outcome, BaseException):
                raise outcome
            yield {"status": 200, "headers": [("content-type", "audio/pcm"), (REPLICA_HEADER, "r1")]}
            yield outcome

        return gen()


def call_ingress(handle, method: str, path: str, body: bytes = b"{}", max_bytes: int = 1000):
    import asyncio

    from starlette.requests import Request

    from editx.server.cluster import Ingress

    async def run():
        sent = False

        async def receive():
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        scope = {"type": "http", "method": method, "path": path, "query_string": b"", "client": ("127.0.0.1", 1),
                 "headers": [(b"content-length", str(len(body)).encode())]}
        resp = await Ingress(handle, max_bytes, ClusterOptions())(Request(scope, receive))
        chunks = [c async for c in resp.body_iterator] if hasattr(resp, "body_iterator") else [resp.body]
        return resp.status_code, resp.headers, b"".join(chunks)

    return asyncio.run(run())


def test_ingress_maps_backpressure_and_dead_replicas():
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed")
    from ray.exceptions import ActorDiedError
    from ray.serve.exceptions import BackPressureError

    status, headers, _ = call_ingress(FakeHandle(BackPressureError(8, 8)), "POST", "/v1/audio/speech")
    assert status == 429 and int(headers["retry-after"]) >= 1
    # a speech request whose replica died is retried once, elsewhere
    h = FakeHandle(ActorDiedError(), b"pcm")
    status, headers, body = call_ingress(h, "POST", "/v1/audio/speech")
    assert (status, body, headers["x-editx-retried"], headers[REPLICA_HEADER], h.calls) == (200, b"pcm", "1", "r1", 2)
    status, headers, body = call_ingress(FakeHandle(ActorDiedError(), ActorDiedError()), "POST", "/v1/audio/speech")
    assert status == 503 and int(headers["retry-after"]) >= 1 and b"retry" in body
    # any other failure of Ray itself (not the app's own answer) is a 503 naming it, never a 500
    from ray.exceptions import RaySystemError
    from ray.serve.exceptions import RayServeException

    for exc in (RayServeException("router gave up"), RaySystemError("gcs unreachable")):
        status, headers, body = call_ingress(FakeHandle(exc), "POST", "/v1/audio/speech")
        assert status == 503 and int(headers["retry-after"]) >= 1 and type(exc).__name__.encode() in body, body
    # registering a voice is not repeated behind the client's back: 503, one attempt
    h = FakeHandle(ActorDiedError(), b"never")
    assert call_ingress(h, "POST", "/v1/voices")[0] == 503 and h.calls == 1
    # oversized bodies stop at the ingress, before any replica sees them
    h = FakeHandle()
    assert call_ingress(h, "POST", "/v1/audio/edits", body=b"x" * 2000)[0] == 413 and h.calls == 0


@pytest.fixture(scope="module")
def cluster(tiny_model_dir, redis_url, tmp_path_factory):
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install 'editx[cluster]')")
    httpx = pytest.importorskip("httpx")
    from ray import serve

    # one torch thread per replica: each holds one of Ray's two CPUs, and two threads each would put four
    # OpenMP threads on two cores, whose barriers spin while a descheduled partner waits
    config = EngineConfig(model_dir=tiny_model_dir, sampling=SamplingConfig(max_new_tokens=40), max_batch=4,
                          dtype="float32", threads=1, redis_url=redis_url, cache_dir=tmp_path_factory.mktemp("cc"),
                          cache_disk_bytes=0)  # no shared folder: only Redis links the replicas, as across hosts
    settings = ServerSettings(data_dir=tmp_path_factory.mktemp("cluster-data"))
    # room for 2 × 8 running + 8 waiting: the 16-request tests fit, the 40-request burst overflows
    options = ClusterOptions(replicas=2, max_ongoing_requests=8, max_queued_requests=8, ray_num_cpus=2,
                             health_check_timeout_s=120)  # a loaded machine must not fail health checks
    import ray

    start_ray(options, log_to_driver=False, start_limit_s=RAY_START_S)  # retries a start that timed out
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    try:
        t0 = time.monotonic()
        deploy(config, settings, options, host="127.0.0.1", port=port, name=APP)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=TEST_S / 3) as client:
            # readiness by polling: both replicas up, the proxy answering
            wait_until(lambda: running_replicas() == 2, "both replicas to be running", DEPLOY_S - (time.monotonic() - t0))
            wait_until(lambda: _ready(client), "the HTTP proxy to answer /readyz", DEPLOY_S - (time.monotonic() - t0))
            deploy_s = time.monotonic() - t0
            # the voice the tests share (registered here: one test failing leaves the others their voice)
            vid = register(client, seed=7).json()["id"]
            yield {"client": client, "config": config, "settings": settings, "options": options, "voice": vid,
                   "deploy_s": deploy_s}
    finally:
        serve.shutdown()
        ray.shutdown()


def _ready(client) -> bool:
    import httpx

    try:
        return client.get("/readyz", timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def reference(tiny_backend, tmp_path_factory):
    """The single-process server's audio for SEEDS, same clip and texts."""
    from fastapi.testclient import TestClient

    from editx.cache.tiered import TieredCache
    from editx.pipeline.engine import Engine
    from editx.server.app import create_app
    from editx.server.voices import SQLiteVoiceStore

    root = tmp_path_factory.mktemp("single")
    engine = Engine(tiny_backend.config, tiny_backend, TieredCache(2**26, None, 0))
    engine.ready = True
    app = create_app(engine, settings=ServerSettings(data_dir=root), store=SQLiteVoiceStore(root))
    with TestClient(app) as c:
        vid = c.post("/v1/voices", files={"file": ("r.wav", wav_bytes(speechlike(seed=7)), "audio/wav")},
                     data={"prompt_text": "hello world"}).json()["id"]
        out = [c.post("/v1/audio/speech", json=speech_body(vid, i)).content for i in range(len(SEEDS))]
    engine.close()
    return out


def register(client, seed: int):
    r = client.post("/v1/voices", files={"file": ("r.wav", wav_bytes(speechlike(seed=seed)), "audio/wav")},
                    data={"prompt_text": "hello world", "name": f"clip{seed}"})
    assert r.status_code == 201, r.text
    return r


def test_sixteen_concurrent_requests_spread_and_equal_to_single_process(cluster, reference):
    c, vid = cluster["client"], cluster["voice"]
    assert c.get("/readyz").json()["status"] == "ready"
    t0 = time.monotonic()
    with cf.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: c.post("/v1/audio/speech", json=speech_body(vid, i)), range(16)))
    cluster["burst_s"] = time.monotonic() - t0  # what 16 requests take on two replicas on this machine now
    assert [r.status_code for r in results] == [200] * 16
    assert len({r.headers[REPLICA_HEADER] for r in results}) == 2, "both replicas should have answered"
    for i, r in enumerate(results):
        assert_pcm_close(r.content, reference[i % len(SEEDS)], what=f"request {i} vs the single-process server")
    with c.stream("POST", "/v1/audio/speech", json={**speech_body(vid, 0), "stream_format": "audio",
                                                    "response_format": "wav"}) as r:
        streamed = b"".join(r.iter_bytes())
    assert r.status_code == 200 and streamed[:4] == b"RIFF" and len(streamed) > 44 and r.headers[REPLICA_HEADER]


def test_register_on_one_replica_synthesize_on_the_other(cluster):
    c = cluster["client"]
    reg = register(c, seed=11)
    vid, home = reg.json()["id"], reg.headers[REPLICA_HEADER]
    other = None
    for i in range(30):  # the router picks replicas at random among the less loaded: go until the other answers
        r = c.post("/v1/audio/speech", json=speech_body(vid, i))
        assert r.status_code == 200, r.text
        cache = json.loads(r.headers["x-editx-timeline"])["cache"]["prompt"]
        if r.headers[REPLICA_HEADER] != home:
            other = (r.headers[REPLICA_HEADER], cache)
            break
        assert cache == "memory"  # the registering replica warmed its own memory tier
    assert other is not None, "the second replica never answered in 30 requests"
    # the prompt encoded at registration on `home` is a hit from Redis on the other replica
    assert other[1] == "shared"
    # deleting through any replica removes it for every one of them
    assert c.delete(f"/v1/voices/{vid}").status_code == 200
    seen = set()
    for _ in range(12):
        r = c.post("/v1/audio/speech", json=speech_body(vid, 0))
        assert r.status_code == 404 and "unknown voice" in r.json()["error"]["message"]
        seen.add(r.headers[REPLICA_HEADER])
    assert vid not in [v["id"] for v in c.get("/v1/voices").json()["data"]]


def replica_pid(replica_id: str) -> int:
    """The OS process of a Serve replica (asked inside the actor itself)."""
    import ray

    actor = ray.get_actor(f"SERVE_REPLICA::{APP}#EngineReplica#{replica_id}", namespace="serve")
    return ray.get(actor.__ray_call__.remote(lambda _self: os.getpid()), timeout=120)


def open_stream(c, vid: str, i: int, timeout_s: float):
    """A streaming request's response once its headers arrived: its job is running."""
    return c.send(c.build_request("POST", "/v1/audio/speech", json={**speech_body(vid, i), "stream_format": "audio"},
                                  timeout=timeout_s), stream=True)


def finish_stream(resp) -> str:
    """'complete', or 'cut' when the stream ended without its end (its replica died): both are clean."""
    import httpx

    try:
        for _ in resp.iter_raw():
            pass
        return "complete"
    except httpx.RemoteProtocolError:
        return "cut"
    finally:
        resp.close()


def test_replica_killed_by_sigkill_under_load_every_request_answered(cluster, reference):
    c, vid = cluster["client"], cluster["voice"]
    # the survivor runs all 16 requests alone (twice its share of the 16-request burst) while the
    # replacement loads beside it on the same cores (about as much again): four bursts' time each
    limit_s = max(TEST_S / 3, 4 * cluster.get("burst_s", TEST_S / 3))
    victim = c.get("/readyz").headers[REPLICA_HEADER]
    pid = replica_pid(victim)
    with cf.ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(c.post, "/v1/audio/speech", json=speech_body(vid, i), timeout=limit_s)
                   for i in range(12)]
        streams = [pool.submit(open_stream, c, vid, i, limit_s) for i in range(4)]
        # kill -9 as soon as a stream's headers show work running on the victim (no fixed sleep)
        deadline = time.monotonic() + 180
        while not any(f.done() and f.result().headers[REPLICA_HEADER] == victim for f in streams):
            if all(f.done() for f in streams) or time.monotonic() > deadline:
                break  # every stream went to the other replica: the plain requests are in flight anyway
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
        results = [f.result(timeout=limit_s) for f in futures]  # nothing hangs
        ended = [finish_stream(f.result(timeout=limit_s)) for f in streams]
    for i, r in enumerate(results):
        if r.status_code == 503:  # allowed: a clear answer telling the client when to come back
            assert int(r.headers["retry-after"]) >= 1 and "retry" in r.json()["error"]["message"]
        else:
            assert r.status_code == 200
            assert_pcm_close(r.content, reference[i % len(SEEDS)], what=f"request {i}")
    assert sum(r.status_code == 200 for r in results) >= 6
    assert set(ended) <= {"complete", "cut"}
    # Ray replaces the dead replica; the voice and the cache entries survive in Redis
    # the replacement loads and warms up as the first two did at deploy (they started side by side)
    wait_until(lambda: running_replicas() == 2, "Serve to restart the killed replica",
               max(TEST_S / 3, 2 * cluster["deploy_s"]))
    with cf.ThreadPoolExecutor(8) as pool:
        after = list(pool.map(lambda i: c.post("/v1/audio/speech", json=speech_body(vid, i)), range(8)))
    assert [r.status_code for r in after] == [200] * 8
    assert victim not in {r.headers[REPLICA_HEADER] for r in after}
    for i, r in enumerate(after):
        assert_pcm_close(r.content, reference[i % len(SEEDS)], what=f"request {i} after the kill")
    assert vid in [v["id"] for v in c.get("/v1/voices").json()["data"]]


def test_full_queues_answer_429_with_retry_after(cluster):
    c, vid = cluster["client"], cluster["voice"]
    with cf.ThreadPoolExecutor(40) as pool:
        results = list(pool.map(lambda i: c.post("/v1/audio/speech", json=speech_body(vid, i)), range(40)))
    codes = [r.status_code for r in results]
    odd = [(r.status_code, r.headers.get(REPLICA_HEADER), r.text[:300]) for r in results if r.status_code not in (200, 429)]
    assert not odd and codes.count(200) >= 8 and 429 in codes, (codes, odd)
    for r in results:
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1 and "queue" in r.json()["error"]["message"]
