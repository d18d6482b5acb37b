"""`editx bench --stream-texts`: time to first audio vs full latency for texts of given spoken lengths.

Per length: a streamed and an offline request with the same text and seed, alternated on one warm
voice (prompt encoding, LM voice prefix and streaming prime cached), plus what happened before the
first audio. The report's `ttfa` and `ttfa_length` targets read these points.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from editx.bench import SENTENCES, Requests
from editx.errors import ValidationError

log = logging.getLogger(__name__)

CHARS_PER_S = 14.5  # English read aloud: ~150 words per minute of ~5.8 characters with their space
TOKENS_PER_S = 25 * 5 / 3  # mixed ids per second of audio: 25 flow rows/s, 5 ids make 3 rows


def speech_text(seconds: float) -> str:
    """About `seconds` of text read aloud (CHARS_PER_S): SENTENCES cycled, cut after the word that
    reaches the length and closed with a full stop."""
    if seconds <= 0:
        raise ValidationError(f"stream text lengths must be > 0 seconds, got {seconds}")
    pool = " ".join(SENTENCES).split()
    words: list[str] = []
    length = -1  # of " ".join(words)
    while length < seconds * CHARS_PER_S:
        words.append(pool[len(words) % len(pool)])
        length += len(words[-1]) + 1
    return " ".join(words).rstrip(",.;:") + "."


def run_stream_texts(pool, arms: list, reqs: Requests, seconds: list[float], *, runs: int,
                     fixture: bool) -> list[dict]:
    """Per text length and arm: streamed then offline, `runs` times, on a warm voice; TTFA vs full
    latency. The last arm is the main one (its points carry `main: True` and feed the targets).

    Random fixture weights rarely choose EOS, so on a fixture (or whenever a token cap is set) each
    segment's LM output is capped at the tokens its text takes to say (max_tokens_per_char) instead of
    one fixed cap; real weights without a cap stop at EOS.
    """
    from editx.bench_runs import measure

    texts = [(secs, speech_text(secs)) for secs in seconds]
    sampling = {}
    for arm in arms:
        sampling[arm.name] = None
        if fixture or arm.config.sampling.max_new_tokens is not None:
            sampling[arm.name] = replace(arm.config.sampling, max_new_tokens=None,
                                         max_tokens_per_char=TOKENS_PER_S / CHARS_PER_S)
        # the voice is warm for every point: prompt encoding, LM voice prefix and streaming prime cached
        measure(pool, arm, reqs.make("clone", 0, text=texts[0][1], sampling=sampling[arm.name]), stream=True)
    out = []
    for secs, text in texts:
        for arm in arms:
            pairs = []
            for _ in range(runs):
                req = reqs.make("clone", 0, text=text, sampling=sampling[arm.name])
                streamed, offline = measure(pool, arm, req, stream=True), measure(pool, arm, req)
                pairs.append((streamed, offline))
                log.info("bench stream text", extra={"arm": arm.name, "seconds": secs,
                                                     "ttfa_s": round(streamed["ttfa_s"] or 0, 3),
                                                     "offline_s": round(offline["total_s"], 3)})
            out.append({"arm": arm.name, "main": arm is arms[-1], **_stream_text_point(secs, text, pairs)})
    return out


def _stream_text_point(secs: float, text: str, pairs: list) -> dict[str, Any]:
    import numpy as np

    def med(values):
        values = [v for v in values if v is not None]
        return float(np.median(values)) if values else None

    streamed, offline = [p[0] for p in pairs], [p[1] for p in pairs]
    ttfa, full = med(r["ttfa_s"] for r in streamed), med(r["total_s"] for r in offline)
    return {"seconds": secs, "chars": len(text), "segments": streamed[0]["rounds"], "runs": len(pairs),
            "ttfa_s": ttfa, "stream_total_s": med(r["total_s"] for r in streamed),
            "offline_total_s": full, "audio_s": med(r["audio_s"] for r in offline),
            "ttfa_fraction": ttfa / full if ttfa is not None and full else None,
            "first_stages": _first_stages(streamed[0]), "streamed_runs": streamed, "offline_runs": offline}


def _first_stages(run: dict) -> dict[str, float]:
    """What the time to first audio is made of: seconds of each top-level stage before the first audio.
    `lm_decode` spans the flow and vocoder chunks run between its tokens; they are taken out of it."""
    tl = run["timeline"]
    first = tl.get("ttfa_s")
    if first is None:
        return {}
    before = [(st["name"], st["start_s"], min(st["start_s"] + st["duration_s"], first) - st["start_s"])
              for st in tl["stages"] if not st.get("parent") and not st.get("instant") and st["start_s"] < first]
    out: dict[str, float] = {}
    for name, _start, seconds in before:
        out[name] = out.get(name, 0.0) + seconds
    decode_start = next((start for name, start, _ in before if name == "lm_decode"), None)
    if decode_start is not None:
        inside = sum(seconds for name, start, seconds in before if name != "lm_decode" and start >= decode_start)
        out["lm_decode"] = max(0.0, out["lm_decode"] - inside)
    return out
