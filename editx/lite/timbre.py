"""Lite voice matching past blending: a CMA-ES search over the timbre half of Kokoro's style vector.

Kokoro's 256-dim style row is [128 decoder (timbre) | 128 prosody]. The blend of bundled voices
(editx.lite.voice.match) only reaches the convex hull of five voices; this search moves the timbre
half off that hull. A candidate is the blend's table plus one offset `scale * z` added to the timbre
half of every row (the rows of one voice differ little in timbre: per-dimension spread along the
rows is ~1/5 of the spread between voices), where `scale` is the per-dimension spread of the
bundled voices' mean timbre, so the search's unit step is "about one voice apart" in every
direction. The objective is the GE2E cosine between the prompt and the probe sentence synthesised
with the candidate; the search starts at the blend (offset 0), so its answer is never worse than
the blend on that objective. It is bounded both by a probe count and by wall time; on a busy
machine the time bound ends it early, and the result says so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from editx.lite import cmaes

log = logging.getLogger(__name__)

TIMBRE_DIMS = 128
SIGMA0 = 0.5  # initial step, in units of the between-voice spread per dimension
POPULATION = 8  # candidates per generation: several generations fit a probe budget of ~50
MAX_OFFSET = 3.0  # |z| per dimension is clipped here: further out, Kokoro's decoder leaves speech
SEED = 0


@dataclass(frozen=True)
class TimbreSearch:
    """How a search went (logged, put on the timeline, and kept in the cached encoding's meta)."""

    offset: np.ndarray  # (128,) the offset added to the timbre half (zeros: the blend was best)
    similarity: float  # objective at the answer
    start_similarity: float  # objective at the blend
    probes: int  # syntheses made
    elapsed_s: float
    out_of_time: bool  # the time budget ended the search before the probe budget was spent


def timbre_scale(voices: dict[str, np.ndarray]) -> np.ndarray:
    """(128,) per-dimension spread (std) of the bundled voices' mean timbre vectors; floor keeps it > 0."""
    means = np.stack([np.asarray(t, np.float64)[:, :TIMBRE_DIMS].mean(axis=0) for t in voices.values()])
    spread = means.std(axis=0)
    return np.maximum(spread, 0.1 * float(spread.mean()) + 1e-6).astype(np.float32)


def with_offset(table: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """A copy of the (510, 256) style table with `offset` (128,) added to the timbre half of every row."""
    out = np.array(table, np.float32, copy=True)
    out[:, :TIMBRE_DIMS] += np.asarray(offset, np.float32)
    return out


def search(seed_table: np.ndarray, scale: np.ndarray, score: Callable[[np.ndarray], float], *,
           max_probes: int, budget_s: float | None, seed: int = SEED) -> TimbreSearch:
    """Maximise `score(table)` over timbre offsets of `seed_table`; at most `max_probes` calls to score
    (the first is the seed itself) and about `budget_s` seconds."""
    scale = np.asarray(scale, np.float64)

    def objective(z: np.ndarray) -> float:
        return score(with_offset(seed_table, np.clip(z, -MAX_OFFSET, MAX_OFFSET) * scale))

    result = cmaes.maximize(objective, np.zeros(TIMBRE_DIMS), SIGMA0, max_evals=max_probes, budget_s=budget_s,
                            population=POPULATION, seed=seed)
    offset = (np.clip(result.x, -MAX_OFFSET, MAX_OFFSET) * scale).astype(np.float32)
    found = TimbreSearch(offset, result.score, result.start_score, result.evals, result.elapsed_s,
                         result.out_of_time)
    log.debug("timbre search: %.4f -> %.4f in %d probes, %.1f s, history %s", found.start_similarity,
              found.similarity, found.probes, found.elapsed_s, [round(h, 4) for h in result.history])
    return found
