"""Bench section: how close the lite backend's voices get to real people, method by method, side by side.

For each clip of a real-voice set (a folder with manifest.json, see data/real-voices/README.md) the
clip is cut in two: the voice is matched on the first part (A) only, and judged on a held-out
sentence against the second part (B), so a method that over-fits the matcher's own objective (GE2E
cosine of the probe sentence to A) shows it. Methods: the default voice, the best pure bundled voice,
the blend of bundled voices, and the blend plus the timbre search. Per clip and method: the
objective (probe vs A), the held-out similarity (held-out sentence vs B), Whisper tiny.en WER of the
held-out sentence, and the seconds the match took (with the machine's load average beside it).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from editx.errors import ValidationError

log = logging.getLogger(__name__)

HELD_OUT_TEXT = "The quick brown fox jumps over the lazy dog, and then it runs back home."
MATCH_FRACTION = 0.6  # the first 60 % of a clip is what the matcher hears; the rest is held out
SET_RATE = 16_000  # the set's audio: 16 kHz mono 16-bit FLAC, peak <= 0.99
PEAK = 0.99
METHODS = ("default", "best_pure", "blend", "search")


def convert_clip(data: bytes, *, name: str) -> bytes:
    """A source recording (any format editx decodes) -> the set's form: mono, 16 kHz (soxr "HQ"),
    scaled down to a peak of 0.99 when louder, 16-bit FLAC bytes."""
    import soxr

    from editx.audio.io import load_audio

    audio = load_audio(data, name=name)
    x = audio.samples
    if audio.sample_rate != SET_RATE:
        x = soxr.resample(x, audio.sample_rate, SET_RATE, quality="HQ")
    peak = float(np.abs(x).max())
    if peak > PEAK:
        x = x * (PEAK / peak)
    buf = io.BytesIO()
    sf.write(buf, np.asarray(x, np.float32), SET_RATE, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def pcm_sha256(flac: bytes) -> str:
    """SHA-256 of a FLAC file's decoded 16-bit samples (independent of the FLAC encoder's version)."""
    pcm, _ = sf.read(io.BytesIO(flac), dtype="int16")
    return hashlib.sha256(np.ascontiguousarray(pcm, "<i2").tobytes()).hexdigest()


def load_manifest(folder: Path) -> list[dict[str, Any]]:
    """The set's clips from folder/manifest.json, each checked to exist with the recorded audio
    (`pcm_sha256`: the decoded samples' hash, so another FLAC encoder version still passes)."""
    path = Path(folder) / "manifest.json"
    try:
        clips = json.loads(path.read_text(encoding="utf-8"))["clips"]
    except (OSError, ValueError, KeyError) as e:
        raise ValidationError(f"{path}: not a real-voice manifest ({e})") from None
    for clip in clips:
        audio = Path(folder) / clip["file"]
        if not audio.is_file():
            raise ValidationError(f"{audio} is missing; see data/real-voices/README.md for where the set comes from")
        digest = pcm_sha256(audio.read_bytes())
        if digest != clip["pcm_sha256"]:
            raise ValidationError(f"{audio}: its samples have SHA-256 {digest}, the manifest says "
                                  f"{clip['pcm_sha256']}; rebuild it with scripts/fetch_real_voices.py")
    return clips


def _split(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cut = int(len(x) * MATCH_FRACTION)
    return x[:cut], x[cut:]


def run_voice_section(folder: Path, lite, oracle, *, search_probes: int, search_budget_s: float,
                      limit: int | None = None) -> dict[str, Any]:
    """Every clip × method (see the module docstring); `lite` is a loaded LiteBackend."""
    from editx.audio.io import load_audio
    from editx.lite.backend import SAMPLE_RATE

    clips = load_manifest(folder)[:limit]
    held_pieces = lite.g2p.pieces(HELD_OUT_TEXT)
    base = lite.base_embeddings()
    rows = []
    load_before = os.getloadavg()
    for clip in clips:
        audio = load_audio(Path(folder) / clip["file"])
        part_a, part_b = _split(audio.samples)
        emb_a = lite.speaker.embed(part_a, audio.sample_rate)
        emb_b = lite.speaker.embed(part_b, audio.sample_rate)
        voices: dict[str, Any] = {"default": (lite.voice(), 0.0)}
        voices["best_pure"] = (lite.voice(list(lite.voices)[int(np.argmax(base @ emb_a))]), 0.0)
        t0 = time.perf_counter()
        voices["blend"] = (lite.encode_voice(part_a, audio.sample_rate, search_probes=0), time.perf_counter() - t0)
        t0 = time.perf_counter()
        searched = lite.encode_voice(part_a, audio.sample_rate, search_probes=search_probes,
                                     search_budget_s=search_budget_s)
        voices["search"] = (searched, time.perf_counter() - t0)
        row: dict[str, Any] = {"id": clip["id"], "language": clip.get("language"), "f0_hz": clip.get("f0_hz"),
                               "search_probes": searched.search_probes, "out_of_time": searched.out_of_time}
        for name, (enc, match_s) in voices.items():
            probe = float(lite._probe_embedding(enc.table) @ emb_a)
            held = np.concatenate([a for _, a in lite._render(held_pieces, enc.table, 1.0)])
            row[name] = {"objective": probe,
                         "held_out": float(lite.speaker.embed(held, SAMPLE_RATE) @ emb_b),
                         "wer": oracle.wer(HELD_OUT_TEXT, held, SAMPLE_RATE) if oracle is not None else None,
                         "match_s": match_s, "voice": enc.describe()}
        log.info("voice bench clip", extra={"clip": clip["id"], **{m: round(row[m]["held_out"], 3) for m in METHODS},
                                             **{f"{m}_wer": row[m]["wer"] for m in METHODS}})
        rows.append(row)
    summary = {m: {"objective": _median(r[m]["objective"] for r in rows),
                   "held_out": _median(r[m]["held_out"] for r in rows),
                   "wer": _median(r[m]["wer"] for r in rows),
                   "match_s": _median(r[m]["match_s"] for r in rows),
                   "match_s_max": max((r[m]["match_s"] for r in rows), default=None)} for m in METHODS}
    return {"folder": str(folder), "clips": rows, "summary": summary, "held_out_text": HELD_OUT_TEXT,
            "match_fraction": MATCH_FRACTION, "search_probes": search_probes,
            "search_budget_s": None if math.isinf(search_budget_s) else search_budget_s,
            "load_avg_before": list(load_before), "load_avg_after": list(os.getloadavg()),
            "cores": os.cpu_count()}


def _median(values) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def _f(v, fmt: str = ".3f") -> str:
    return "-" if v is None else format(v, fmt)


def markdown(section: dict[str, Any]) -> list[str]:
    """The side-by-side table: held-out similarity (objective in brackets) per clip and method."""
    head = " | ".join(METHODS)
    out = ["## lite voices vs real people (speaker similarity, held-out; matcher's own objective in brackets)", "",
           f"matched on the first {section['match_fraction']:.0%} of each clip, judged on {section['held_out_text']!r} "
           f"against the rest; search: {section['search_probes']} probes, "
           f"{'no' if section['search_budget_s'] is None else format(section['search_budget_s'], 'g') + ' s'} time limit; "
           f"load average {section['load_avg_before'][0]:.1f} → {section['load_avg_after'][0]:.1f} on "
           f"{section['cores']} cores", "",
           f"| clip | F0 Hz | {head} | WER search | match s (blend / search) |",
           "|---|---|" + "---|" * len(METHODS) + "---|---|"]
    for r in section["clips"]:
        cells = " | ".join(f"{_f(r[m]['held_out'])} ({_f(r[m]['objective'])})" for m in METHODS)
        cut = " (out of time)" if r["out_of_time"] else ""
        out.append(f"| {r['id']} | {_f(r.get('f0_hz'), '.0f')} | {cells} | {_f(r['search']['wer'], '.2f')} | "
                   f"{_f(r['blend']['match_s'], '.1f')} / {_f(r['search']['match_s'], '.1f')}{cut} |")
    s = section["summary"]
    cells = " | ".join(f"**{_f(s[m]['held_out'])}** ({_f(s[m]['objective'])})" for m in METHODS)
    out.append(f"| median | | {cells} | {_f(s['search']['wer'], '.2f')} | {_f(s['blend']['match_s'], '.1f')} / "
               f"{_f(s['search']['match_s'], '.1f')} |")
    out.append("")
    out.append("WER medians: " + ", ".join(f"{m} {_f(s[m]['wer'], '.2f')}" for m in METHODS))
    return out + [""]
