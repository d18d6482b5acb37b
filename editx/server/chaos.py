"""Chaos load against a running server: request kinds, what each must get back, and a timed run.

Valid kinds (speech, stream, edit) must return exactly the bytes they return alone (same seed);
invalid ones (unknown voice, malformed body, a voice over the prompt limit, a too-short prompt, an
oversize chunked upload) their own 4xx with a message naming the problem; clients that give up
(a short timeout) or leave a stream after its first chunk must not disturb anyone else. Used by
tests/test_chaos.py (in CI) and scripts/chaos.py (longer runs, with resource figures).
"""

from __future__ import annotations

import io
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import numpy as np
import soundfile as sf

VALID = ("speech", "stream", "edit")
GIVE_UP = ("cancelled", "disconnected")


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, sample_rate, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def speech_body(vid: str, seed: int, **kw) -> dict:
    return {"input": f"chaos number {seed}", "voice": vid, "response_format": "pcm", "editx": {"seed": seed}, **kw}


def chunked(total: int, piece: int = 256 * 1024):
    """`total` bytes as a generator: httpx sends it with Transfer-Encoding: chunked."""
    for start in range(0, total, piece):
        yield b"x" * min(piece, total - start)


@dataclass(frozen=True)
class ChaosClient:
    """One request of a kind, each on its own connection. Valid and give-up kinds return
    (status, body bytes); invalid kinds (status, error message)."""

    url: str
    voice: str  # a registered voice
    long_voice: str  # a stored voice over the prompt limit
    edit_clip: bytes  # a WAV to edit
    short_clip: bytes  # a WAV under the prompt minimum
    max_request_bytes: int
    timeout_s: float = 180.0

    def run(self, kind: str, seed: int = 0):
        with httpx.Client(base_url=self.url, timeout=self.timeout_s) as c:
            return getattr(self, kind)(c, seed)

    def speech(self, c, seed):
        r = c.post("/v1/audio/speech", json=speech_body(self.voice, seed))
        return r.status_code, r.content

    def stream(self, c, seed):
        with c.stream("POST", "/v1/audio/speech", json=speech_body(self.voice, seed, stream_format="audio")) as r:
            return r.status_code, b"".join(r.iter_bytes())

    def edit(self, c, seed):
        r = c.post("/v1/audio/edits", files={"file": ("a.wav", self.edit_clip, "audio/wav")},
                   data={"audio_text": "hello world", "edit_type": "style", "edit_info": "whisper",
                         "seed": str(seed), "response_format": "pcm"})
        return r.status_code, r.content

    def unknown_voice(self, c, seed):
        return _error(c.post("/v1/audio/speech", json=speech_body("voice_00000000000000ff", seed)))

    def malformed(self, c, seed):
        return _error(c.post("/v1/audio/speech", content=b'{"input": "half a body',
                             headers={"content-type": "application/json"}))

    def too_long_voice(self, c, seed):
        return _error(c.post("/v1/audio/speech", json=speech_body(self.long_voice, seed)))

    def too_short_prompt(self, c, seed):
        return _error(c.post("/v1/voices", files={"file": ("a.wav", self.short_clip, "audio/wav")},
                             data={"prompt_text": "hi"}))

    def oversize(self, c, seed):
        return _error(c.post("/v1/audio/edits", content=chunked(max(64 * 2**20, 2 * self.max_request_bytes)),
                             headers={"content-type": "application/json"}))

    def cancelled(self, c, seed):
        """Gives up after 0.2 s (an answer that came first must still be the right one)."""
        try:
            r = c.post("/v1/audio/speech", json=speech_body(self.voice, seed), timeout=0.2)
        except httpx.TimeoutException:
            return "gave up", None
        return r.status_code, r.content

    def disconnected(self, c, seed):
        with c.stream("POST", "/v1/audio/speech", json=speech_body(self.voice, seed, stream_format="audio")) as r:
            first = next(r.iter_raw(), b"")
        return "left", (r.status_code, len(first) > 0)

    def expected_errors(self, min_prompt_s: float, max_prompt_s: float) -> dict[str, tuple[int, str]]:
        """Invalid kind -> (status, a phrase its message must contain)."""
        return {"unknown_voice": (404, "unknown voice"), "malformed": (422, "JSON"),
                "too_long_voice": (413, f"the limit is {max_prompt_s:g} s"),
                "too_short_prompt": (400, f"the minimum is {min_prompt_s:g} s"),
                "oversize": (413, f"{self.max_request_bytes} byte limit")}


def _error(r: httpx.Response) -> tuple[int, str]:
    try:
        return r.status_code, r.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return r.status_code, r.text[:200]


def mishandled(kind: str, seed: int, outcome, alone: dict, errors: dict) -> str | None:
    """Why `outcome` is wrong for a request of `kind` (None when it is right)."""
    status, body = outcome
    if kind in VALID:
        return None if outcome == alone[(kind, seed)] else f"{kind} seed {seed}: {status}, not its serial result"
    if kind in errors:
        want, phrase = errors[kind]
        ok = status == want and phrase in body and "Traceback" not in body
        return None if ok else f"{kind}: {status} {body!r}"
    if kind == "cancelled" and status != "gave up" and outcome != alone[("speech", seed)]:
        return f"cancelled seed {seed}: answered {status} with other bytes than its serial result"
    if kind == "disconnected" and body != (200, True):
        return f"disconnected: {body}"
    return None


@dataclass
class ChaosTally:
    requests: int = 0
    injected: int = 0  # invalid, oversize, given up, disconnected
    kinds: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def add(self, kind: str, problem: str | None) -> None:
        self.requests += 1
        self.injected += kind not in VALID
        self.kinds[kind] += 1
        if problem is not None:
            self.problems.append(problem)


def reference(client: ChaosClient, seeds) -> dict:
    """Each valid kind's answer alone, one request at a time."""
    return {(k, s): client.run(k, s) for k in VALID for s in seeds}


def run_for(client: ChaosClient, alone: dict, errors: dict, *, seconds: float, clients: int, seed: int = 0,
            seeds=(0, 1)) -> ChaosTally:
    """`clients` threads send a random mix of every kind for `seconds`; every answer is checked."""
    import concurrent.futures as cf

    rng = np.random.default_rng(seed)
    kinds = list(VALID) * 2 + list(errors) + list(GIVE_UP)
    tally, deadline = ChaosTally(), time.monotonic() + seconds
    with cf.ThreadPoolExecutor(clients) as pool:
        running: dict = {}
        while running or time.monotonic() < deadline:
            while time.monotonic() < deadline and len(running) < clients:
                kind, s = str(rng.choice(kinds)), int(rng.choice(seeds))
                running[pool.submit(client.run, kind, s)] = (kind, s)
            done, _ = cf.wait(running, timeout=1.0, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                kind, s = running.pop(fut)
                try:
                    problem = mishandled(kind, s, fut.result(), alone, errors)
                except Exception as exc:  # noqa: BLE001 - a client-side failure is a mishandled request too
                    problem = f"{kind}: {type(exc).__name__}: {exc}"
                tally.add(kind, problem)
    return tally
