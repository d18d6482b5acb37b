"""Lite voice matching: pick the blend of bundled Kokoro voices that sounds most like a prompt clip.

A lite "prompt encoding" is a convex combination of the bundled voices' style tables. The search
maximises the GE2E cosine similarity between the prompt and a short probe sentence synthesised in
the candidate blend. It is cheap and deterministic: the probe embeddings of the pure voices are
computed once per backend; a surrogate (cosine to the blend of those embeddings, over a fixed grid
on the simplex) proposes a direction; a few real syntheses along the line from the best pure voice
to the surrogate's optimum, coarse then fine, decide.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from editx.errors import ValidationError

log = logging.getLogger(__name__)

# Bump when anything that changes an encoding changes (probe text, search, voices): cache keys use it.
FEATURE_VERSION = "lite-voice-2"
PROBE_TEXT = "She walks along the quiet river."  # ~2 s: one to two 1.6 s GE2E partials
GRID_STEPS = 10  # surrogate grid: weights in multiples of 1/10 (1001 points for 5 voices)
MAX_PROBES = 3  # real syntheses per prompt after the one-time pure-voice probes
COARSE_POINTS = (1.0, 0.5)  # fractions of the way from the best pure voice to the surrogate optimum


@dataclass(frozen=True)
class VoiceEncoding:
    """A lite voice: blend weights over named bundled voices, an optional offset of the timbre half
    (found by the search in editx.lite.timbre), and the resulting (510, 256) style table."""

    names: tuple[str, ...]
    weights: np.ndarray  # (K,) float32, ≥ 0, sums to 1
    table: np.ndarray  # (510, 256) float32 = Σ weights[k] · voices[names[k]] (+ offset on [:, :128])
    similarity: float = float("nan")  # GE2E cosine of the matched probe to the prompt (nan: not matched)
    embedding: np.ndarray | None = None  # (256,) the prompt's d-vector, when matched from audio
    offset: np.ndarray | None = None  # (128,) timbre offset added to every row (None: a plain blend)
    search_probes: int = 0  # syntheses the timbre search made for this voice
    out_of_time: bool = False  # the search hit its time budget: this is the best voice found so far

    def to_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str | int | float]]:
        """Named tensors + flat meta, the form the prompt cache stores."""
        tensors = {"weights": torch.from_numpy(np.asarray(self.weights, np.float32)),
                   "style_table": torch.from_numpy(np.ascontiguousarray(self.table, np.float32))}
        if self.embedding is not None:
            tensors["speaker_embedding"] = torch.from_numpy(np.asarray(self.embedding, np.float32))
        if self.offset is not None:
            tensors["timbre_offset"] = torch.from_numpy(np.asarray(self.offset, np.float32))
        meta = {"backend": "lite", "feature_version": FEATURE_VERSION, "voices": ",".join(self.names),
                "similarity": float(self.similarity), "search_probes": int(self.search_probes),
                "out_of_time": int(self.out_of_time)}
        return tensors, meta

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict) -> VoiceEncoding:
        if meta.get("backend") != "lite" or meta.get("feature_version") != FEATURE_VERSION:
            raise ValidationError(f"not a {FEATURE_VERSION} lite voice encoding: meta {meta}")
        names = tuple(str(meta["voices"]).split(","))
        weights = tensors["weights"].detach().cpu().numpy().astype(np.float32)
        table = tensors["style_table"].detach().cpu().numpy().astype(np.float32)
        if weights.shape != (len(names),) or table.ndim != 2:
            raise ValidationError(f"lite voice encoding has weights {weights.shape} for {len(names)} voices")
        emb, off = tensors.get("speaker_embedding"), tensors.get("timbre_offset")
        return cls(names, weights, table, float(meta.get("similarity", float("nan"))),
                   None if emb is None else emb.detach().cpu().numpy().astype(np.float32),
                   None if off is None else off.detach().cpu().numpy().astype(np.float32),
                   int(meta.get("search_probes", 0)), bool(int(meta.get("out_of_time", 0))))

    def describe(self) -> str:
        parts = [f"{w:.2f}·{n}" for n, w in zip(self.names, self.weights) if w > 0]
        if self.offset is not None:
            parts.append(f"timbre offset |{float(np.linalg.norm(self.offset)):.2f}|")
        return " + ".join(parts)


def blend(voices: dict[str, np.ndarray], weights: np.ndarray) -> VoiceEncoding:
    """Convex combination of the bundled voices (in their dict order) → VoiceEncoding (unmatched)."""
    names = tuple(voices)
    w = np.asarray(weights, np.float64).reshape(-1)
    if w.shape != (len(names),) or (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValidationError(f"blend weights must be {len(names)} non-negative numbers, got {weights}")
    w = w / w.sum()
    table = np.tensordot(w, np.stack([voices[n] for n in names]), axes=1).astype(np.float32)  # (510, 256)
    return VoiceEncoding(names, w.astype(np.float32), table)


def simplex_grid(k: int, steps: int = GRID_STEPS) -> np.ndarray:
    """Every weight vector on the k-simplex with coordinates in multiples of 1/steps: (N, k)."""
    rows = [c for c in itertools.product(range(steps + 1), repeat=k - 1) if sum(c) <= steps]
    grid = np.array([(*c, steps - sum(c)) for c in rows], np.float64)
    return grid / steps


def surrogate_optimum(prompt: np.ndarray, base: np.ndarray, steps: int = GRID_STEPS) -> np.ndarray:
    """Weights whose blend of the pure voices' probe embeddings (K, 256) is closest in cosine to prompt."""
    grid = simplex_grid(len(base), steps)  # (N, K)
    mixed = grid @ base  # (N, 256)
    cos = (mixed @ prompt) / np.maximum(np.linalg.norm(mixed, axis=1), 1e-12)
    return grid[int(np.argmax(cos))]


