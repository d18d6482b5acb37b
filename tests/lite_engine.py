"""A real lite Engine (Kokoro synthesis, VAD, speed) for script and session tests, with the slow
voice-matching search replaced by a fixed bundled voice per distinct prompt clip (counted)."""

from __future__ import annotations

import hashlib


def fast_lite_engine(cache_dir):
    """(engine, encode_calls): `encode_calls` lists the digest of every prompt the backend encoded."""
    from editx.cache.tiered import TieredCache
    from editx.config import EngineConfig
    from editx.lite.engine_backend import LiteEngineBackend
    from editx.pipeline.engine import Engine

    config = EngineConfig(warmup=False, threads=1)
    backend = LiteEngineBackend.load(config)
    names = sorted(backend.lite.voices)
    assigned: dict[str, str] = {}
    calls: list[str] = []

    def encode(audio, timeline=None):  # one bundled voice per distinct clip, in order of first use
        digest = hashlib.blake2b(audio.samples.tobytes(), digest_size=8).hexdigest()
        calls.append(digest)
        name = assigned.setdefault(digest, names[len(assigned) % len(names)])
        return backend.lite.voice(name)

    backend.encode_prompt = encode
    engine = Engine(config, backend, TieredCache(64 * 2**20, cache_dir, 2**30))
    engine.ready = True
    return engine, calls
