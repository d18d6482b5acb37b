"""A longer chaos run than CI's (not run in CI): a real server on 127.0.0.1 over the tiny fixture,
a random mix of valid, invalid, oversize, given-up and disconnected requests for --seconds.

Prints one JSON object: requests, failures injected, requests mishandled (with the first few
reasons), and the server process's peak RSS and thread counts before and after the run.

    .venv/bin/python scripts/chaos.py --seconds 300 --clients 12
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path


def rss_mib() -> float:
    """The process's resident set now (VmRSS), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--clients", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-request-bytes", type=int, default=300_000)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)  # an entry point: the library only has loggers

    import numpy as np
    import uvicorn

    from editx import fixtures
    from editx.cache.tiered import TieredCache
    from editx.config import EngineConfig, SamplingConfig
    from editx.pipeline.engine import Engine
    from editx.pipeline.stepaudio import StepAudioBackend
    from editx.pipeline.types import PromptAudio
    from editx.server.app import create_app
    from editx.server.chaos import ChaosClient, reference, run_for, wav_bytes
    from editx.server.settings import ServerSettings
    from editx.server.voices import SQLiteVoiceStore

    def clip(seconds: float, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        t = np.arange(int(seconds * 16000)) / 16000
        x = np.sin(2 * np.pi * 140 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2)
        return (0.3 * x + 0.003 * rng.standard_normal(t.size)).astype(np.float32)

    root = Path(tempfile.mkdtemp(prefix="editx-chaos-"))
    fixtures.make(root / "models", preset="tiny", seed=0)
    config = EngineConfig(model_dir=root / "models", sampling=SamplingConfig(max_new_tokens=40), max_batch=4,
                          threads=2, cache_dir=root / "cache", max_streams=4 * args.clients)
    engine = Engine(config, StepAudioBackend.load(config), TieredCache(2**28, root / "cache", 2**30))
    engine.ready = True
    store = SQLiteVoiceStore(root / "data")
    app = create_app(engine, store=store, settings=ServerSettings(data_dir=root / "data",
                                                                  max_request_bytes=args.max_request_bytes))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}"

    import httpx

    voice = httpx.post(url + "/v1/voices", files={"file": ("r.wav", wav_bytes(clip(2, 7), 16000), "audio/wav")},
                       data={"prompt_text": "hello world"}, timeout=300).json()["id"]
    too_long = store.add("old", "hi", PromptAudio(clip(config.max_prompt_s + 1, 1), 16000)).id
    client = ChaosClient(url, voice, too_long, wav_bytes(clip(2, 3), 16000), wav_bytes(clip(0.05, 4), 16000),
                         args.max_request_bytes)
    errors = client.expected_errors(config.min_prompt_s, config.max_prompt_s)
    seeds = (0, 1, 2)
    alone = reference(client, seeds)
    before = {"rss_mib": round(rss_mib(), 1), "threads": threading.active_count()}
    t0 = time.monotonic()
    tally = run_for(client, alone, errors, seconds=args.seconds, clients=args.clients, seed=args.seed, seeds=seeds)
    elapsed = time.monotonic() - t0
    deadline = time.monotonic() + 120
    while (engine.health()["in_flight"] or engine.health()["streams"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    after_ok = client.run("speech", 0) == alone[("speech", 0)]
    health = engine.health()
    after = {"rss_mib": round(rss_mib(), 1), "threads": threading.active_count()}
    report = {"seconds": round(elapsed, 1), "clients": args.clients, "requests": tally.requests,
              "failures_injected": tally.injected, "mishandled": len(tally.problems),
              "problems": tally.problems[:10], "kinds": dict(tally.kinds), "valid_request_after_ok": after_ok,
              "engine_after": {k: health[k] for k in ("alive", "queue_depth", "in_flight", "streams")},
              "peak_rss_mib": round(peak_rss_mib(), 1), "before": before, "after": after}
    server.should_exit = True
    thread.join(60)
    engine.close()
    print(json.dumps(report, indent=2))
    return 0 if not tally.problems and after_ok else 1


if __name__ == "__main__":
    sys.exit(main())