def match(prompt: np.ndarray, base: np.ndarray, probe: Callable[[np.ndarray], np.ndarray], *,
          max_probes: int = MAX_PROBES, budget_s: float | None = None) -> tuple[np.ndarray, float]:
    """Best convex weights and their measured cosine.

    prompt: (256,) unit d-vector; base: (K, 256) probe d-vectors of the pure voices; probe(weights)
    synthesises the probe sentence in that blend and returns its d-vector. At most `max_probes`
    calls; deterministic unless `budget_s` is set, which stops early on a slow machine (the best
    pure voice is always a valid answer).
    """
    k = len(base)
    sims = base @ prompt
    best_pure = int(np.argmax(sims))
    best_w, best_sim = np.eye(k)[best_pure], float(sims[best_pure])
    target = surrogate_optimum(prompt, base)
    if np.allclose(target, best_w):
        return best_w, best_sim
    start = time.perf_counter()
    results: dict[float, float] = {0.0: best_sim}  # t → measured cosine, t = 0 is the best pure voice

    def try_point(t: float) -> None:
        nonlocal best_w, best_sim
        out_of_time = budget_s is not None and time.perf_counter() - start > budget_s
        if len(results) - 1 >= max_probes or out_of_time or t in results:
            return
        w = (1 - t) * np.eye(k)[best_pure] + t * target
        results[t] = float(probe(w) @ prompt)
        if results[t] > best_sim:
            best_w, best_sim = w, results[t]

    for t in COARSE_POINTS:
        try_point(t)
    # Fine step: halve the interval on the side of the best coarse point.
    best_t = max(results, key=results.get)
    toward_far_end = best_t == 1.0 or (best_t == 0.5 and results.get(1.0, -1.0) >= results[0.0])
    try_point(0.75 if toward_far_end else 0.25)
    log.debug("voice match: pure %d %.3f, line %s", best_pure, float(sims[best_pure]), results)
    return best_w, best_sim
