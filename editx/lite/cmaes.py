"""A small CMA-ES (covariance matrix adaptation evolution strategy) in numpy, for a bounded probe budget.

Maximises a black-box `objective(x) -> float` over R^n from a start point `x0` and step size
`sigma0`, following Hansen's tutorial formulation ("The CMA Evolution Strategy: A Tutorial", 2016):
weighted recombination of the best half, cumulative step-size adaptation, rank-one and rank-mu
covariance updates. It stops after `max_evals` objective calls or `budget_s` seconds, whichever
comes first, and always returns the best point it has evaluated (the start point is evaluated
first, so the answer is never worse than the seed). Sampling is seeded: the same objective,
start point and seed give the same sequence of candidates.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from editx.errors import ValidationError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchResult:
    """The best point found, its score, and how the search ended."""

    x: np.ndarray  # (n,) best point evaluated
    score: float  # objective at x
    start_score: float  # objective at the start point
    evals: int  # objective calls made
    generations: int  # complete generations (after the start point)
    elapsed_s: float
    out_of_time: bool  # True when budget_s ran out before max_evals were spent
    history: tuple[float, ...] = field(default=())  # best score after each generation


def default_population(n: int) -> int:
    """Hansen's default λ = 4 + ⌊3 ln n⌋."""
    return 4 + int(3 * math.log(max(n, 1)))


def maximize(objective: Callable[[np.ndarray], float], x0: np.ndarray, sigma0: float, *,
             max_evals: int, budget_s: float | None = None, population: int | None = None,
             seed: int = 0, clock: Callable[[], float] = time.perf_counter) -> SearchResult:
    """CMA-ES maximisation of `objective` from `x0` (see the module docstring)."""
    mean = np.asarray(x0, np.float64).reshape(-1).copy()
    n = mean.size
    if n < 1 or not np.isfinite(mean).all():
        raise ValidationError("CMA-ES needs a finite, non-empty start point")
    if not (sigma0 > 0 and math.isfinite(sigma0)):
        raise ValidationError(f"CMA-ES step size must be a positive number, got {sigma0}")
    if max_evals < 1:
        raise ValidationError(f"CMA-ES needs at least one evaluation, got max_evals={max_evals}")
    lam = population or default_population(n)
    if lam < 2:
        raise ValidationError(f"CMA-ES population must be at least 2, got {lam}")
    mu = lam // 2
    w = math.log(mu + 0.5) - np.log(np.arange(1, mu + 1))
    w /= w.sum()
    mueff = 1.0 / float(np.sum(w ** 2))
    # Strategy constants (tutorial defaults).
    cc = (4 + mueff / n) / (n + 4 + 2 * mueff / n)
    cs = (mueff + 2) / (n + mueff + 5)
    c1 = 2 / ((n + 1.3) ** 2 + mueff)
    cmu = min(1 - c1, 2 * (mueff - 2 + 1 / mueff) / ((n + 2) ** 2 + mueff))
    damps = 1 + 2 * max(0.0, math.sqrt((mueff - 1) / (n + 1)) - 1) + cs
    chi_n = math.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n * n))

    rng = np.random.default_rng(seed)
    sigma = float(sigma0)
    pc, ps = np.zeros(n), np.zeros(n)
    basis, scales = np.eye(n), np.ones(n)  # C = basis · diag(scales²) · basisᵀ
    cov = np.eye(n)

    start = clock()
    best_x, best = mean.copy(), float(objective(mean))
    start_score, evals, gen = best, 1, 0
    history: list[float] = []
    out_of_time = False
    if budget_s is not None and math.isinf(budget_s):
        budget_s = None
    while evals < max_evals:
        if budget_s is not None and clock() - start > budget_s:
            out_of_time = True
            break
        z = rng.standard_normal((lam, n))
        y = (z * scales) @ basis.T  # (λ, n) ~ N(0, C)
        xs = mean + sigma * y
        scores = np.full(lam, -np.inf)
        for i in range(lam):
            if evals >= max_evals:
                break
            if budget_s is not None and clock() - start > budget_s:
                out_of_time = True
                break
            scores[i] = float(objective(xs[i]))
            evals += 1
            if scores[i] > best:
                best, best_x = float(scores[i]), xs[i].copy()
        if out_of_time or not np.isfinite(scores).all():
            break  # an incomplete generation is not used for adaptation
        gen += 1
        history.append(best)
        order = np.argsort(-scores)[:mu]
        y_w = w @ y[order]  # (n,)
        mean = mean + sigma * y_w
        # Step-size path uses C^(-1/2) y_w.
        c_inv_sqrt_y = basis @ ((basis.T @ y_w) / scales)
        ps = (1 - cs) * ps + math.sqrt(cs * (2 - cs) * mueff) * c_inv_sqrt_y
        hsig = float(np.linalg.norm(ps) / math.sqrt(1 - (1 - cs) ** (2 * gen)) / chi_n < 1.4 + 2 / (n + 1))
        pc = (1 - cc) * pc + hsig * math.sqrt(cc * (2 - cc) * mueff) * y_w
        rank_mu = (y[order].T * w) @ y[order]
        cov = ((1 - c1 - cmu) * cov + c1 * (np.outer(pc, pc) + (1 - hsig) * cc * (2 - cc) * cov)
               + cmu * rank_mu)
        sigma *= math.exp((cs / damps) * (np.linalg.norm(ps) / chi_n - 1))
        cov = (cov + cov.T) / 2
        eig, basis = np.linalg.eigh(cov)
        scales = np.sqrt(np.maximum(eig, 1e-20))
        log.debug("cma-es generation %d: best %.4f, sigma %.4g", gen, best, sigma)
    return SearchResult(best_x, best, start_score, evals, gen, clock() - start, out_of_time, tuple(history))
