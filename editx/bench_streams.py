"""`editx bench --stream-sweep 1,2,4,8`: many listeners streaming at once, scheduler on vs off.

Per listener count: a wave of that many streamed clones started together (one thread per listener,
reading as fast as chunks come, like a player that buffers), on two Engines around the same loaded
backend: `fifo` (admission order, each request to its end: the before figure) and `fair`
(pipeline/stream_schedule.py), alternated wave by wave so both see the same machine load. Each
listener's chunk arrival times are replayed against a playback clock that starts at its first
chunk (stream_schedule.playback): time to first audio, underruns (a chunk arriving more than
UNDERRUN_TOLERANCE_S after the audio before it finished playing) and the silence they add; per wave,
total throughput (audio seconds delivered over the wave's wall time). Medians over the waves.
"""

from __future__ import annotations

import logging
import os
import statistics
import threading
import time
from dataclasses import replace
from typing import Any

from editx.pipeline.stream_schedule import playback

log = logging.getLogger(__name__)

UNDERRUN_TOLERANCE_S = 0.02  # arrival jitter below this is not heard as a gap
SWEEP_TEXT = ("Benchmarks measure what a report could only estimate, and every stage is timed on the same clock. "
              "Warm runs reuse the cached prompt, while cold runs pay for everything once.")  # ~9 s of speech
WAVE_TIMEOUT_S = 900.0


def _wave(engine, requests: list) -> dict[str, Any]:
    """Start every request at once as a stream; per listener: its chunks' (arrival, seconds)."""
    start = threading.Barrier(len(requests))
    out: list[dict[str, Any]] = [{} for _ in requests]

    def listen(i: int, request) -> None:
        start.wait()
        t0 = time.monotonic()
        rec = out[i]
        rec["start"], rec["chunks"] = t0, []
        try:
            for chunk in engine.stream(request):
                rec["chunks"].append((time.monotonic(), chunk.samples.size / chunk.sample_rate))
        except Exception as exc:  # noqa: BLE001 - a refused or failed stream is reported, not raised
            rec["error"] = f"{type(exc).__name__}: {exc}"
        rec["end"] = time.monotonic()

    threads = [threading.Thread(target=listen, args=(i, r), daemon=True) for i, r in enumerate(requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAVE_TIMEOUT_S)
    listeners = []
    for rec in out:
        item = {"error": rec.get("error")}
        if rec.get("chunks") and any(s > 0 for _, s in rec["chunks"]):
            p = playback(rec["start"], rec["chunks"], UNDERRUN_TOLERANCE_S)
            item.update(ttfa_s=p.first_audio_s, underruns=p.underruns, gap_s=p.gap_s, audio_s=p.audio_s,
                        done_s=p.done_s)
        listeners.append(item)
    wall = max(r.get("end", 0.0) for r in out) - min(r["start"] for r in out if "start" in r)
    audio = sum(item.get("audio_s", 0.0) for item in listeners)
    return {"listeners": listeners, "wall_s": wall, "audio_s": audio, "throughput": audio / wall if wall > 0 else None}


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(q * (len(values) - 1))))
    return values[k]


def summarize(waves: list[dict[str, Any]]) -> dict[str, Any]:
    """Per wave: p50/p95/max time to first audio over its listeners, underruns, throughput; medians
    of those over the waves."""
    per = []
    for w in waves:
        ok = [x for x in w["listeners"] if "ttfa_s" in x]
        ttfa = [x["ttfa_s"] for x in ok]
        per.append({"ttfa_p50": _pct(ttfa, 0.5), "ttfa_p95": _pct(ttfa, 0.95), "ttfa_max": max(ttfa, default=None),
                    "underruns": sum(x["underruns"] for x in ok), "gap_s": sum(x["gap_s"] for x in ok),
                    "streams_with_underrun": sum(x["underruns"] > 0 for x in ok),
                    "failed": len(w["listeners"]) - len(ok), "throughput": w["throughput"]})

    def med(key):
        vals = [p[key] for p in per if p[key] is not None]
        return statistics.median(vals) if vals else None

    return {key: med(key) for key in per[0]} | {"waves": len(per)}


def run_stream_sweep(pool, base_arm, reqs, listeners: list[int], *, runs: int, fixture: bool,
                     text: str | None = None) -> dict[str, Any]:
    """The sweep on two arms built around `base_arm`'s backend: fifo and fair, wave by wave."""
    from editx.bench_stream import CHARS_PER_S, TOKENS_PER_S

    text = text or SWEEP_TEXT
    cfg = base_arm.config
    limit = max(max(listeners), cfg.max_streams)
    arms = [pool.add(f"streams-{policy}", cfg.with_(stream_schedule=policy, max_streams=limit))
            for policy in ("fifo", "fair")]
    sampling = None
    if fixture or cfg.sampling.max_new_tokens is not None:  # random weights rarely choose EOS: cap per char
        sampling = replace(cfg.sampling, max_new_tokens=None, max_tokens_per_char=TOKENS_PER_S / CHARS_PER_S)
    for arm in arms:  # the voice is warm (prompt encoding cached) for every wave
        pool.activate(arm)
        warm = reqs.make_seeded("clone", reqs.seed, text=text, sampling=sampling)
        list(arm.engine.stream(warm))
    points = []
    for n in listeners:
        waves: dict[str, list] = {arm.name: [] for arm in arms}
        for r in range(runs):
            for arm in arms if r % 2 == 0 else arms[::-1]:
                pool.activate(arm)
                requests = [reqs.make_seeded("clone", reqs.seed + 1 + i, text=text, sampling=sampling)
                            for i in range(n)]
                load = os.getloadavg()[0]
                wave = _wave(arm.engine, requests)
                wave["load1"] = load
                waves[arm.name].append(wave)
                log.info("stream wave", extra={"arm": arm.name, "listeners": n, "wall_s": round(wave["wall_s"], 2)})
        points.append({"listeners": n, "arms": {name: {"summary": summarize(ws), "waves": ws}
                                                for name, ws in waves.items()}})
    return {"text": text, "chars": len(text), "runs": runs, "tolerance_s": UNDERRUN_TOLERANCE_S,
            "backend": cfg.resolved_backend, "points": points}


def markdown(section: dict[str, Any]) -> str:
    """The sweep as a table: one row per listener count and arm."""
    lines = [f"Stream sweep ({section['backend']}; {section['chars']}-char text; medians of {section['runs']} "
             f"wave(s); underrun = a gap > {section['tolerance_s'] * 1000:.0f} ms)", "",
             "| listeners | schedule | TTFA p50 s | TTFA p95 s | TTFA max s | underruns (streams) | gaps s | "
             "throughput audio-s/s | failed |", "|---|---|---|---|---|---|---|---|---|"]

    def f(v, d=2):
        return "–" if v is None else f"{v:.{d}f}"

    for point in section["points"]:
        for name, arm in point["arms"].items():
            s = arm["summary"]
            lines.append(f"| {point['listeners']} | {name.removeprefix('streams-')} | {f(s['ttfa_p50'])} | "
                         f"{f(s['ttfa_p95'])} | {f(s['ttfa_max'])} | {f(s['underruns'], 0)} "
                         f"({f(s['streams_with_underrun'], 0)}) | {f(s['gap_s'])} | {f(s['throughput'])} | "
                         f"{f(s['failed'], 0)} |")
    return "\n".join(lines)
