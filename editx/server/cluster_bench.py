"""Replica scaling benchmark: throughput and p50/p90 latency of the Ray Serve app at 1, 2, … replicas.

Every replica count is measured the same way, one after the other, in one local Ray instance: deploy,
register one voice, warm each replica, then send `requests` speech requests from `concurrency`
client threads over HTTP on loopback and time each one end to end. `python -m editx.server.cluster_bench
--model-dir D` prints the table; `bench_replicas` returns the rows for the benchmark report.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import io
import json
import logging
import socket
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

BENCH_APP = "editx-bench"
DEFAULT_TEXT = "The quick brown fox jumps over the lazy dog, then rests in the shade."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prompt_wav(seconds: float = 3.0, sr: int = 16000) -> bytes:
    """A deterministic voiced clip (harmonics with a slow vibrato) as float32 WAV."""
    import soundfile as sf

    t = np.arange(int(seconds * sr)) / sr
    phase = 2 * np.pi * np.cumsum(130 + 20 * np.sin(2 * np.pi * 0.8 * t)) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 6)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2)
    buf = io.BytesIO()
    sf.write(buf, (0.3 * x / np.max(np.abs(x))).astype(np.float32), sr, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def _measure(base: str, n: int, requests: int, concurrency: int, text: str) -> dict:
    import httpx

    with httpx.Client(base_url=base, timeout=600) as c:
        r = c.post("/v1/voices", files={"file": ("p.wav", _prompt_wav(), "audio/wav")},
                   data={"prompt_text": "a short reference clip", "name": "bench"})
        r.raise_for_status()
        vid = r.json()["id"]

        def one(i: int):
            t0 = time.perf_counter()
            r = c.post("/v1/audio/speech", json={"input": text, "voice": vid, "response_format": "pcm",
                                                 "editx": {"seed": i}})
            return r.status_code, r.headers.get("x-editx-replica"), time.perf_counter() - t0

        with cf.ThreadPoolExecutor(max(concurrency, n)) as pool:  # warm-up: every replica serves once
            list(pool.map(one, range(2 * n)))
            t0 = time.perf_counter()
            done = list(pool.map(one, range(requests)) if concurrency >= requests else
                        _bounded(pool, one, requests, concurrency))
            wall = time.perf_counter() - t0
    ok = [d for d in done if d[0] == 200]
    lat = np.array([d[2] for d in ok]) if ok else np.array([np.nan])
    return {"replicas": n, "requests": requests, "concurrency": concurrency, "ok": len(ok), "wall_s": round(wall, 3),
            "throughput_rps": round(len(ok) / wall, 3), "p50_s": round(float(np.percentile(lat, 50)), 3),
            "p90_s": round(float(np.percentile(lat, 90)), 3),
            "per_replica": dict(Counter(d[1] for d in ok).most_common())}


def _bounded(pool, fn, requests: int, concurrency: int) -> list:
    """`requests` calls with at most `concurrency` in flight (a closed-loop load)."""
    out, pending, nxt = [], set(), 0
    while nxt < requests or pending:
        while nxt < requests and len(pending) < concurrency:
            pending.add(pool.submit(fn, nxt))
            nxt += 1
        done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
        out.extend(f.result() for f in done)
    return out


def bench_replicas(config, *, counts: tuple[int, ...] = (1, 2), requests: int = 16, concurrency: int = 8,
                   text: str = DEFAULT_TEXT, replica_cpus: float = 1.0, ray_num_cpus: int | None = None) -> list[dict]:
    """Deploy the app at each replica count in turn and measure it; one row per count (see module doc).

    `config` is the EngineConfig every replica loads (cap `sampling.max_new_tokens` on random weights).
    Starts a local Ray instance unless one is running, and leaves Ray as it found it."""
    import ray
    from ray import serve

    from editx.server.cluster import LOCAL_RAY_SYSTEM_CONFIG, ClusterOptions, build_app
    from editx.server.settings import ServerSettings

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=ray_num_cpus or max(1, int(max(counts) * replica_cpus)), include_dashboard=False,
                 log_to_driver=False, _system_config=LOCAL_RAY_SYSTEM_CONFIG)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="editx-bench-") as tmp:
            settings = ServerSettings(data_dir=Path(tmp))
            for n in counts:
                options = ClusterOptions(replicas=n, replica_cpus=replica_cpus, max_queued_requests=10 * requests)
                t0 = time.perf_counter()
                serve.run(build_app(config, settings, options), name=BENCH_APP, route_prefix="/")
                deploy_s = time.perf_counter() - t0
                row = _measure(f"http://127.0.0.1:{port}", n, requests, concurrency, text)
                row["deploy_s"] = round(deploy_s, 3)
                log.info("replica bench", extra=row)
                rows.append(row)
                serve.delete(BENCH_APP)
    finally:
        if started:
            serve.shutdown()
            ray.shutdown()
    base = rows[0]["throughput_rps"] if rows else 0
    for row in rows:
        row["speedup"] = round(row["throughput_rps"] / base, 2) if base else None
    return rows


def format_table(rows: list[dict]) -> str:
    head = f"{'replicas':>8} {'ok':>5} {'wall s':>8} {'req/s':>7} {'speedup':>7} {'p50 s':>7} {'p90 s':>7}  per replica"
    lines = [head]
    for r in rows:
        lines.append(f"{r['replicas']:>8} {r['ok']:>5} {r['wall_s']:>8.2f} {r['throughput_rps']:>7.2f} "
                     f"{r['speedup']:>7.2f} {r['p50_s']:>7.2f} {r['p90_s']:>7.2f}  {list(r['per_replica'].values())}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from editx.config import EngineConfig, SamplingConfig

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, default=None, help="default: the lite backend")
    p.add_argument("--counts", default="1,2", help="replica counts, comma-separated")
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--replica-cpus", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=80, help="LM cap (random fixture weights never stop)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = p.parse_args(argv)
    from editx.telemetry.log import configure_logging

    configure_logging(level=logging.WARNING)  # an entry point: the one set-up every entry point uses
    config = EngineConfig.from_env(model_dir=args.model_dir, threads=max(1, int(args.replica_cpus)), cache_disk_bytes=0,
                                   sampling=SamplingConfig(max_new_tokens=args.max_new_tokens))
    rows = bench_replicas(config, counts=tuple(int(c) for c in args.counts.split(",")), requests=args.requests,
                          concurrency=args.concurrency, replica_cpus=args.replica_cpus)
    sys.stdout.write(format_table(rows) + "\n")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
