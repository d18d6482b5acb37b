"""Telemetry: stage timeline (schema, ordering, sums), snapshot immutability, metrics, log lines."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import sys
import threading

import pytest

from editx.telemetry.log import configure_logging, log_event
from editx.telemetry.metrics import Metrics
from editx.telemetry.timing import Timeline, TimelineSnapshot

TOP_KEYS = {"op", "cache", "stages", "audio_s", "rtf", "lm_tokens", "total_s", "ttfa_s"}


class FakeClock:
    """Each read advances by a fixed step, so every duration is known exactly."""

    def __init__(self, step: float = 0.5) -> None:
        self.t = 100.0
        self.step = step
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        self.t += self.step
        return self.t


def run_request(tl: Timeline) -> None:
    with tl.stage("prompt", voice="v1"), tl.stage("tokenize") as s:
        s["frames"] = 50
    tl.set_cache("prompt", "disk")
    with tl.stage("lm", steps=10):
        pass
    tl.mark("first_audio", chunk=0)
    with tl.stage("vocoder"):
        pass
    tl.mark("first_audio", chunk=1)  # only the first one sets ttfa_s


def test_timeline_exact_with_fake_clock():
    clock = FakeClock()
    syncs = []
    tl = Timeline("clone", sync=lambda: syncs.append(1), clock=clock)
    run_request(tl)
    d = tl.finish(audio_s=10.0, lm_tokens=120).to_dict()
    assert set(d) == TOP_KEYS and d["op"] == "clone" and d["cache"] == {"prompt": "disk"}
    assert [s["name"] for s in d["stages"]] == [
        "prompt",
        "tokenize",
        "lm",
        "first_audio",
        "vocoder",
        "first_audio",
    ]
    by = {s["name"]: s for s in d["stages"]}
    assert by["prompt"] == {"name": "prompt", "start_s": 0.5, "duration_s": 1.5, "voice": "v1"}
    assert by["tokenize"] == {
        "name": "tokenize",
        "start_s": 1.0,
        "duration_s": 0.5,
        "frames": 50,
        "parent": "prompt",
    }
    assert by["lm"] == {"name": "lm", "start_s": 2.5, "duration_s": 0.5, "steps": 10}
    assert d["stages"][3] == {
        "name": "first_audio",
        "start_s": 3.5,
        "duration_s": 0.0,
        "chunk": 0,
        "instant": True,
    }
    assert d["ttfa_s"] == 3.5 and d["total_s"] == 5.5 and d["lm_tokens"] == 120
    assert d["rtf"] == pytest.approx(0.55)
    assert len(syncs) == clock.reads - 1  # every read but the start one is preceded by sync


def test_timeline_real_clock_invariants():
    tl = Timeline("edit")
    run_request(tl)
    with pytest.raises(RuntimeError), tl.stage("flow", n_steps=10):
        raise RuntimeError("boom")
    d = json.loads(json.dumps(tl.finish(audio_s=1.0).to_dict()))
    stages = d["stages"]
    assert set(d) == TOP_KEYS
    for s in stages:
        assert {"name", "start_s", "duration_s"} <= set(s)
        assert s["duration_s"] >= 0 and s["start_s"] >= 0
        assert s["start_s"] + s["duration_s"] <= d["total_s"]
    assert [s["start_s"] for s in stages] == sorted(s["start_s"] for s in stages)
    top = [s for s in stages if "parent" not in s and not s.get("instant")]
    assert sum(s["duration_s"] for s in top) <= d["total_s"]
    assert stages[-1]["name"] == "flow" and stages[-1]["error"] == "RuntimeError"
    assert 0 <= d["ttfa_s"] <= d["total_s"] and d["rtf"] == d["total_s"]


def test_parallel_stages_from_threads_keep_their_own_nesting():
    tl = Timeline("clone")
    barrier = threading.Barrier(2)

    def work(name):
        with tl.stage(name):
            barrier.wait(10)
            with tl.stage(f"{name}.inner"):
                pass

    threads = [threading.Thread(target=work, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    by = {s["name"]: s for s in tl.to_dict()["stages"]}
    assert set(by) == {"a", "b", "a.inner", "b.inner"}
    assert "parent" not in by["a"] and "parent" not in by["b"]
    assert by["a.inner"]["parent"] == "a" and by["b.inner"]["parent"] == "b"


def test_add_stage_validation_and_defaults():
    tl = Timeline()
    tl.add_stage("decode", 0.25, 0.5, batch=4)
    assert tl.to_dict()["stages"] == [{"name": "decode", "start_s": 0.25, "duration_s": 0.5, "batch": 4}]
    for bad in ((-1.0, 0.1), (0.0, -0.1), (float("nan"), 0.1)):
        with pytest.raises(ValueError):
            tl.add_stage("x", *bad)
    with pytest.raises(ValueError, match="may not be named"):
        tl.mark("x", duration_s=1)
    with tl.stage("y") as s:
        s["name"] = "clash"  # renamed rather than overwriting the record's own field
    assert tl.snapshot().stage("y").to_dict()["name_"] == "clash"
    d = tl.to_dict()
    assert d["audio_s"] is None and d["rtf"] is None and d["ttfa_s"] is None and d["lm_tokens"] is None


def test_snapshot_is_frozen_and_detached():
    tl = Timeline("clone", clock=FakeClock())
    run_request(tl)
    snap = tl.finish(audio_s=2.0, lm_tokens=7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.total_s = 0.0
    with pytest.raises(TypeError):
        snap.cache["prompt"] = "miss"
    with pytest.raises(TypeError):
        snap.stages[0].attrs["voice"] = "other"
    n = len(snap.stages)
    with tl.stage("late"):
        pass
    tl.set_cache("other", "miss")
    assert len(snap.stages) == n and "other" not in snap.cache
    assert tl.finish().total_s == snap.total_s  # the first finish() fixed the total
    assert TimelineSnapshot.from_dict(json.loads(json.dumps(snap.to_dict()))).to_dict() == snap.to_dict()


def test_format_table():
    tl = Timeline("clone", clock=FakeClock())
    run_request(tl)
    text = tl.finish(audio_s=10.0, lm_tokens=120).format_table()
    lines = text.splitlines()
    assert lines[0].startswith("op clone | total 5.500 s | audio 10.000 s | RTF 0.550 | TTFA 3.500 s")
    assert "cache prompt=disk" in lines[0]
    assert lines[1].split() == ["stage", "start_s", "dur_s", "share", "attrs"]
    assert len(lines) == 2 + 6
    assert lines[3].startswith("  tokenize") and "frames=50" in lines[3]
    assert "27.3%" in lines[2] and "instant" in lines[5]


def test_log_event_one_json_line():
    stream = io.StringIO()
    configure_logging("json", stream=stream)
    try:
        tl = Timeline("clone", clock=FakeClock())
        run_request(tl)
        log_event(logging.getLogger("editx.test"), "request", name="n1", **tl.finish(audio_s=1.0).to_dict())
        log_event(logging.getLogger("editx.test"), "hidden", level=logging.DEBUG, x=1)
    finally:
        configure_logging("console", stream=io.StringIO())
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert rec["event"] == "request" and rec["name_"] == "n1" and rec["logger"] == "editx.test"
    assert rec["op"] == "clone" and rec["stages"][0]["name"] == "prompt" and rec["total_s"] == 5.5


# ---- metrics ---------------------------------------------------------------------------------
def sample_timeline() -> dict:
    tl = Timeline("clone", clock=FakeClock(0.25))
    run_request(tl)
    return tl.finish(audio_s=2.0, lm_tokens=10).to_dict()


def test_metrics_noop_without_prometheus(monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    m = Metrics()
    assert not m.enabled and m.registry is None
    m.observe_timeline(sample_timeline(), backend="editx")
    m.queue_depth.set(3)
    m.in_flight.inc()
    body, ctype = m.render_latest()
    assert body.startswith(b"#") and ctype.startswith("text/plain")
    from editx.errors import ValidationError

    with pytest.raises(ValidationError, match=r"editx\[metrics\]"):
        Metrics(enabled=True)


def test_metrics_real_and_isolated():
    pytest.importorskip("prometheus_client", reason="prometheus_client (editx[metrics]) is not installed")
    m, other = Metrics(), Metrics()
    assert m.enabled and m.registry is not other.registry
    d = sample_timeline()
    m.observe_timeline(d, backend="lite")
    m.observe_timeline(d, backend="lite", status="error")
    v = m.registry.get_sample_value
    assert v("editx_stage_seconds_count", {"stage": "lm", "op": "clone", "backend": "lite"}) == 2
    assert v("editx_stage_seconds_sum", {"stage": "lm", "op": "clone", "backend": "lite"}) == pytest.approx(
        0.5
    )
    assert v("editx_stage_seconds_count", {"stage": "tokenize", "op": "clone", "backend": "lite"}) is None
    assert v("editx_stage_seconds_count", {"stage": "first_audio", "op": "clone", "backend": "lite"}) is None
    assert v("editx_requests_total", {"op": "clone", "status": "ok", "backend": "lite"}) == 1
    assert v("editx_requests_total", {"op": "clone", "status": "error", "backend": "lite"}) == 1
    # the timeline's cache outcomes are not counted again: the Engine counts each lookup as it happens
    assert v("editx_cache_lookups_total", {"tier": "memory", "result": "miss"}) is None
    m.observe_cache_outcome("disk", ("memory", "disk"))
    assert v("editx_cache_lookups_total", {"tier": "memory", "result": "miss"}) == 1
    assert v("editx_cache_lookups_total", {"tier": "disk", "result": "hit"}) == 1
    assert v("editx_cache_lookups_total", {"tier": "shared", "result": "miss"}) is None
    assert v("editx_rtf_count", {"op": "clone", "backend": "lite"}) == 2
    assert v("editx_ttfa_seconds_sum", {"op": "clone", "backend": "lite"}) == pytest.approx(2 * d["ttfa_s"])
    m.observe_cache_outcome("miss", ("memory", "disk", "shared"))
    assert v("editx_cache_lookups_total", {"tier": "shared", "result": "miss"}) == 1
    m.queue_depth.set(5)
    m.in_flight.inc()
    assert v("editx_queue_depth") == 5 and v("editx_in_flight") == 1
    assert other.registry.get_sample_value("editx_requests_total",
                                           {"op": "clone", "status": "ok", "backend": "lite"}) is None
    body, ctype = m.render_latest()
    assert b"editx_stage_seconds_bucket" in body and ctype.startswith("text/plain")
